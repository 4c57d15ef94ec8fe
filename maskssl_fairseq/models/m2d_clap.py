"""M2D-CLAP (Niizumi et al., Interspeech 2024; IEEE Access 2025 stage 1): M2D plus a CLAP loss against
fixed, offline caption embeddings.

The audio embedding comes from the pass M2D already runs: the online encoder's output on the visible
patches (CLS dropped) goes through the audio projector (2024: mean, then 768-768-768 MLP with ReLU;
2025: a semantic token and one ViT block). The caption embedding (a frozen sentence encoder's, computed by
``manifests/caption_embeddings.py``) goes through ``text_proj``, the identity when its width is the
encoder's. Loss = M2D + ``clap_weight`` x symmetric InfoNCE over the (all-gathered) batch, with a learnable
logit scale clamped to [0, log 100] after every update.
"""

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq.dataclass import ChoiceEnum
from fairseq.models import register_model

from ..modules.clap import LOGIT_SCALE_INIT, LOGIT_SCALE_MAX, MeanMLPProjector, SemanticTokenProjector, clip_loss
from ..modules.spectrogram_vit import init_weights
from .m2d import M2DConfig, M2DModel

PROJECTOR_CHOICES = ChoiceEnum(["mlp", "semantic"])


@dataclass
class M2DClapConfig(M2DConfig):
    clap_weight: float = field(default=0.01, metadata={"help": "CLAP loss weight against M2D's 1.0 (--loss_off)"})
    audio_projector: PROJECTOR_CHOICES = field(
        default="mlp", metadata={"help": "mlp: mean of the tokens, Linear-ReLU-Linear (2024); semantic: a learnable "
                                         "token and audio_projector_depth 1-head ViT blocks (2025, sem_mode)"}
    )
    audio_projector_depth: int = field(default=1, metadata={"help": "semantic projector blocks (sem_mode 1 or 2)"})
    caption_embed_dim: int = field(
        default=768, metadata={"help": "width of the caption embeddings (GTE-base 768: no text projection; "
                                       "otherwise a Linear to the encoder width, e.g. NV-Embed-v2 4096)"}
    )
    logit_scale_init: float = field(default=LOGIT_SCALE_INIT, metadata={"help": "log(1 / 0.07) (2024)"})


@register_model("m2d_clap", dataclass=M2DClapConfig)
class M2DClapModel(M2DModel):
    def __init__(self, cfg: M2DClapConfig):
        super().__init__(cfg)
        dim = cfg.encoder_embed_dim
        if cfg.audio_projector == "semantic":
            self.audio_proj = SemanticTokenProjector(dim, cfg.audio_projector_depth)
        else:
            self.audio_proj = MeanMLPProjector(dim)
        self.text_proj = nn.Identity() if cfg.caption_embed_dim == dim else nn.Linear(cfg.caption_embed_dim, dim)
        self.text_proj.apply(init_weights)
        self.logit_scale = nn.Parameter(torch.tensor(float(cfg.logit_scale_init)))

    @torch.no_grad()
    def clamp_logit_scale(self) -> None:
        self.logit_scale.clamp_(0.0, LOGIT_SCALE_MAX)

    def set_num_updates(self, num_updates: int) -> None:
        # fairseq's task.train_step calls this before every forward: each step sees the scale as clamped
        # after the previous update (the official code clamps right after optimizer.step)
        self.clamp_logit_scale()
        super().set_num_updates(num_updates)

    def caption_features(self, caption_embedding: torch.Tensor) -> torch.Tensor:
        """Offline caption embeddings ``[B, caption_embed_dim]`` -> ``[B, D]``."""
        if caption_embedding.shape[-1] != self.cfg.caption_embed_dim:
            raise ValueError(f"caption embeddings are {caption_embedding.shape[-1]}-d, model.caption_embed_dim is "
                             f"{self.cfg.caption_embed_dim}")
        return self.text_proj(caption_embedding.to(self.logit_scale.dtype))

    def forward(self, source: torch.Tensor, caption_embedding: Optional[torch.Tensor] = None, **unused) -> dict:
        if caption_embedding is None:
            raise ValueError("model m2d_clap needs caption embeddings in its batches: set task.captions=true")
        output, encoded = self.masked_forward(source)
        audio = self.audio_proj(encoded[:, 1:])
        clap = clip_loss(audio, self.caption_features(caption_embedding), self.logit_scale)
        # fairseq divides the summed losses by sample_size (M2D's masked-token count, the same for every clip):
        # scaling the batch-mean CLAP loss by it keeps the total at L_M2D + clap_weight * L_CLAP, on several
        # processes too, where it weights each rank's copy of the global-batch loss by its share of the clips,
        # as clip_loss's gradient expects
        output["losses"]["clap"] = self.cfg.clap_weight * clap * output["sample_size"]
        output["logit_scale"] = self.logit_scale.detach()  # the log of the scale, as clamped
        return output

    @torch.no_grad()
    def clap_embedding(self, source: torch.Tensor) -> torch.Tensor:
        """Audio embeddings ``[B, D]`` of whole clips ``[B, S]`` for zero-shot use: each clip cut into training
        crops, the last one zero-padded as the task pads a short clip, every patch token of every crop, unmasked,
        through the audio projector (not normalised). Seen without the silence it trained with, a 1-s keyword
        clip scored 12.4% instead of 28.6% zero-shot on the CPU demo."""
        crop = (self.cfg.input_frames - 1) * self.cfg.hop_length  # the task's crop_samples
        batch = source.shape[0]
        crops = F.pad(source, (0, -source.shape[-1] % crop)).reshape(-1, crop)  # [B * crops, crop]
        tokens = self.encoder(self.encoder.embed(self.training_spectrogram(crops)))[:, 1:]
        return self.audio_proj(tokens.reshape(batch, -1, tokens.shape[-1]))
