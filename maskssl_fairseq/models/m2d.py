"""M2D, Masked Modeling Duo (Niizumi et al., TASLP 2024), with random, inverse-block or DWM masking.

The online encoder sees the visible patches; a predictor fills in the masked positions; an EMA target
encoder encodes the *masked* patches, and the loss is ``2 - 2 cos`` between the predictions and the
per-token standardised targets. As in the official code, the target network has its own transformer
blocks and final norm only: patch embedding, positions and CLS token are the online encoder's. Its
blocks start from their own random initialisation and follow the online blocks by EMA with a momentum
rising linearly from ``ema_decay`` to ``ema_end_decay`` over training.
"""

from dataclasses import dataclass, field
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from fairseq.models import register_model
from omegaconf import II

from ..distributed import check_identical_across_ranks, rank_check_due
from ..modules.masked_spectrogram import MaskedSpectrogramConfig, MaskedSpectrogramModel
from ..modules.spectrogram_vit import LayerNorm, MaskedTokenPredictor, init_weights, split_by_mask, transformer


@dataclass
class M2DConfig(MaskedSpectrogramConfig):
    predictor_embed_dim: int = field(default=512, metadata={"help": "M2D predictor width"})
    predictor_layers: int = field(default=8, metadata={"help": "M2D --decoder_depth"})
    predictor_attention_heads: int = 16
    ema_decay: float = field(default=0.99995, metadata={"help": "target momentum at the first update"})
    ema_end_decay: float = field(default=0.99999, metadata={"help": "target momentum at the last update"})
    ema_anneal_end_step: int = II("optimization.max_update")
    target_norm_eps: float = field(default=1e-6, metadata={"help": "per-token target standardisation epsilon"})


@register_model("m2d", dataclass=M2DConfig)
class M2DModel(MaskedSpectrogramModel):
    def __init__(self, cfg: M2DConfig):
        super().__init__(cfg)
        if cfg.ema_anneal_end_step <= 0:
            raise ValueError("model.ema_anneal_end_step (default: optimization.max_update) must be > 0 for the EMA "
                             "momentum schedule")
        dim = cfg.encoder_embed_dim
        self.predictor = MaskedTokenPredictor(dim, cfg.predictor_embed_dim, cfg.predictor_layers,
                                              cfg.predictor_attention_heads, cfg.mlp_ratio, dim, self.encoder.grid)
        self.target_blocks = transformer(dim, cfg.encoder_layers, cfg.encoder_attention_heads, cfg.mlp_ratio)
        self.target_norm = LayerNorm(dim)
        for module in (self.target_blocks, self.target_norm):
            module.apply(init_weights)
            module.requires_grad_(False)  # fairseq builds its optimizer from parameters that require grad
        # the update the target encoder was last stepped at, saved with it: a resumed run takes exactly the
        # steps an uninterrupted one takes
        self.register_buffer("target_updates", torch.zeros((), dtype=torch.long))
        self._target_updates_seen: Optional[int] = 0  # host copy of the buffer; None: read it (after a load)
        self.register_load_state_dict_post_hook(M2DModel._forget_target_updates)

    @staticmethod
    def _forget_target_updates(module, incompatible_keys) -> None:
        module._target_updates_seen = None

    def ema_decay_at(self, num_updates: int) -> float:
        progress = min(num_updates / max(self.cfg.ema_anneal_end_step - 1, 1), 1.0)
        return self.cfg.ema_decay + (self.cfg.ema_end_decay - self.cfg.ema_decay) * progress

    @torch.no_grad()
    def ema_step(self, decay: float) -> None:
        """target <- decay * target + (1 - decay) * online, for the blocks and the final norm."""
        target = list(self.target_blocks.parameters()) + list(self.target_norm.parameters())
        online = list(self.encoder.blocks.parameters()) + list(self.encoder.norm.parameters())
        torch._foreach_mul_(target, decay)
        torch._foreach_add_(target, [p.detach().to(t.dtype) for p, t in zip(online, target)], alpha=1.0 - decay)

    def set_num_updates(self, num_updates: int) -> None:
        # fairseq calls this before each update with the number of updates done: update n's optimizer step is
        # followed by one EMA step at momentum(n - 1), once, also when n is the update a run resumed at
        if self.training and num_updates > 0 and self._target_updates_seen is None:
            self._target_updates_seen = int(self.target_updates)
        if self.training and num_updates > 0 and num_updates != self._target_updates_seen:
            self.ema_step(self.ema_decay_at(num_updates - 1))
            self.target_updates.fill_(num_updates)
            self._target_updates_seen = num_updates
            if rank_check_due(num_updates):
                targets = list(self.target_blocks.parameters()) + list(self.target_norm.parameters())
                check_identical_across_ranks(targets, "the EMA target encoder", num_updates)
        super().set_num_updates(num_updates)

    def forward(self, source: torch.Tensor, **unused) -> dict:
        return self.masked_forward(source)[0]

    def masked_forward(self, source: torch.Tensor) -> Tuple[dict, torch.Tensor]:
        """The M2D objective of waveform crops ``[B, S]`` and the online encoder's output on the visible
        patches ``[B, 1 + Nv, D]`` (CLS first), for objectives that build on the same pass (M2D-CLAP)."""
        spectrogram = self.training_spectrogram(source)
        tokens = self.encoder.embed(spectrogram)
        mask = self.draw_mask(spectrogram)
        visible, masked, order = split_by_mask(tokens, mask, self.num_masked)
        encoded = self.encoder(visible)
        prediction = self.predictor(encoded, order)  # [B, Nm, D]
        with torch.no_grad():
            target = self.target_norm(self.target_blocks(self.encoder.with_cls(masked.detach())))[:, 1:]
            target = F.layer_norm(target.float(), target.shape[-1:], eps=self.cfg.target_norm_eps)
        per_token = 2.0 - 2.0 * F.cosine_similarity(prediction.float(), target, dim=-1)
        return {
            "losses": {"m2d": per_token.sum()},
            "sample_size": per_token.numel(),
            "hint_ratio": self.logged_hint_ratio,
            "ema_decay": self.ema_decay_at(self.num_updates),
        }, encoded
