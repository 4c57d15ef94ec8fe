"""What the converters of the released spectrogram models share (EAT, M2D, MSM-MAE, M2D-CLAP; each model file
keeps its own key mapping, as timm keeps a ``checkpoint_filter_fn`` beside each model).

- :func:`converted_checkpoint` builds our model around the converted weights and wraps them into the fairseq
  checkpoint dict our tools load (``checkpoints.plugin_checkpoint``: ``load_model``, ``model.pretrained_path``,
  ``model.init_from``, ``run/linear_eval.py``, ``run/zeroshot.py``).
- The M2D family's releases (``torch.load`` of ``checkpoint-N.pth``): the state under ``model`` (or the file is
  the state), timm / MAE ViT key names, ``norm_stats`` inside, the architecture in the folder name
  (``m2d_vit_base-80x608p16x16-240213``: 80 mel bins x 608 frames, 16 x 16 patches, optionally ``p32k``) and
  64 channels per attention head in every released size.
"""

import logging
import re
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from omegaconf import OmegaConf

logger = logging.getLogger(__name__)

# what M2D's runtime falls back to for releases without norm_stats (the 2022 models)
M2D_DEFAULT_NORM_STATS = (-7.1, 4.2)
CHANNELS_PER_HEAD = 64
# front ends of the M2D family by the folder name's sample-rate field (portable_m2d.get_to_melspec)
M2D_FRONT_ENDS = {
    "16k": dict(sample_rate=16000, n_fft=400, win_length=400, hop_length=160, n_mels=80, f_min=50.0, f_max=8000.0),
    "32k": dict(sample_rate=32000, n_fft=800, win_length=800, hop_length=320, n_mels=80, f_min=50.0, f_max=16000.0),
}


def resolved_config(config_class, values: dict) -> dict:
    """A model or task dataclass's defaults with ``values`` over them, every field concrete (the
    interpolations to ``task.*`` / ``optimization.*`` must be among ``values``)."""
    merged = OmegaConf.merge(OmegaConf.structured(config_class), values)
    return OmegaConf.to_container(merged, resolve=True, enum_to_str=True)


def spectrogram_task_config(sample_rate: int, hop_length: int, crop_frames: int, norm_stats: Tuple[float, float]) -> dict:
    """The ``spectrogram_pretraining`` task a converted model is saved with (no data: ``load_model`` builds the
    model from the checkpoint without measuring statistics)."""
    return {"_name": "spectrogram_pretraining", "data": "", "sample_rate": sample_rate, "hop_length": hop_length,
            "crop_frames": crop_frames, "crop_samples": None, "norm_stats": [float(s) for s in norm_stats],
            "train_subset": "train", "seed": 1}


def parse_m2d_name(name: str) -> dict:
    """M2D's folder-name convention -> ``{n_mels, input_frames, patch_size, sample_rate, ...front end}``:
    ``m2d_vit_base-80x608p16x16-240213`` (16 kHz), ``...-80x1001p16x16p32k-...`` (32 kHz)."""
    match = re.search(r"-(\d+)x(\d+)p(\d+)x(\d+)(?:p(16k|32k))?", name)
    if match is None:
        raise ValueError(f"{name!r} does not follow M2D's folder-name convention (<model>-<mels>x<frames>p<patch>x"
                         "<patch>[p32k]-..., e.g. m2d_vit_base-80x608p16x16-240213): rename the folder or give "
                         "n_mels, input_frames and patch_size")
    mels, frames, patch_f, patch_t, rate = match.groups()
    if patch_f != patch_t:
        raise ValueError(f"{name!r}: {patch_f} x {patch_t} patches; our encoders cut square patches only")
    front_end = dict(M2D_FRONT_ENDS[rate or "16k"])
    if int(mels) != front_end["n_mels"]:
        raise ValueError(f"{name!r}: {mels} mel bins, M2D's front end has {front_end['n_mels']}")
    return dict(front_end, input_frames=int(frames), patch_size=int(patch_f))


def m2d_state(checkpoint: dict) -> Dict[str, torch.Tensor]:
    """The backbone state of an M2D-family file: under ``model`` if there, EVAR's and RuntimeM2D's prefixes
    (``module.ar.runtime.backbone.``, ``backbone.``) removed."""
    state = checkpoint["model"] if "model" in checkpoint else checkpoint
    for prefix in ("module.ar.runtime.backbone.", "backbone."):
        if any(key.startswith(prefix) for key in state):
            # a saved RuntimeM2D (M2D-CLAP 2025) keeps its temperature beside the backbone
            kept = {key: state[key] for key in ("logit_scale",) if key in state}
            state = dict(kept, **{key[len(prefix):]: value for key, value in state.items() if key.startswith(prefix)})
    return dict(state)


def m2d_architecture(state: Dict[str, torch.Tensor], name: Optional[str], overrides: dict) -> dict:
    """Encoder sizes read from the weights, input size and front end from the folder name (or ``overrides``:
    ``n_mels``, ``input_frames``, ``patch_size``, ``sample_rate``, ``encoder_attention_heads`` ...)."""
    if "patch_embed.proj.weight" not in state:
        raise ValueError("no 'patch_embed.proj.weight': not an M2D / MSM-MAE / M2D-CLAP state dict")
    dim, _, patch, _ = state["patch_embed.proj.weight"].shape
    depth = 1 + max(int(key.split(".")[1]) for key in state if key.startswith("blocks."))
    arch = parse_m2d_name(name) if name and not {"input_frames", "patch_size"} <= set(overrides) else dict(M2D_FRONT_ENDS["16k"])
    arch.update(encoder_embed_dim=dim, encoder_layers=depth, encoder_attention_heads=dim // CHANNELS_PER_HEAD,
                mlp_ratio=state["blocks.0.mlp.fc1.weight"].shape[0] / dim, patch_size=patch)
    arch.update(overrides)
    if "input_frames" not in arch:
        raise ValueError("the input size is unknown: give the release's folder name (M2D's convention, e.g. "
                         "m2d_vit_base-80x608p16x16-240213) or input_frames")
    if arch["patch_size"] != patch:
        raise ValueError(f"the weights cut {patch} x {patch} patches, the folder name or flags say {arch['patch_size']}")
    return arch


def vit_from_official(state: Dict[str, torch.Tensor], grid: Tuple[int, int]) -> Dict[str, torch.Tensor]:
    """The timm / MAE encoder keys of an M2D-family state -> ours (``encoder.*``, ``frontend.norm_stats``).

    The official CLS position (row 0 of ``pos_embed``) is added to the CLS token, as the official forward adds
    it (it is zero in every release, so the round trip stays exact)."""
    positions = state["pos_embed"].reshape(-1, state["pos_embed"].shape[-1])
    patches = grid[0] * grid[1]
    if positions.shape[0] not in (patches, patches + 1):
        raise ValueError(f"pos_embed has {positions.shape[0]} rows, a {grid[0]} x {grid[1]} grid needs {patches} "
                         "(+1 for CLS): the input size (folder name or flags) does not match the weights")
    if "cls_token" not in state:
        raise ValueError("no 'cls_token': MSM-MAE releases without a CLS token (HEAR 2021's) are not supported; "
                         "our encoders always have one")
    norm_stats = state.get("norm_stats")
    if norm_stats is None:
        logger.warning("no norm_stats in the checkpoint: using M2D's fallback %s", M2D_DEFAULT_NORM_STATS)
        norm_stats = torch.tensor(M2D_DEFAULT_NORM_STATS)
    ours = {
        "frontend.norm_stats": norm_stats.float().reshape(2),
        "encoder.patch_embed.weight": state["patch_embed.proj.weight"],
        "encoder.patch_embed.bias": state["patch_embed.proj.bias"],
        "encoder.pos_embed": positions[-patches:].clone(),
        "encoder.cls_token": state["cls_token"] + (positions[:1] if positions.shape[0] > patches else 0),
    }
    for key, value in state.items():
        if key.startswith(("blocks.", "norm.")):
            ours["encoder." + key] = value
    return ours


def vit_to_official(ours: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Inverse of :func:`vit_from_official` (``pos_embed`` with its zero CLS row, ``norm_stats`` inside)."""
    positions = ours["encoder.pos_embed"]
    state = {
        "norm_stats": ours["frontend.norm_stats"].clone(),
        "patch_embed.proj.weight": ours["encoder.patch_embed.weight"],
        "patch_embed.proj.bias": ours["encoder.patch_embed.bias"],
        "cls_token": ours["encoder.cls_token"],
        "pos_embed": torch.cat([positions.new_zeros(1, positions.shape[-1]), positions]).unsqueeze(0),
    }
    for key, value in ours.items():
        if key.startswith(("encoder.blocks.", "encoder.norm.")):
            state[key[len("encoder."):]] = value
    return state


VIT_PREFIXES = ("norm_stats", "patch_embed.", "pos_embed", "cls_token", "blocks.", "norm.")
# MAE decoder (M2D's predictor, MSM-MAE's decoder): official name -> ours under the module's prefix
_DECODER_KEYS = {"decoder_embed.": "embed.", "mask_token": "mask_token", "decoder_blocks.": "blocks.",
                 "decoder_norm.": "norm.", "decoder_pred.": "head."}
DECODER_PREFIXES = tuple(_DECODER_KEYS) + ("decoder_pos_embed",)


def decoder_from_official(state: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """MAE's decoder keys -> ours under ``prefix`` (``predictor.`` / ``decoder.``); empty when the file has none
    (an encoder-only release)."""
    ours = {}
    for key, value in state.items():
        for official, mine in _DECODER_KEYS.items():
            if key.startswith(official):
                ours[prefix + mine + key[len(official):]] = value
    if "decoder_pos_embed" in state:
        ours[prefix + "pos_embed"] = state["decoder_pos_embed"].reshape(-1, state["decoder_pos_embed"].shape[-1])
    return ours


def decoder_to_official(ours: Dict[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    state = {}
    for key, value in ours.items():
        if not key.startswith(prefix):
            continue
        rest = key[len(prefix):]
        if rest == "pos_embed":
            state["decoder_pos_embed"] = value.unsqueeze(0)
            continue
        for official, mine in _DECODER_KEYS.items():
            if rest.startswith(mine):
                state[official + rest[len(mine):]] = value
    return state


def decoder_fields(state: Dict[str, torch.Tensor], names: Tuple[str, str, str], channels_per_head: int) -> dict:
    """Our config fields ``names`` (width, depth, heads) of the release's MAE decoder, read from its weights,
    the heads from the width (M2D: 512 / 16 = 32 channels per head, MSM-MAE: 384 / 6 = 64); ``{}`` without a
    decoder (an encoder-only file)."""
    if "decoder_embed.weight" not in state:
        return {}
    width = state["decoder_embed.weight"].shape[0]
    depth = 1 + max(int(key.split(".")[1]) for key in state if key.startswith("decoder_blocks."))
    return dict(zip(names, (width, depth, width // channels_per_head)))


def complete_state(model: torch.nn.Module, converted: Dict[str, torch.Tensor], source: str) -> Dict[str, torch.Tensor]:
    """``model``'s own state (its fresh initialisation) with the converted weights over it; what the release
    does not hold (the decoder of an encoder-only file) is logged. Unknown or misshapen keys are errors."""
    state = model.state_dict()

    def fill(state: dict, converted: dict, where: str) -> None:
        unknown = sorted(set(converted) - set(state))
        if unknown:
            raise ValueError(f"{source}: no place in our {type(model).__name__} for {where}{unknown[:8]}")
        for key, value in converted.items():
            if isinstance(value, dict):  # the EMA teacher's parameters (``_ema``)
                fill(state[key], value, f"{key}: ")
                if set(state[key]) - set(value):
                    raise ValueError(f"{source}: {key} lacks {sorted(set(state[key]) - set(value))[:8]}")
            elif state[key].shape != value.shape:
                raise ValueError(f"{source}: {where}{key} is {tuple(value.shape)}, ours is {tuple(state[key].shape)}")
            else:
                state[key] = value.to(state[key].dtype).clone()

    state = {key: dict(value) if isinstance(value, dict) else value for key, value in state.items()}
    fill(state, converted, "")
    fresh = sorted({key.split(".")[0] for key in set(state) - set(converted) if not key.endswith("_updates")})
    if fresh:
        logger.warning("%s does not hold %s: kept freshly initialised", source, fresh)
    return state


def source_name(path: Optional[str]) -> str:
    return str(path) if path else "an official checkpoint"


def folder_name(path: Optional[str]) -> Optional[str]:
    return Path(path).parent.name if path else None


def converted_checkpoint(model_name: str, values: dict, task_cfg: dict, converted: Dict[str, torch.Tensor],
                         source: str) -> dict:
    """Builds our registered model ``model_name`` from ``values`` (its config fields), puts the converted
    weights into its state (:func:`complete_state`) and returns the fairseq checkpoint dict."""
    from fairseq.models import MODEL_DATACLASS_REGISTRY, MODEL_REGISTRY

    from ..checkpoints import plugin_checkpoint

    model_cfg = resolved_config(MODEL_DATACLASS_REGISTRY[model_name], dict(values, _name=model_name))
    torch.manual_seed(0)  # what the release lacks starts from a reproducible initialisation
    model = MODEL_REGISTRY[model_name].build_model(OmegaConf.create(model_cfg))
    return plugin_checkpoint(model_cfg, task_cfg, complete_state(model, converted, source))


def m2d_family_checkpoint(model_name: str, arch: dict, converted: Dict[str, torch.Tensor], source: str) -> dict:
    """The checkpoint of an M2D-family model (``m2d``, ``m2d_clap``, ``msm_mae``) with the architecture and
    front end ``arch``; the fields that interpolate ``optimization.*`` get placeholders (a run that continues
    from the weights sets its own schedule)."""
    values = dict(arch, max_update=0)
    if model_name != "msm_mae":
        values["ema_anneal_end_step"] = 1
    norm_stats = converted["frontend.norm_stats"].tolist()
    task = spectrogram_task_config(arch["sample_rate"], arch["hop_length"], arch["input_frames"], norm_stats)
    return converted_checkpoint(model_name, values, task, converted, source)


def unused_keys(state: Dict[str, torch.Tensor], prefixes: Tuple[str, ...], source: str) -> None:
    """Logs the release's keys that no mapping took (e.g. M2D-X's ``offline_predictor`` for ``--from m2d``)."""
    dropped = sorted(key for key in state if not key.startswith(prefixes))
    if dropped:
        logger.warning("%s: not converted (no counterpart in our model): %s", source, dropped)


def official_folder_name(model_cfg: dict, model: str, suffix: str) -> str:
    """M2D's folder-name convention for our model config: ``<model>-<mels>x<frames>p<patch>x<patch>[p32k]-<suffix>``."""
    rate = "" if model_cfg["sample_rate"] == 16000 else f"p{model_cfg['sample_rate'] // 1000}k"
    patch = model_cfg["patch_size"]
    return f"{model}-{model_cfg['n_mels']}x{model_cfg['input_frames']}p{patch}x{patch}{rate}-{suffix}"


def with_stored_positions(checkpoint: dict) -> Dict[str, torch.Tensor]:
    """The checkpoint's state with its position tables: one saved before they were stored (2026-12-06) used
    the frequency-first tables of then, which the official code runs exactly as it reads them."""
    from ..modules.spectrogram_vit import MaskedTokenPredictor, sincos_positions

    cfg, state = checkpoint["cfg"]["model"], dict(checkpoint["model"])
    grid = (cfg["n_mels"] // cfg["patch_size"], cfg["input_frames"] // cfg["patch_size"])
    if "encoder.pos_embed" not in state:
        state["encoder.pos_embed"] = sincos_positions(cfg["encoder_embed_dim"], grid, time_first=False)
    for prefix, width in (("predictor.", "predictor_embed_dim"), ("decoder.", "decoder_embed_dim")):
        if prefix + "embed.weight" in state and prefix + "pos_embed" not in state:
            state[prefix + "pos_embed"] = MaskedTokenPredictor.positions(cfg[width], grid, time_first=False)
    return state
