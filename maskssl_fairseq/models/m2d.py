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
from ..modules import released_checkpoints as released
from ..modules.ema_teacher import TeacherModel, fp32_ema, fp32_params_to
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
    # state that counts training progress, not weights: model.init_from leaves it as built
    training_state_keys = ("target_updates",)

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
        # the EMA runs on an fp32 master copy of the target (at momentum 0.99995 a bf16 or fp16 target would not
        # move); named as the online encoder's blocks and norm, which it follows
        self.target_ema = fp32_ema(TeacherModel({"blocks": self.target_blocks, "norm": self.target_norm}),
                                   cfg.ema_decay)
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
        """target <- decay * target + (1 - decay) * online, for the blocks and the final norm, in fp32."""
        fp32_params_to(self.target_ema, self.target_norm.weight.device)
        self.target_ema.set_decay(decay)
        self.target_ema.step(self.encoder)

    def state_dict(self, destination=None, prefix="", keep_vars=False):
        state = super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        for key, value in self.target_ema.fp32_params.items():  # the target in fp32, under its own names
            state[f"{prefix}target_{key}"] = value
        return state

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        saved = {key: state_dict[f"{prefix}target_{key}"] for key in self.target_ema.fp32_params
                 if f"{prefix}target_{key}" in state_dict}
        self.target_ema.build_fp32_params(saved)
        return super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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


# the official layout (nttcslab/m2d ``M2DViT``): MAE's encoder and decoder keys plus the target encoder
TARGET_PREFIXES = ("target_blocks.", "target_norm.")
PREDICTOR_FIELDS = ("predictor_embed_dim", "predictor_layers", "predictor_attention_heads")  # from its weights


def from_official(state: dict, path: Optional[str] = None, name: Optional[str] = None,
                  config: Optional[dict] = None, **overrides) -> dict:
    """An M2D release (``torch.load`` of ``checkpoint-N.pth``, full or encoder-only) -> our ``m2d`` checkpoint.

    The input size comes from the folder name (``name``, by default the folder of ``path``; M2D's convention
    ``m2d_vit_base-80x608p16x16-...``) or from ``overrides`` (any ``M2DConfig`` field, e.g. ``input_frames=608,
    patch_size=16, encoder_attention_heads=12``); widths and depths from the weights; heads at 64 channels
    each (predictor: 32). What an encoder-only file lacks (predictor, target encoder) starts freshly
    initialised."""
    source = released.source_name(path)
    state = released.m2d_state(state)
    arch = released.m2d_architecture(state, name or released.folder_name(path), overrides)
    arch = dict(released.decoder_fields(state, PREDICTOR_FIELDS, channels_per_head=32), **arch)
    grid = (arch["n_mels"] // arch["patch_size"], arch["input_frames"] // arch["patch_size"])
    converted = released.vit_from_official(state, grid)
    converted.update(released.decoder_from_official(state, "predictor."))
    converted.update({key: value for key, value in state.items() if key.startswith(TARGET_PREFIXES)})
    released.unused_keys(state, released.VIT_PREFIXES + released.DECODER_PREFIXES + TARGET_PREFIXES, source)
    return released.m2d_family_checkpoint("m2d", arch, converted, source)


def to_official(checkpoint: dict, **unused) -> dict:
    """Our ``m2d`` checkpoint -> ``{'model': state}`` in M2D's layout (``norm_stats`` inside). Save it as
    ``<folder>/checkpoint-N.pth`` with the folder named after the input size (:func:`official_folder_name`),
    which M2D's runtimes read."""
    ours = released.with_stored_positions(checkpoint)
    state = released.vit_to_official(ours)
    state.update(released.decoder_to_official(ours, "predictor."))
    state.update({key: value for key, value in ours.items() if key.startswith(TARGET_PREFIXES)})
    return {"model": state}


def official_folder_name(checkpoint: dict, model: str = "m2d_vit_base", suffix: str = "maskssl") -> str:
    """The folder name M2D's runtimes parse the input size from, e.g. ``m2d_vit_base-80x608p16x16-maskssl``."""
    return released.official_folder_name(checkpoint["cfg"]["model"], model, suffix)
