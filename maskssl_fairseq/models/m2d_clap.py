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

from ..modules import released_checkpoints as released
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


# the official projector names (M2D_CLAP_ViT's nn.Sequential; the 2025 AudioToSemantic) -> ours
_AUDIO_PROJ_KEYS = {"audio_proj.0.": "audio_proj.mlp.0.", "audio_proj.2.": "audio_proj.mlp.2.",
                    "audio_proj.sem_token": "audio_proj.token", "audio_proj.sem_blocks.": "audio_proj.blocks.",
                    "audio_proj.norm.": "audio_proj.norm."}
_CLAP_PREFIXES = ("audio_proj.", "text_proj.", "logit_scale")


def _rename(state: dict, names: dict) -> dict:
    renamed = {}
    for key, value in state.items():
        for old, new in names.items():
            if key.startswith(old):
                renamed[new + key[len(old):]] = value
    return renamed


def from_official(state: dict, path: Optional[str] = None, name: Optional[str] = None,
                  config: Optional[dict] = None, **overrides) -> dict:
    """An M2D-CLAP release (2024 ``checkpoint-N.pth``; 2025 saved ``RuntimeM2D`` with ``backbone.*``) -> our
    ``m2d_clap`` checkpoint: the M2D part as ``m2d.from_official`` converts it, the audio projector (2024 MLP
    ``audio_proj.{0,2}`` or 2025 semantic token ``audio_proj.sem_*``), ``text_proj`` and ``logit_scale``. A
    trained text encoder (2025 ``text_encoder.*``) has no place here: captions are embedded offline."""
    from .m2d import PREDICTOR_FIELDS, TARGET_PREFIXES

    source = released.source_name(path)
    state = released.m2d_state(state)
    if "text_proj.2.weight" in state:
        raise ValueError(f"{source}: an MLP text projection (text_proj.0/2) is not supported, only a Linear or none")
    arch = released.m2d_architecture(state, name or released.folder_name(path), overrides)
    arch = dict(released.decoder_fields(state, PREDICTOR_FIELDS, channels_per_head=32), **arch)
    if "audio_proj.sem_token" in state:
        depth = 1 + max(int(key.split(".")[2]) for key in state if key.startswith("audio_proj.sem_blocks."))
        arch.setdefault("audio_projector", "semantic")
        arch.setdefault("audio_projector_depth", depth)
    elif "audio_proj.0.weight" not in state:
        raise ValueError(f"{source}: no audio projector (audio_proj.*): not an M2D-CLAP checkpoint; use --from m2d")
    if "text_proj.weight" in state:
        arch.setdefault("caption_embed_dim", state["text_proj.weight"].shape[1])
    else:
        arch.setdefault("caption_embed_dim", arch["encoder_embed_dim"])
    grid = (arch["n_mels"] // arch["patch_size"], arch["input_frames"] // arch["patch_size"])
    converted = released.vit_from_official(state, grid)
    converted.update(released.decoder_from_official(state, "predictor."))
    converted.update({key: value for key, value in state.items() if key.startswith(TARGET_PREFIXES + ("text_proj.",))})
    converted.update(_rename(state, _AUDIO_PROJ_KEYS))
    if "logit_scale" in state:
        converted["logit_scale"] = state["logit_scale"].reshape(())
    released.unused_keys(state, released.VIT_PREFIXES + released.DECODER_PREFIXES + TARGET_PREFIXES + _CLAP_PREFIXES,
                         source)
    return released.m2d_family_checkpoint("m2d_clap", arch, converted, source)


def to_official(checkpoint: dict, **unused) -> dict:
    """Our ``m2d_clap`` checkpoint -> ``{'model': state}`` in M2D-CLAP's layout (``norm_stats`` inside);
    M2D's runtimes read the input size from the folder name (``m2d.official_folder_name``)."""
    from .m2d import to_official as m2d_to_official

    ours = checkpoint["model"]
    state = m2d_to_official(checkpoint)["model"]
    state.update(_rename(ours, {new: old for old, new in _AUDIO_PROJ_KEYS.items()}))
    state.update({key: value for key, value in ours.items() if key.startswith(("text_proj.", "logit_scale"))})
    return {"model": state}
