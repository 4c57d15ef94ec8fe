"""EAT, the Efficient Audio Transformer (Chen et al., IJCAI 2024): data2vec 2.0-style self-distillation on
Kaldi fbank patches, with the Utterance-Frame Objective.

Per step, each clip's 128 x 1024 fbank (an 8 x 64 grid of 16 x 16 patches, 512 tokens) is encoded *once*,
unmasked, by a full EMA teacher (patch embedding, CLS and blocks); the target of every patch is the
average of all blocks' FFN outputs, each instance-normalised over the patches, then layer-normalised. The
student embeds the clip once and repeats it ``clone_batch`` times (16), each copy with its own inverse
block mask (80 % masked); its post-LN encoder sees only the visible patches plus CLS. A 2-D CNN decoder
fills the masked slots with N(0, 0.01) noise and predicts every patch.

Loss (all terms scaled by ``1 / sqrt(D)``), weighted as the official code weights them under fairseq's
``model`` criterion (it sums each loss and the trainer divides by ``sample_size``, the number of masked
patches):

- ``frame``: squared error summed over channels, summed over the masked patches of all clones; after the
  division, the mean over masked patches.
- ``utterance``: the student's final CLS against the patch mean of the teacher's target, squared error
  summed over channels and over the ``B * clone_batch`` rows, multiplied by ``utterance_loss_weight *
  sample_size``; after the division, ``utterance_loss_weight`` times the *sum* (not the mean) over rows.

fairseq logs ``loss_frame`` and ``loss_utterance`` after the same division, so they read as above.
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from fairseq.models import register_model

from ..modules import released_checkpoints as released
from ..modules.data2vec2_audio import gather_frames, instance_norm_average
from ..modules.ema_teacher import EMATeacherMixin
from ..modules.grid_decoder import GridConvDecoder
from ..modules.masked_spectrogram import FRONTEND_CHOICES, MASKING_CHOICES, MaskedSpectrogramConfig, MaskedSpectrogramModel
from ..modules.spectrogram_vit import split_by_mask


@dataclass
class EATConfig(MaskedSpectrogramConfig):
    # front end (EAT's data pipeline: kaldi.fbank, 128 bins, low_freq 20 Hz, Nyquist top, (x - mean) / (2 std))
    frontend: FRONTEND_CHOICES = "kaldi_fbank"
    n_mels: int = 128
    f_min: float = 20.0
    f_max: float = 0.0
    post_ln: bool = True
    masking: MASKING_CHOICES = "ibm"
    mask_ratio: float = field(default=0.8, metadata={"help": "EAT: 0.8 (large: 0.75)"})
    clone_batch: int = field(default=16, metadata={"help": "masked copies of every clip per teacher pass (EAT: 16)"})
    # decoder (EAT's Decoder2d)
    decoder_dim: int = 768
    decoder_layers: int = 6
    decoder_kernel: int = 3
    decoder_groups: int = 16
    mask_noise_std: float = field(default=0.01, metadata={"help": "std of the noise tokens at masked slots"})
    # targets and loss
    average_top_k_layers: int = field(default=12, metadata={"help": "teacher blocks averaged into the target (all 12)"})
    utterance_loss_weight: float = field(default=1.0, metadata={"help": "lambda of the utterance term (EAT cls_loss: 1)"})
    # EMA teacher
    ema_decay: float = 0.9998
    ema_end_decay: float = 0.99999
    ema_anneal_end_step: int = field(default=100000, metadata={"help": "EAT: 100k (large: 150k)"})


@register_model("eat", dataclass=EATConfig)
class EATModel(EMATeacherMixin, MaskedSpectrogramModel):
    time_first_positions = False  # EAT's images are time x frequency: MAE's code puts frequency first

    def __init__(self, cfg: EATConfig):
        super().__init__(cfg)
        if cfg.clone_batch < 1:
            raise ValueError(f"model.clone_batch must be >= 1, got {cfg.clone_batch}")
        if not 1 <= cfg.average_top_k_layers <= cfg.encoder_layers:
            raise ValueError(f"model.average_top_k_layers must be in [1, encoder_layers={cfg.encoder_layers}], "
                             f"got {cfg.average_top_k_layers}")
        if cfg.ema_anneal_end_step <= 0:
            raise ValueError("model.ema_anneal_end_step must be > 0 for the EMA momentum schedule")
        if not cfg.post_ln:
            raise ValueError("model.post_ln must be true: EAT's targets are its post-LN blocks' FFN outputs")
        dim = cfg.encoder_embed_dim
        self.decoder = GridConvDecoder(dim, cfg.decoder_dim, cfg.decoder_layers, cfg.decoder_kernel,
                                       cfg.decoder_groups, self.encoder.grid)
        self.build_teacher(["encoder"])

    def set_num_updates(self, num_updates: int) -> None:
        super().set_num_updates(num_updates)
        self.step_teacher(num_updates)

    @torch.no_grad()
    def targets(self, teacher_encoder, spectrogram: torch.Tensor) -> torch.Tensor:
        """``[B, 1, F, T]`` -> ``[B, N, D]`` float32 targets of every patch (CLS excluded)."""
        _, ffn_outputs = teacher_encoder.forward_layers(teacher_encoder.embed(spectrogram))
        average = instance_norm_average([f[:, 1:] for f in ffn_outputs], self.cfg.average_top_k_layers, True)
        return F.layer_norm(average, average.shape[-1:])

    def decoder_input(self, encoded_patches: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        """Visible outputs ``[B', Nv, D]`` back in place, N(0, mask_noise_std) at masked slots -> ``[B', N, D]``."""
        batch, num_visible, dim = encoded_patches.shape
        full = encoded_patches.new_empty(batch, order.shape[1], dim).normal_(0, self.cfg.mask_noise_std)
        return full.scatter(1, order[:, :num_visible].unsqueeze(-1).expand(-1, -1, dim), encoded_patches)

    def forward(self, source: torch.Tensor, lengths: Optional[torch.Tensor] = None,
                precomputed_mask: Optional[torch.Tensor] = None, **unused) -> dict:
        """``source [B, S]`` waveforms (``lengths [B]`` valid samples); ``precomputed_mask [B * clone_batch, N]``
        (True = masked, clones of a clip consecutive) replaces the drawn masks, as EAT's dataset can supply them."""
        spectrogram = self.training_spectrogram(source, lengths)
        clones = self.cfg.clone_batch
        teacher = self.teacher(self.encoder.patch_embed.weight)
        teacher.eval()
        targets = self.targets(teacher.encoder, spectrogram)  # once per clip, shared by its clones

        tokens = self.encoder.embed(spectrogram).repeat_interleave(clones, 0)
        mask = self.draw_mask(spectrogram, clones) if precomputed_mask is None else precomputed_mask  # [B * clones, N]
        num_masked = self.num_masked if precomputed_mask is None else None
        visible, masked, order = split_by_mask(tokens, mask, num_masked)
        masked = order[:, order.shape[1] - masked.shape[1]:]  # the masked patches' indices, ascending
        encoded = self.encoder(visible)  # [B * clones, 1 + Nv, D]
        prediction = self.decoder(self.decoder_input(encoded[:, 1:], order))

        scale = encoded.shape[-1] ** -0.5
        clone_targets = targets.repeat_interleave(clones, 0)
        prediction, clone_targets = gather_frames(prediction, masked), gather_frames(clone_targets, masked)  # x[mask]
        frame = F.mse_loss(prediction.float(), clone_targets, reduction="none") * scale  # [M, D]
        utterance_target = targets.mean(dim=1).repeat_interleave(clones, 0)
        utterance = F.mse_loss(encoded[:, 0].float(), utterance_target, reduction="none") * scale  # [B * clones, D]
        sample_size = frame.shape[0]
        with torch.no_grad():
            prediction_std = torch.sqrt(prediction.float().var(dim=0) + 1e-6).mean()
            target_std = torch.sqrt(clone_targets.var(dim=0) + 1e-6).mean()
        return {
            "losses": {"frame": frame.sum(), "utterance": utterance.sum() * (self.cfg.utterance_loss_weight * sample_size)},
            "sample_size": sample_size,
            "ema_decay": self.ema.get_decay(),
            "pred_var": prediction_std,
            "target_var": target_std,
        }


# ----- EAT's released checkpoints (cwx-worst-one/EAT: fairseq, model ``data2vec_multi`` on the IMAGE modality) -----
# Its images are fbank [time, frequency]; ours are [frequency, time]: the patch and decoder convolutions are
# transposed and the tokens renumbered (theirs ``t * F' + f``, ours ``f * T' + t``).

EAT_FBANK_NORM_STATS = (-4.268, 4.569)  # EAT's scripts (feature_extract.py, finetuning): not in its checkpoints
_IMAGE = "modality_encoders.IMAGE."
_TRANSPOSED = ("patch_embed.weight",)


def _eat_encoder_from_official(state: dict, prefix: str, time_patches: int, freq_patches: int) -> dict:
    """Official encoder keys under ``prefix`` (``""``, ``"model."``, or the teacher's) -> ours under ``encoder.``."""
    image = prefix + _IMAGE
    positions = state[image + "fixed_positional_encoder.positions"]
    dim = positions.shape[-1]
    positions = positions.reshape(-1, freq_patches, dim)[:time_patches].permute(1, 0, 2).reshape(-1, dim)
    if state[image + "extra_tokens"].shape[1] != 1:
        raise ValueError(f"{state[image + 'extra_tokens'].shape[1]} extra tokens: our EAT has one (CLS)")
    ours = {
        "encoder.patch_embed.weight": state[image + "local_encoder.proj.weight"].transpose(2, 3),
        "encoder.patch_embed.bias": state[image + "local_encoder.proj.bias"],
        "encoder.pos_embed": positions.contiguous(),
        "encoder.cls_token": state[image + "extra_tokens"],
        "encoder.context_norm.weight": state[image + "context_encoder.norm.weight"],
        "encoder.context_norm.bias": state[image + "context_encoder.norm.bias"],
    }
    for key, value in state.items():
        if key.startswith(prefix + "blocks."):
            ours["encoder." + key[len(prefix):]] = value
    return ours


def _eat_encoder_to_official(ours: dict, prefix: str, cfg: dict, max_length: int) -> dict:
    """Inverse of :func:`_eat_encoder_from_official`; the position table covers ``max_length`` time patches
    as EAT's does (rows past our input width are the same sine-cosine table, computed)."""
    from ..modules.spectrogram_vit import sincos_positions

    image = prefix + _IMAGE
    freq_patches = cfg["n_mels"] // cfg["patch_size"]
    time_patches = cfg["input_frames"] // cfg["patch_size"]
    dim = cfg["encoder_embed_dim"]
    table = sincos_positions(dim, (freq_patches, max(max_length, time_patches)), time_first=False)
    table = table.view(freq_patches, -1, dim)
    table[:, :time_patches] = ours["encoder.pos_embed"].view(freq_patches, time_patches, dim)
    state = {
        image + "local_encoder.proj.weight": ours["encoder.patch_embed.weight"].transpose(2, 3).contiguous(),
        image + "local_encoder.proj.bias": ours["encoder.patch_embed.bias"],
        image + "fixed_positional_encoder.positions": table.permute(1, 0, 2).reshape(1, -1, dim)[:, : max_length * freq_patches].contiguous(),
        image + "extra_tokens": ours["encoder.cls_token"],
        image + "context_encoder.norm.weight": ours["encoder.context_norm.weight"],
        image + "context_encoder.norm.bias": ours["encoder.context_norm.bias"],
    }
    for key, value in ours.items():
        if key.startswith("encoder.blocks."):
            state[prefix + key[len("encoder."):]] = value
    return state


def _eat_values(model_cfg: dict) -> dict:
    """Our ``eat`` config fields from an official ``data2vec_multi`` (EAT) model config."""
    image = model_cfg["modalities"]["image"]
    unsupported = {
        "in_chans": (image.get("in_chans", 1), 1), "prenet_depth": (image.get("prenet_depth", 0), 0),
        "use_alibi_encoder": (image.get("use_alibi_encoder", False), False),
        "layer_norm_first": (model_cfg.get("layer_norm_first", False), False),
        "norm_eps": (model_cfg.get("norm_eps", 1e-6), 1e-6),
        "modalities.image.embed_dim": (image.get("embed_dim", model_cfg["embed_dim"]), model_cfg["embed_dim"]),
        # EAT's patch embedding strides 16 whatever its kernel (PatchEmbed_new's default stride)
        "modalities.image.patch_size": (image.get("patch_size", 16), 16),
    }
    for name, (value, ours) in unsupported.items():
        if value != ours:
            raise ValueError(f"EAT checkpoint with model.{name}={value}: our EAT has {ours}")
    decoder = image.get("decoder") or {}
    return {
        "n_mels": 128,  # EAT's image is target_length x 128 fbank bins
        "input_frames": image.get("target_length", 1024),
        "patch_size": image.get("patch_size", 16),
        "encoder_embed_dim": model_cfg["embed_dim"],
        "encoder_layers": model_cfg["depth"],
        "encoder_attention_heads": model_cfg["num_heads"],
        "mlp_ratio": model_cfg.get("mlp_ratio", 4.0),
        "mask_ratio": image.get("mask_prob", 0.8),
        "ibm_block": image.get("mask_length", 5),
        "ibm_adjust": image.get("mask_prob_adjust", 0.07),
        "mask_noise_std": image.get("mask_noise_std", 0.01),
        "clone_batch": model_cfg.get("clone_batch", 16),
        "decoder_dim": decoder.get("decoder_dim", 768),
        "decoder_layers": decoder.get("decoder_layers", 6),
        "decoder_kernel": decoder.get("decoder_kernel", 3),
        "decoder_groups": decoder.get("decoder_groups", 16),
        "average_top_k_layers": model_cfg.get("average_top_k_layers", 12),
        "utterance_loss_weight": model_cfg.get("cls_loss", 1.0),
        "ema_decay": model_cfg.get("ema_decay", 0.9998),
        "ema_end_decay": model_cfg.get("ema_end_decay", 0.99999),
        "ema_anneal_end_step": model_cfg.get("ema_anneal_end_step", 100000),
        "sample_rate": 16000, "hop_length": 160, "max_update": 0,
    }


def _eat_task(values: dict, norm_stats) -> dict:
    return released.spectrogram_task_config(values["sample_rate"], values["hop_length"], values["input_frames"],
                                            norm_stats)


def _as_dict(cfg) -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True) if OmegaConf.is_config(cfg) else cfg


def from_official(state: dict, path: Optional[str] = None, norm_stats=EAT_FBANK_NORM_STATS,
                  config: Optional[dict] = None, **overrides) -> dict:
    """An EAT pretraining checkpoint (fairseq dict, ``data2vec_multi`` on IMAGE, the teacher under ``_ema``)
    -> our ``eat`` checkpoint, the architecture read from its ``cfg`` (``overrides``: any ``EATConfig`` field).
    ``norm_stats``: the fbank mean and std of EAT's scripts (AudioSet's), which the checkpoint does not hold."""
    source = released.source_name(path)
    model_cfg = _as_dict(state["cfg"])["model"]
    if "pretrained_model_args" in model_cfg or any(key.startswith("model.") for key in state["model"]):
        raise ValueError(f"{source}: a fine-tuned EAT (mae_image_classification): use --from eat_finetuned")
    values = dict(_eat_values(model_cfg), **overrides)
    weights = state["model"]
    if "_ema" not in weights:
        raise ValueError(f"{source}: no EMA teacher ('_ema'): not an EAT pretraining checkpoint")
    grid = (values["input_frames"] // values["patch_size"], values["n_mels"] // values["patch_size"])
    converted = _eat_encoder_from_official(weights, "", *grid)
    converted["frontend.norm_stats"] = torch.tensor([float(s) for s in norm_stats])
    for key, value in weights.items():
        if key.startswith(_IMAGE + "decoder."):
            ours = "decoder." + key[len(_IMAGE + "decoder."):]
            converted[ours] = value.transpose(2, 3) if value.ndim == 4 else value
    converted["_ema"] = _eat_encoder_from_official(weights["_ema"], "", *grid)
    released.unused_keys({k: v for k, v in weights.items() if k != "_ema"},
                         (_IMAGE + "local_encoder.", _IMAGE + "fixed_positional_encoder.", _IMAGE + "extra_tokens",
                          _IMAGE + "context_encoder.norm.", _IMAGE + "decoder.", "blocks."), source)
    return released.converted_checkpoint("eat", values, _eat_task(values, norm_stats), converted, source)


def to_official(checkpoint: dict, max_length: int = 768, **unused) -> dict:
    """Our ``eat`` checkpoint -> EAT's fairseq layout (``cfg`` for ``data2vec_multi`` / ``mae_image_pretraining``,
    student and ``_ema`` teacher); ``max_length``: time patches of EAT's position table (its default 768)."""
    cfg = checkpoint["cfg"]["model"]
    ours = checkpoint["model"]
    if cfg["n_mels"] != 128:
        raise ValueError(f"EAT's code builds 128-bin images; this model has n_mels={cfg['n_mels']}")
    state = _eat_encoder_to_official(ours, "", cfg, max_length)
    for key, value in ours.items():
        if key.startswith("decoder."):
            state[_IMAGE + key] = value.transpose(2, 3).contiguous() if value.ndim == 4 else value
    state["_ema"] = _eat_encoder_to_official(ours["_ema"], "", cfg, max_length)
    return {"cfg": {"model": _official_eat_config(cfg, max_length), "task": _official_eat_task(cfg)}, "model": state}


def _official_eat_config(cfg: dict, max_length: int) -> dict:
    return {
        "_name": "data2vec_multi", "embed_dim": cfg["encoder_embed_dim"], "depth": cfg["encoder_layers"],
        "num_heads": cfg["encoder_attention_heads"], "mlp_ratio": cfg["mlp_ratio"], "norm_eps": 1e-6,
        "layer_norm_first": False, "average_top_k_layers": cfg["average_top_k_layers"],
        "clone_batch": cfg["clone_batch"], "instance_norm_target_layer": True, "layer_norm_target_layer": False,
        "layer_norm_targets": True, "end_of_block_targets": False, "ema_decay": cfg["ema_decay"],
        "ema_end_decay": cfg["ema_end_decay"], "ema_anneal_end_step": cfg["ema_anneal_end_step"],
        "ema_encoder_only": False, "cls_loss": cfg["utterance_loss_weight"], "supported_modality": "IMAGE",
        "encoder_dropout": 0.0, "post_mlp_drop": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0,
        "min_target_var": 0.0, "min_pred_var": 0.0,
        "modalities": {"image": {
            "in_chans": 1, "patch_size": cfg["patch_size"], "embed_dim": cfg["encoder_embed_dim"],
            "target_length": cfg["input_frames"], "max_length": max_length, "inverse_mask": True,
            "mask_prob": cfg["mask_ratio"], "mask_prob_adjust": cfg["ibm_adjust"], "mask_length": cfg["ibm_block"],
            "mask_noise_std": cfg["mask_noise_std"], "prenet_depth": 0, "ema_local_encoder": True,
            "num_extra_tokens": 1, "init_extra_token_zero": False, "use_alibi_encoder": False,
            "decoder": {"decoder_dim": cfg["decoder_dim"], "decoder_groups": cfg["decoder_groups"],
                        "decoder_kernel": cfg["decoder_kernel"], "decoder_layers": cfg["decoder_layers"],
                        "input_dropout": 0.0},
        }},
    }


def _official_eat_task(cfg: dict) -> dict:
    return {"_name": "mae_image_pretraining", "data": "", "audio_mae": True, "downsr_16hz": True,
            "target_length": cfg["input_frames"], "flexible_mask": False}


_POOLING = {"CLS_TOKEN": "cls", "MEAN_POOLING": "mean"}


def from_official_finetuned(state: dict, path: Optional[str] = None, labels: Optional[Sequence[str]] = None,
                            norm_stats=EAT_FBANK_NORM_STATS, multi_label: bool = True,
                            config: Optional[dict] = None, **overrides) -> dict:
    """A fine-tuned EAT (fairseq dict, ``mae_image_classification``: the encoder under ``model.*``, ``fc_norm``,
    ``head``) -> our ``spectrogram_classifier`` checkpoint (``run/classify.py``). ``labels``: the class names in
    the head's order, a list or a file with one a line (the checkpoint has none; AudioSet's 527 in their official
    order for the AS-2M models), else ``"0"``, ``"1"``..."""
    from .audio_classifier import SpectrogramClassifierConfig

    source = released.source_name(path)
    model_cfg = _as_dict(state["cfg"])["model"]
    if "pretrained_model_args" not in model_cfg:
        raise ValueError(f"{source}: not a fine-tuned EAT (no model.pretrained_model_args): use --from eat")
    mode = str(model_cfg.get("prediction_mode", "CLS_TOKEN")).split(".")[-1]
    if mode not in _POOLING:
        raise ValueError(f"{source}: prediction_mode {mode}: only CLS_TOKEN and MEAN_POOLING have a counterpart here")
    values = dict(_eat_values(model_cfg["pretrained_model_args"]["model"]), **overrides)
    values["input_frames"] = overrides.get("input_frames", model_cfg.get("target_length", values["input_frames"]))
    pretrained = released.resolved_config(EATConfig, dict(values, _name="eat"))
    weights = state["model"]
    num_classes = weights["head.weight"].shape[0]
    if isinstance(labels, (str, Path)):  # a file, one label a line (--arg labels=FILE)
        labels = [line.strip() for line in Path(labels).read_text(encoding="utf-8").splitlines() if line.strip()]
    labels = [str(index) for index in range(num_classes)] if labels is None else list(labels)
    if len(labels) != num_classes:
        raise ValueError(f"{source}: {len(labels)} labels for a {num_classes}-class head")
    grid = (values["input_frames"] // values["patch_size"], values["n_mels"] // values["patch_size"])
    converted = _eat_encoder_from_official(weights, "model.", *grid)
    converted["frontend.norm_stats"] = torch.tensor([float(s) for s in norm_stats])
    for key in ("head.weight", "head.bias", "fc_norm.weight", "fc_norm.bias"):
        if key in weights:
            converted[key] = weights[key]
    released.unused_keys(weights, ("model.", "head.", "fc_norm."), source)
    classifier = {"pretrained_path": source, "pretrained_args": pretrained, "labels": labels,
                  "pooling": _POOLING[mode], "fc_norm": "fc_norm.weight" in weights}
    task = {"_name": "spectrogram_classification", "data": "", "sample_rate": 16000,
            "crop_samples": (values["input_frames"] - 1) * values["hop_length"] + 400, "multi_label": multi_label}
    classifier_cfg = released.resolved_config(SpectrogramClassifierConfig, classifier)
    return released.converted_checkpoint("spectrogram_classifier", classifier_cfg, task, converted, source)
