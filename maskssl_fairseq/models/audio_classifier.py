"""Audio classification on a pretrained spectrogram encoder (EAT, M2D, MSM-MAE): ``spectrogram_classifier``.

``model.pretrained_path`` names any of our spectrogram pretraining checkpoints; the pretraining model is
rebuilt from the configuration stored there, its weights loaded, and only its front end (with its stored
normalisation statistics) and encoder are kept: teacher, target network, predictor and decoder are
dropped. The pretraining configuration and the label names are saved with this model's own
configuration, so a fine-tuned checkpoint loads without the pretraining checkpoint (``run/classify.py``).

A linear head reads the CLS token (EAT) or the mean of the patch tokens (M2D / MSM-MAE): ``pooling=auto``
picks by the pretraining model. While training, the recipe pieces of the official fine-tuning apply, each
off at its default: mixup of waveform pairs (``mixup`` = share of rows mixed, weights ~ Beta(10, 10) as in
AST), SpecAugment-style frequency and time masks (torchaudio's, set to 0, the dataset mean after
standardisation), a random circular roll in time, and input patch masking (``patch_mask_ratio`` of the
patches removed before the encoder, exactly that many in every row). Layer-wise lr decay tags every
parameter with fairseq's ``optim_overrides`` ``lr_scale`` (``layer_decay ** (depth + 1 - layer)``, the patch
embedding being layer 0 and the head ``depth + 1``), which the ``composite`` optimizer with
``dynamic_groups: true`` turns into one parameter group per scale.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchaudio
from fairseq import checkpoint_utils
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import MODEL_DATACLASS_REGISTRY, MODEL_REGISTRY, BaseFairseqModel, register_model
from omegaconf import OmegaConf, open_dict

from ..checkpoint_kinds import require_kind
from ..masking import random_mask
from ..modules.masked_spectrogram import MaskedSpectrogramModel

POOLING_CHOICES = ChoiceEnum(["auto", "cls", "mean"])


@dataclass
class SpectrogramClassifierConfig(FairseqDataclass):
    pretrained_path: str = field(default="???", metadata={"help": "an EAT, M2D or MSM-MAE pretraining checkpoint"})
    pretrained_args: Optional[Any] = field(
        default=None, metadata={"help": "set when built: the pretraining model's configuration"}
    )
    labels: Optional[List[str]] = field(default=None, metadata={"help": "set when built: the task's label names"})
    random_init: bool = field(default=False, metadata={"help": "keep the architecture, not the weights (baselines)"})
    pooling: POOLING_CHOICES = field(default="auto", metadata={"help": "cls, mean (patch tokens) or auto: cls for EAT"})
    fc_norm: bool = field(default=False, metadata={"help": "a LayerNorm on the pooled feature before the head (EAT's "
                                                          "fine-tuning: use_fc_norm, on in its released classifiers)"})
    mixup: float = field(default=0.0, metadata={"help": "share of training rows mixed with another row (AS-20K: 0.8)"})
    mixup_alpha: float = field(default=10.0, metadata={"help": "mixing weights ~ Beta(alpha, alpha) (AST: 10)"})
    freq_mask: int = field(default=0, metadata={"help": "SpecAugment frequency mask, max bins (AS-20K: 25)"})
    time_mask: int = field(default=0, metadata={"help": "SpecAugment time mask, max frames (AS-20K: 200)"})
    random_roll: bool = field(default=False, metadata={"help": "roll each training spectrogram by a random shift in time"})
    patch_mask_ratio: float = field(default=0.0, metadata={"help": "share of input patches removed in training (EAT: 0.2)"})
    layer_decay: float = field(default=1.0, metadata={"help": "layer-wise lr decay (1: none)"})


def load_pretrained(path: str, random_init: bool = False, field: str = "model.pretrained_path"):
    """(pretraining model, its configuration as a dict) from a spectrogram pretraining checkpoint; errors name
    ``field``, where the path came from."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{field}: no checkpoint at {path}")
    state = checkpoint_utils.load_checkpoint_to_cpu(path)
    require_kind(field, path, state, lambda model: issubclass(model, MaskedSpectrogramModel),
                 "a spectrogram pretraining checkpoint (eat, m2d, m2d_clap, msm_mae)")
    args = OmegaConf.to_container(OmegaConf.create(state["cfg"]["model"]), resolve=True)
    model = build_pretraining_model(args, f"{field} ({path})")
    if random_init:  # the front-end statistics are data, not learned weights: keep them
        model.frontend.norm_stats.copy_(state["model"]["frontend.norm_stats"])
    else:
        model.load_state_dict(state["model"], strict=True)
    return model, args


def build_pretraining_model(args: dict, where: str) -> MaskedSpectrogramModel:
    name = args.get("_name")
    model_class = MODEL_REGISTRY.get(name)
    if model_class is None or not issubclass(model_class, MaskedSpectrogramModel):
        raise ValueError(f"{where}: a {name!r} model, not one of the spectrogram models (eat, m2d, msm_mae)")
    cfg = OmegaConf.merge(OmegaConf.structured(MODEL_DATACLASS_REGISTRY[name]), args)
    model = model_class(cfg)
    # placeholders until the checkpoint's statistics are loaded over them
    if torch.isnan(model.frontend.norm_stats).any():
        model.frontend.set_norm_stats(0.0, 1.0)
    return model


@register_model("spectrogram_classifier", dataclass=SpectrogramClassifierConfig)
class SpectrogramClassifierModel(BaseFairseqModel):
    def __init__(self, cfg: SpectrogramClassifierConfig, pretrained: MaskedSpectrogramModel, num_classes: int):
        super().__init__()
        self.cfg = cfg
        if not 0.0 <= cfg.patch_mask_ratio < 1.0:
            raise ValueError(f"model.patch_mask_ratio must be in [0, 1), got {cfg.patch_mask_ratio}")
        if not 0.0 <= cfg.mixup <= 1.0:
            raise ValueError(f"model.mixup is the share of rows mixed, in [0, 1], got {cfg.mixup}")
        self.frontend, self.encoder = pretrained.frontend, pretrained.encoder
        self.input_frames = pretrained.cfg.input_frames
        name = cfg.pretrained_args["_name"]
        self.pooling = ("cls" if name == "eat" else "mean") if cfg.pooling == "auto" else cfg.pooling
        self.fc_norm = nn.LayerNorm(pretrained.cfg.encoder_embed_dim, eps=1e-6) if cfg.fc_norm else None
        self.head = nn.Linear(pretrained.cfg.encoder_embed_dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.freq_masking = torchaudio.transforms.FrequencyMasking(cfg.freq_mask, iid_masks=True) if cfg.freq_mask else None
        self.time_masking = torchaudio.transforms.TimeMasking(cfg.time_mask, iid_masks=True) if cfg.time_mask else None

    @classmethod
    def build_model(cls, cfg: SpectrogramClassifierConfig, task=None):
        if cfg.pretrained_args is None:
            pretrained, args = load_pretrained(cfg.pretrained_path, cfg.random_init)
            with open_dict(cfg):
                cfg.pretrained_args = args
        else:  # a fine-tuned checkpoint: its own weights follow
            pretrained = build_pretraining_model(OmegaConf.to_container(OmegaConf.create(cfg.pretrained_args)),
                                                 "model.pretrained_args")
        if task is not None:
            with open_dict(cfg):
                cfg.labels = list(task.labels)
        if not cfg.labels:
            raise ValueError("model.labels: the label names are unknown (build the model through the spectrogram_classification task)")
        model = cls(cfg, pretrained, len(cfg.labels))
        model.tag_parameter_groups()
        return model

    def layer_of(self, name: str) -> int:
        depth = len(self.encoder.blocks)
        if name.startswith("encoder.blocks."):
            return int(name.split(".")[2]) + 1
        if name.startswith(("encoder.patch_embed", "encoder.cls_token", "frontend")):
            return 0
        return depth + 1  # the final norm and the head

    def tag_parameter_groups(self) -> None:
        """``no_decay`` for biases and 1-D parameters; with ``layer_decay < 1``, an lr scale per layer."""
        depth = len(self.encoder.blocks)
        for name, parameter in self.named_parameters():
            if parameter.ndim <= 1 or name.endswith(".bias"):
                parameter.param_group = "no_decay"
            if self.cfg.layer_decay < 1.0:
                # one dict per parameter: fairseq's composite optimizer writes the group name into it
                scale = self.cfg.layer_decay ** (depth + 1 - self.layer_of(name))
                parameter.optim_overrides = {"optimizer": {"lr_scale": scale}}

    def mix(self, source: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor):
        """Mixes a ``mixup`` share of the rows with a random partner row: waveforms, lengths (the longer) and targets."""
        batch = source.shape[0]
        weight = torch.distributions.Beta(self.cfg.mixup_alpha, self.cfg.mixup_alpha).sample((batch,)).to(source.device)
        mixed = torch.rand(batch, device=source.device) < self.cfg.mixup
        weight = torch.where(mixed, weight, torch.ones_like(weight))
        partner = torch.randperm(batch, device=source.device)
        source = weight[:, None] * source + (1 - weight[:, None]) * source[partner]
        lengths = torch.where(mixed, torch.maximum(lengths, lengths[partner]), lengths)
        target = weight[:, None] * target + (1 - weight[:, None]) * target[partner]
        return source, lengths, target

    def spectrogram(self, source: torch.Tensor, lengths: Optional[torch.Tensor]) -> torch.Tensor:
        """``[B, S]`` -> ``[B, 1, F, input_frames]``: the pretrained front end, cropped or zero-padded in time."""
        spectrogram = self.frontend(source, lengths)[..., : self.input_frames]
        return F.pad(spectrogram, (0, self.input_frames - spectrogram.shape[-1])).unsqueeze(1)

    def augment(self, spectrogram: torch.Tensor) -> torch.Tensor:
        if self.freq_masking is not None:
            spectrogram = self.freq_masking(spectrogram)
        if self.time_masking is not None:
            spectrogram = self.time_masking(spectrogram)
        if self.cfg.random_roll:
            frames = spectrogram.shape[-1]
            shift = torch.randint(0, frames, (spectrogram.shape[0], 1, 1, 1), device=spectrogram.device)
            index = (torch.arange(frames, device=spectrogram.device) - shift) % frames
            spectrogram = spectrogram.gather(-1, index.expand_as(spectrogram))
        return spectrogram

    def forward(self, source: torch.Tensor, lengths: Optional[torch.Tensor] = None,
                target: Optional[torch.Tensor] = None, **unused) -> dict:
        """``source [B, S]`` -> ``{"logits": [B, classes], "target": [B, classes]}`` (mixed while training)."""
        if lengths is None:
            lengths = torch.full((source.shape[0],), source.shape[1], device=source.device)
        if self.training and self.cfg.mixup > 0 and target is not None:
            source, lengths, target = self.mix(source, lengths, target)
        spectrogram = self.spectrogram(source, lengths)
        if self.training:
            spectrogram = self.augment(spectrogram)
        tokens = self.encoder.embed(spectrogram)
        if self.training and self.cfg.patch_mask_ratio > 0:
            batch, patches, dim = tokens.shape
            keep = ~random_mask(batch, patches, self.cfg.patch_mask_ratio, device=tokens.device)
            tokens = tokens[keep].view(batch, -1, dim)
        encoded = self.encoder(tokens)
        pooled = encoded[:, 0] if self.pooling == "cls" else encoded[:, 1:].mean(dim=1)
        if self.fc_norm is not None:
            pooled = self.fc_norm(pooled)
        return {"logits": self.head(pooled), "target": target}
