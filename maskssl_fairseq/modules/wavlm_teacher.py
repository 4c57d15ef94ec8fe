"""A frozen WavLM (Chen et al., 2022) that returns every layer's output on clean and on masked input: the teacher of
ARMwavLM-S. fairseq has no WavLM; the network is torchaudio's ``wavlm_model``.

Three checkpoint layouts load:

* the original authors' ``WavLM-Base.pt`` (microsoft/unilm, also s3prl's ``wavlm_base.pt``):
  ``{"cfg": dict, "model": state_dict}``, the network built from that cfg and the keys renamed to torchaudio's
  (:func:`unilm_to_torchaudio`; the cfg's absent keys take unilm's ``WavLMConfig`` defaults);
* torchaudio's own state dict (of ``wavlm_base()`` or ``wavlm_model(...)``) plus a ``mask_emb`` entry, the
  mask embedding torchaudio's model lacks; the architecture is read from the tensor shapes
  (:func:`torchaudio_config_from_state`);
* a HuggingFace ``WavLMModel`` directory, through ``torchaudio.models.wav2vec2.utils.import_huggingface_model``
  (needs ``transformers``).

torchaudio's ``extract_features(lengths=...)`` fails for WavLM (its encoder builds an additive attention mask that
WavLM attention refuses), so the pieces are run by hand as unilm's ``WavLM.extract_features`` runs them: CNN,
feature projection, padded frames zeroed (and masked frames set to the mask embedding), positional convolution,
then every layer with the key padding mask and the relative position bias of layer 1 handed on.
"""

import re
from pathlib import Path
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from torchaudio.models import Wav2Vec2Model, wavlm_model

from .cnn_frontend import parse_config_list
from .speech_teacher import WAVLM_TORCHAUDIO_KEY, FrozenTeacher, reshape_padding_mask

# unilm wavlm/WavLM.py WavLMConfig defaults, which an authors' cfg dict updates
UNILM_DEFAULTS = dict(
    extractor_mode="default", encoder_layers=12, encoder_embed_dim=768, encoder_ffn_embed_dim=3072,
    encoder_attention_heads=12, activation_fn="gelu", layer_norm_first=False,
    conv_feature_layers="[(512,10,5)] + [(512,3,2)] * 4 + [(512,2,2)] * 2", conv_bias=False, conv_pos=128,
    conv_pos_groups=16, relative_position_embedding=False, num_buckets=320, max_distance=1280, gru_rel_pos=False,
    normalize=False,
)
# the stride that goes with each kernel in the wav2vec 2.0 family's CNN (not stored in a state dict)
CONV_STRIDE_OF_KERNEL = {10: 5, 3: 2, 2: 2}

# unilm name prefix -> torchaudio name prefix, ``{i}`` a layer index; q/k/v are concatenated separately.
# In unilm's CNN a block's norm is ``.2.`` (group norm, first block) or ``.2.1.`` (extractor mode layer_norm).
UNILM_TORCHAUDIO_NAMES = [
    ("feature_extractor.conv_layers.{i}.0.", "feature_extractor.conv_layers.{i}.conv."),
    ("feature_extractor.conv_layers.{i}.2.1.", "feature_extractor.conv_layers.{i}.layer_norm."),
    ("feature_extractor.conv_layers.{i}.2.", "feature_extractor.conv_layers.{i}.layer_norm."),
    ("layer_norm.", "encoder.feature_projection.layer_norm."),
    ("post_extract_proj.", "encoder.feature_projection.projection."),
    ("encoder.pos_conv.0.", "encoder.transformer.pos_conv_embed.conv."),
    ("encoder.layer_norm.", "encoder.transformer.layer_norm."),
    ("encoder.layers.{i}.self_attn.out_proj.", "encoder.transformer.layers.{i}.attention.attention.out_proj."),
    ("encoder.layers.{i}.self_attn.relative_attention_bias.", "encoder.transformer.layers.{i}.attention.rel_attn_embed."),
    ("encoder.layers.{i}.self_attn.grep_linear.", "encoder.transformer.layers.{i}.attention.gru_rel_pos_linear."),
    ("encoder.layers.{i}.self_attn.grep_a", "encoder.transformer.layers.{i}.attention.gru_rel_pos_const"),
    ("encoder.layers.{i}.self_attn_layer_norm.", "encoder.transformer.layers.{i}.layer_norm."),
    ("encoder.layers.{i}.fc1.", "encoder.transformer.layers.{i}.feed_forward.intermediate_dense."),
    ("encoder.layers.{i}.fc2.", "encoder.transformer.layers.{i}.feed_forward.output_dense."),
    ("encoder.layers.{i}.final_layer_norm.", "encoder.transformer.layers.{i}.final_layer_norm."),
]
UNILM_QKV = re.compile(r"^encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)$")
TORCHAUDIO_IN_PROJ = re.compile(r"^encoder\.transformer\.layers\.(\d+)\.attention\.attention\.in_proj_(weight|bias)$")


def rename(key: str, pairs) -> str:
    """``key`` with the first matching prefix template of ``(from, to)`` pairs replaced."""
    for source, target in pairs:
        match = re.match(re.escape(source).replace(re.escape("{i}"), r"(\d+)"), key)
        if match:
            return target.replace("{i}", match.group(1) if match.groups() else "") + key[match.end():]
    return key


def unilm_to_torchaudio(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The authors' WavLM state dict -> torchaudio's (q, k, v concatenated into ``in_proj``; ``mask_emb`` kept)."""
    converted, qkv = {}, {}
    for key, value in state.items():
        match = UNILM_QKV.match(key)
        if match:
            qkv[(match[1], match[3], match[2])] = value
        else:
            converted[rename(key, UNILM_TORCHAUDIO_NAMES)] = value
    for layer, kind in sorted({(layer, kind) for layer, kind, _ in qkv}):
        converted[f"encoder.transformer.layers.{layer}.attention.attention.in_proj_{kind}"] = torch.cat(
            [qkv[(layer, kind, name)] for name in "qkv"])
    return converted


def torchaudio_to_unilm(state: Dict[str, torch.Tensor], layer_norm_extractor: bool = False) -> Dict[str, torch.Tensor]:
    """The inverse of :func:`unilm_to_torchaudio`, weight norm as unilm saves it (``weight_g``, ``weight_v``)."""
    pairs = [(target, source) for source, target in UNILM_TORCHAUDIO_NAMES
             if source.endswith(".2.1." if layer_norm_extractor else ".2.") or ".2." not in source]
    converted = {}
    for key, value in state.items():
        key = key.replace("parametrizations.weight.original0", "weight_g").replace(
            "parametrizations.weight.original1", "weight_v")
        match = TORCHAUDIO_IN_PROJ.match(key)
        if match:
            for name, part in zip("qkv", value.chunk(3)):
                converted[f"encoder.layers.{match[1]}.self_attn.{name}_proj.{match[2]}"] = part.clone()
        else:
            converted[rename(key, pairs)] = value
    return converted


def torchaudio_kwargs_from_unilm(cfg: dict, where: str) -> dict:
    """``wavlm_model`` arguments for the authors' cfg dict (dropouts 0: the teacher runs in eval mode)."""
    cfg = {**UNILM_DEFAULTS, **cfg}
    if not (cfg["relative_position_embedding"] and cfg["gru_rel_pos"]):
        raise ValueError(f"{where}: cfg has relative_position_embedding={cfg['relative_position_embedding']}, "
                         f"gru_rel_pos={cfg['gru_rel_pos']}; torchaudio's WavLM (as every released WavLM) has both")
    if cfg["activation_fn"] != "gelu" or cfg["normalize"]:
        raise ValueError(f"{where}: cfg has activation_fn={cfg['activation_fn']}, normalize={cfg['normalize']}; "
                         "only GELU WavLMs on raw waveforms (normalize False, as WavLM Base) are supported")
    return dict(
        extractor_mode="group_norm" if cfg["extractor_mode"] == "default" else "layer_norm",
        extractor_conv_layer_config=[tuple(layer) for layer in parse_config_list(cfg["conv_feature_layers"],
                                                                                  "conv_feature_layers")],
        extractor_conv_bias=bool(cfg["conv_bias"]), encoder_embed_dim=cfg["encoder_embed_dim"],
        encoder_pos_conv_kernel=cfg["conv_pos"], encoder_pos_conv_groups=cfg["conv_pos_groups"],
        encoder_num_layers=cfg["encoder_layers"], encoder_num_heads=cfg["encoder_attention_heads"],
        encoder_num_buckets=cfg["num_buckets"], encoder_max_distance=cfg["max_distance"],
        encoder_ff_interm_features=cfg["encoder_ffn_embed_dim"], encoder_layer_norm_first=bool(cfg["layer_norm_first"]),
    )


def torchaudio_config_from_state(state: Dict[str, torch.Tensor], where: str) -> dict:
    """``wavlm_model`` arguments read from a torchaudio state dict's shapes. What no tensor holds is WavLM Base's
    (and Base+'s): post-LN, relative positions up to 800 frames, strides (10: 5, 3: 2, 2: 2) by kernel."""
    conv = []
    for i in range(len([k for k in state if re.match(r"feature_extractor\.conv_layers\.\d+\.conv\.weight$", k)])):
        out_channels, _, kernel = state[f"feature_extractor.conv_layers.{i}.conv.weight"].shape
        if kernel not in CONV_STRIDE_OF_KERNEL:
            raise ValueError(f"{where}: CNN layer {i} has kernel {kernel}, whose stride a state dict does not give; "
                             "save the model in the authors' layout ({'cfg', 'model'}) instead")
        conv.append((out_channels, kernel, CONV_STRIDE_OF_KERNEL[kernel]))
    pos_key = next(k for k in state if k.startswith("encoder.transformer.pos_conv_embed.conv.")
                   and (k.endswith("original1") or k.endswith("weight_v")))
    dim, per_group, pos_kernel = state[pos_key].shape
    layers = len({k.split(".")[3] for k in state if k.startswith("encoder.transformer.layers.")})
    buckets, heads = state[WAVLM_TORCHAUDIO_KEY].shape
    return dict(
        extractor_mode="layer_norm" if "feature_extractor.conv_layers.1.layer_norm.weight" in state else "group_norm",
        extractor_conv_layer_config=conv, extractor_conv_bias="feature_extractor.conv_layers.0.conv.bias" in state,
        encoder_embed_dim=dim, encoder_pos_conv_kernel=pos_kernel, encoder_pos_conv_groups=dim // per_group,
        encoder_num_layers=layers, encoder_num_heads=heads, encoder_num_buckets=buckets, encoder_max_distance=800,
        encoder_ff_interm_features=state["encoder.transformer.layers.0.feed_forward.intermediate_dense.weight"].size(0),
        encoder_layer_norm_first=False,
    )


def build_wavlm(kwargs: dict) -> Wav2Vec2Model:
    """torchaudio's ``wavlm_model`` with every dropout and layerdrop 0."""
    return wavlm_model(**kwargs, encoder_projection_dropout=0.0, encoder_attention_dropout=0.0,
                       encoder_ff_interm_dropout=0.0, encoder_dropout=0.0, encoder_layer_drop=0.0, aux_num_out=None)


class WavLMTeacher(FrozenTeacher):
    """Frozen WavLM teacher over torchaudio's model, with the checkpoint's mask embedding as a buffer."""

    def __init__(self, model: Wav2Vec2Model, mask_emb: torch.Tensor):
        super().__init__()
        self.model = model
        self.register_buffer("mask_emb", mask_emb.detach().clone().float())
        model.encoder.transformer.layer_drop = 0.0
        model.requires_grad_(False)
        self.train(False)

    @classmethod
    def from_checkpoint(cls, path: str) -> "WavLMTeacher":
        where = f"model.teacher_path={path}"
        if Path(path).is_dir():
            return cls.from_huggingface(path)
        state = torch.load(path, map_location="cpu", weights_only=False)
        if isinstance(state, dict) and isinstance(state.get("cfg"), dict) and isinstance(state.get("model"), dict):
            weights = unilm_to_torchaudio(state["model"])
            kwargs = torchaudio_kwargs_from_unilm(state["cfg"], where)
        elif isinstance(state, dict) and WAVLM_TORCHAUDIO_KEY in state:
            weights = dict(state)
            kwargs = torchaudio_config_from_state(weights, where)
        else:
            raise ValueError(f"{where}: not a WavLM checkpoint (the authors' {{'cfg', 'model'}} or torchaudio's "
                             "state dict with a 'mask_emb' entry)")
        if "mask_emb" not in weights:
            raise ValueError(f"{where}: no 'mask_emb' tensor; the teacher's mask embedding makes the masked view "
                             "(torchaudio's model has none: save it beside the state dict under 'mask_emb')")
        mask_emb = weights.pop("mask_emb")
        model = build_wavlm(kwargs)
        try:
            model.load_state_dict(weights, strict=True)
        except RuntimeError as err:
            raise ValueError(f"{where}: the weights do not fit the WavLM its config describes: {err}") from None
        return cls(model, mask_emb)

    @classmethod
    def from_huggingface(cls, directory: str) -> "WavLMTeacher":
        try:
            from transformers import WavLMModel
        except ImportError:
            raise ImportError(f"model.teacher_path={directory} is a HuggingFace directory: "
                              "pip install transformers") from None
        from torchaudio.models.wav2vec2.utils import import_huggingface_model

        original = WavLMModel.from_pretrained(directory)
        if getattr(original, "masked_spec_embed", None) is None:  # HF keeps it only with mask_time_prob > 0
            raise ValueError(f"model.teacher_path={directory}: the HuggingFace WavLM has no masked_spec_embed, "
                             "the mask embedding of the masked view")
        model = import_huggingface_model(original)
        for module in model.modules():  # import_huggingface_model keeps HF's dropouts
            if isinstance(module, nn.Dropout):
                module.p = 0.0
        return cls(model, original.masked_spec_embed)

    @property
    def embed_dim(self) -> int:
        return self.mask_emb.numel()

    @property
    def num_layers(self) -> int:
        return len(self.model.encoder.transformer.layers)

    @property
    def mask_embedding(self) -> torch.Tensor:
        return self.mask_emb

    def project(self, source: torch.Tensor) -> torch.Tensor:
        features, _ = self.model.feature_extractor(source, None)
        return self.model.encoder.feature_projection(features)

    def frame_padding(self, padding_mask: Optional[torch.Tensor], frames: int,
                      padded: bool = False) -> Optional[torch.Tensor]:
        return reshape_padding_mask(padding_mask, frames, padded)  # unilm's forward_padding_mask, the same as HuBERT's

    def encode(self, features: torch.Tensor, frame_padding: Optional[torch.Tensor]) -> List[torch.Tensor]:
        transformer = self.model.encoder.transformer
        key_padding = None
        if frame_padding is not None:
            features = features.masked_fill(frame_padding.unsqueeze(-1), 0.0)
            # additive, in the bias's dtype: torchaudio adds it to the position bias (a bool mask warns every layer)
            key_padding = features.new_zeros(frame_padding.shape).masked_fill(frame_padding, float("-inf"))
        x = transformer._preprocess(features)
        outputs, position_bias = [], None
        for layer in transformer.layers:
            x, position_bias = layer(x, position_bias=position_bias, key_padding_mask=key_padding)
            outputs.append(x)
        return outputs
