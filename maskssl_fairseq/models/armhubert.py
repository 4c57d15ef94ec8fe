"""ARMHuBERT / MaskHuBERT (Jang et al., "Recycle-and-Distill", Interspeech 2023): a 12-layer student distilled
layer to layer from a fairseq HuBERT, with attention-map reuse and masking distillation.

The student has a FitHuBERT-style convolutional front end with the teacher's total stride (320), a post-LN
transformer whose reuse layers (``model.reuse_attention``) take the attention map of the last computing
layer (:mod:`maskssl_fairseq.modules.reuse_attention`), and one ``Linear(D -> teacher width)`` head per layer.

In training, ``forward`` draws one span mask and gives it to both networks: the student sees the masked input,
the frozen teacher (a fairseq HuBERT, :class:`~maskssl_fairseq.modules.hubert_teacher.HubertTeacher`, or a WavLM,
:class:`~maskssl_fairseq.modules.wavlm_teacher.WavLMTeacher`, for ARMwavLM) runs on the clean and on the masked
input with its own frame padding; the criterion ``armhubert_distillation`` regresses the heads on these targets.

The teacher is loaded from ``model.teacher_path`` at the first distillation step, not when the model is built:
fairseq builds the model the same way when a checkpoint is fine-tuned (``wav2vec_ctc``) or evaluated, and then
no teacher file is needed. It is not a submodule, so it is never in a checkpoint, in the optimiser, in DDP's
buckets or switched to training mode by fairseq; it follows the student's device and dtype.
"""

import dataclasses
import logging
import re
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import BaseFairseqModel, register_model
from fairseq.models.wav2vec.wav2vec2 import ConvFeatureExtractionModel
from fairseq.modules import LayerNorm

from ..masking import span_mask, wav2vec2_span_mask
from ..modules.cnn_frontend import frame_padding_mask, parse_config_list, run_feature_extractor
from ..modules.hubert_teacher import HubertTeacher
from ..modules.speech_teacher import FrozenTeacher, checkpoint_kind
from ..modules.reuse_attention import ReuseTransformerEncoder, check_reuse_pattern

logger = logging.getLogger(__name__)

TWO_BY_SIX = "[False, True] * 6"  # the paper's 2by6: layers 2, 4, ..., 12 reuse the map of the layer before
# the released code masks with fairseq's compute_mask_indices under the teacher's overridden masking config
# (conf/*/armhubert*.yaml teacher: mask_selection uniform, mask_other 0, no_mask_overlap, mask_min_space 1)
# and HuBERT's apply_mask (min_masks 2, require_same_masks)
RELEASED_MASK = dict(mask_type="uniform", mask_other=0.0, min_masks=2, no_overlap=True, min_space=1, same_count=True)
FITHUBERT_CONV = "[(128, 10, 5)] + [(256, 1, 1)] + [(256, 3, 2)] * 4 + [({d}, 1, 1)] + [({d}, 2, 2)] * 2"


@dataclass
class ArmHubertConfig(FairseqDataclass):
    teacher_path: Optional[str] = field(
        default=None,
        metadata={"help": "teacher to distil: a fairseq HuBERT checkpoint, or a WavLM (the original authors' "
                          "WavLM-Base.pt, a torchaudio state dict or a HuggingFace directory); loaded at the first "
                          "distillation step, not needed to fine-tune or evaluate the student"},
    )
    teacher_type: ChoiceEnum(["auto", "hubert", "wavlm"]) = field(
        default="auto", metadata={"help": "the teacher's kind; auto reads it from the checkpoint's contents"}
    )
    teacher_embed_dim: int = field(
        default=768, metadata={"help": "width of the teacher's layer outputs = output width of the heads"}
    )
    encoder_layers: int = field(default=12, metadata={"help": "student transformer layers (one per teacher layer)"})
    encoder_embed_dim: int = field(default=480, metadata={"help": "student attention width D"})
    encoder_ffn_embed_dim: int = field(default=864, metadata={"help": "student FFN width"})
    encoder_attention_heads: int = field(default=12, metadata={"help": "attention heads"})
    reuse_attention: str = field(
        default=TWO_BY_SIX,
        metadata={"help": "python list of one bool per layer, True = the layer has no query/key projections and "
                          "reuses the map of the last layer that computed one (default: the paper's 2by6). The "
                          "released code's reuse_pattern is the negation of this list"},
    )
    official_compat: bool = field(
        default=False,
        metadata={"help": "reproduce the released code's reuse: second softmax over the map and heads paired "
                          "with the wrong sample when a batch holds several utterances"},
    )
    activation_fn: ChoiceEnum(["gelu", "relu", "gelu_accurate", "tanh", "linear"]) = field(
        default="gelu", metadata={"help": "FFN activation"}
    )
    conv_feature_layers: str = field(
        default=FITHUBERT_CONV.format(d=480),
        metadata={"help": "front end as [(channels, kernel, stride), ...]; the strides must multiply to the "
                          "teacher's (320) so that both make the same frames"},
    )
    extractor_mode: ChoiceEnum(["default", "layer_norm"]) = field(
        default="default", metadata={"help": "default: one group norm in the first conv block"}
    )
    conv_bias: bool = field(default=False, metadata={"help": "bias in the conv front end"})
    conv_pos: int = field(default=128, metadata={"help": "kernel of the convolutional positional embedding"})
    conv_pos_groups: int = field(default=16, metadata={"help": "groups of the convolutional positional embedding"})
    dropout: float = field(default=0.1, metadata={"help": "dropout in the transformer"})
    attention_dropout: float = field(default=0.1, metadata={"help": "dropout on attention maps (computing layers)"})
    activation_dropout: float = field(default=0.1, metadata={"help": "dropout after the FFN activation"})
    dropout_input: float = field(default=0.05, metadata={"help": "dropout on the front-end features"})
    encoder_layerdrop: float = field(
        default=0.0, metadata={"help": "layerdrop (fine-tuning only; drops a computing layer with its reusers)"}
    )
    feature_grad_mult: float = field(
        default=1.0, metadata={"help": "gradient scale into the conv front end; 0 freezes it"}
    )
    layer_grad_scale: bool = field(
        default=False,
        metadata={"help": "the released code's per-layer gradient scaling (on for ARMHuBERT, off for MaskHuBERT)"},
    )
    mask_prob: float = field(
        default=0.8,
        metadata={"help": "fraction of frames masked (exactly, per utterance); 0.8 for 960 h, 0.4 for 100 h"},
    )
    mask_length: int = field(default=10, metadata={"help": "span length of the time mask in frames"})
    mask_style: ChoiceEnum(["exact", "fairseq"]) = field(
        default="exact",
        metadata={"help": "distillation mask. fairseq: the released code's (fairseq compute_mask_indices under the "
                          "teacher's overridden config: span lengths uniform in 0..2*mask_length, no overlap, "
                          "min_space 1, min_masks 2, every row cut to the batch minimum; masks less than "
                          "mask_prob). exact: span_mask, exactly mask_prob of the shortest row in spans of "
                          "mask_length. Fine-tuning masks are always exact"},
    )
    mask_channel_prob: float = field(
        default=0.0, metadata={"help": "fraction of channels zeroed when fine-tuning with masking"}
    )
    mask_channel_length: int = field(default=10, metadata={"help": "span length of the channel mask"})


def load_teacher(path: str, teacher_type: str = "auto") -> FrozenTeacher:
    """A frozen HuBERT or WavLM teacher; ``teacher_type`` (``model.teacher_type``) is checked against the file."""
    from ..modules.wavlm_teacher import WavLMTeacher  # torchaudio, only when distilling

    found = checkpoint_kind(path)
    if teacher_type != "auto" and teacher_type != found:
        raise ValueError(f"model.teacher_type={teacher_type} but model.teacher_path={path} holds a {found} model")
    return WavLMTeacher.from_checkpoint(path) if found == "wavlm" else HubertTeacher.from_checkpoint(path)


@register_model("armhubert", dataclass=ArmHubertConfig)
class ArmHubertModel(BaseFairseqModel):
    def __init__(self, cfg: ArmHubertConfig):
        super().__init__()
        self.cfg = cfg
        reuse = check_reuse_pattern(parse_config_list(cfg.reuse_attention, "reuse_attention"), cfg.encoder_layers)
        self.conv_layers = parse_config_list(cfg.conv_feature_layers, "conv_feature_layers")
        conv_dim = self.conv_layers[-1][0]
        self.feature_extractor = ConvFeatureExtractionModel(
            self.conv_layers, dropout=0.0, mode=cfg.extractor_mode, conv_bias=cfg.conv_bias
        )
        self.layer_norm = LayerNorm(conv_dim)
        self.post_extract_proj = (
            nn.Linear(conv_dim, cfg.encoder_embed_dim) if conv_dim != cfg.encoder_embed_dim else None
        )
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.mask_emb = nn.Parameter(torch.empty(cfg.encoder_embed_dim).uniform_())
        self.encoder = ReuseTransformerEncoder(
            cfg.encoder_embed_dim, cfg.encoder_ffn_embed_dim, cfg.encoder_attention_heads, reuse,
            dropout=cfg.dropout, attention_dropout=cfg.attention_dropout, activation_dropout=cfg.activation_dropout,
            activation_fn=cfg.activation_fn, conv_pos=cfg.conv_pos, conv_pos_groups=cfg.conv_pos_groups,
            layerdrop=cfg.encoder_layerdrop, official_compat=cfg.official_compat, layer_grad_scale=cfg.layer_grad_scale,
        )
        self.heads: Optional[nn.ModuleList] = nn.ModuleList(
            nn.Linear(cfg.encoder_embed_dim, cfg.teacher_embed_dim) for _ in range(cfg.encoder_layers)
        )
        self.teacher_path = cfg.teacher_path
        object.__setattr__(self, "teacher", None)  # not a submodule: see the module docstring

    @classmethod
    def build_model(cls, cfg: ArmHubertConfig, task=None) -> "ArmHubertModel":
        return cls(cfg)

    # ----------------------------------------------------------------------------------------- teacher
    def load_teacher(self) -> FrozenTeacher:
        """The frozen teacher, loaded on first use, on the student's device and in its parameter dtype."""
        if self.teacher is None:
            if not self.teacher_path:
                raise ValueError("model.teacher_path is not set: distillation needs a HuBERT or WavLM checkpoint")
            # building the teacher draws initial weights that its checkpoint then replaces: drawing them from a
            # forked RNG leaves the masks and dropout of this micro-batch as in any other process layout
            with torch.random.fork_rng(devices=[]):
                teacher = load_teacher(self.teacher_path, self.cfg.teacher_type)
            if teacher.embed_dim != self.cfg.teacher_embed_dim:
                raise ValueError(
                    f"model.teacher_embed_dim={self.cfg.teacher_embed_dim} but the teacher {self.teacher_path} "
                    f"is {teacher.embed_dim} wide: set model.teacher_embed_dim={teacher.embed_dim}"
                )
            if teacher.num_layers != self.cfg.encoder_layers:
                raise ValueError(
                    f"model.encoder_layers={self.cfg.encoder_layers} but the teacher {self.teacher_path} has "
                    f"{teacher.num_layers} layers: each student layer distils the teacher layer of the same index"
                )
            logger.info(f"loaded the {type(teacher).__name__} {self.teacher_path} "
                        f"({teacher.num_layers} x {teacher.embed_dim})")
            object.__setattr__(self, "teacher", teacher)
        reference = self.mask_emb
        teacher_param = next(self.teacher.parameters())
        if teacher_param.device != reference.device or teacher_param.dtype != reference.dtype:
            self.teacher.to(device=reference.device, dtype=reference.dtype)
        return self.teacher

    # ---------------------------------------------------------------------------------------- student
    def front_end(
        self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, padded: bool = False
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Waveform ``[B, S]`` (+ sample padding) -> features ``[B, T, D]``, frame padding ``[B, T]`` or None;
        ``padded``: the caller has read that ``padding_mask`` holds padding."""
        features = run_feature_extractor(self.feature_extractor, source, self.cfg.feature_grad_mult)
        features = self.layer_norm(features.transpose(1, 2))
        if self.post_extract_proj is not None:
            features = self.post_extract_proj(features)
        features = self.dropout_input(features)
        return features, frame_padding_mask(padding_mask, features.size(1), self.conv_layers, padded)

    def apply_mask(
        self,
        features: torch.Tensor,
        frame_padding: Optional[torch.Tensor],
        mask_prob: float,
        mask_channel_prob: float = 0.0,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Replaces a span mask of frames by the mask embedding (and zeroes channel spans); returns (x, mask)."""
        batch, length, dim = features.shape
        mask = None
        if mask_prob > 0:
            mask = span_mask(batch, length, mask_prob, self.cfg.mask_length, padding_mask=frame_padding,
                             device=features.device)
            features = torch.where(mask.unsqueeze(-1), self.mask_emb.to(features.dtype), features)
        if mask_channel_prob > 0:
            channels = span_mask(batch, dim, mask_channel_prob, self.cfg.mask_channel_length, device=features.device)
            features = features.masked_fill(channels.unsqueeze(1), 0.0)
        return features, mask

    def distillation_mask(
        self, shape: Tuple[int, int], teacher_padding: Optional[torch.Tensor], device: torch.device
    ) -> torch.Tensor:
        """Frame mask ``[B, T]`` shared by student and teacher, in ``model.mask_style``."""
        batch, length = shape
        if self.cfg.mask_style == "fairseq":
            return wav2vec2_span_mask(batch, length, self.cfg.mask_prob, self.cfg.mask_length, **RELEASED_MASK,
                                      padding_mask=teacher_padding, device=device)
        return span_mask(batch, length, self.cfg.mask_prob, self.cfg.mask_length, padding_mask=teacher_padding,
                         device=device)

    def forward(self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, **kwargs) -> Dict:
        """Distillation step: student predictions and teacher targets for every layer.

        Returns a dict with ``predictions``, ``targets`` (teacher on the clean input) and ``masked_targets``
        (teacher on the masked input, None when nothing is masked), each a list of ``[B, T, teacher width]``
        per layer, plus the frame ``mask`` (None in evaluation) and the frame ``padding_mask``.
        """
        if self.heads is None:
            raise RuntimeError("the projection heads were removed (remove_pretraining_modules): cannot distil")
        if self.encoder.layerdrop > 0:
            raise ValueError("model.encoder_layerdrop must be 0 for distillation: every layer has a target")
        teacher = self.load_teacher()
        if padding_mask is not None and not padding_mask.any():  # one host read instead of one per use
            padding_mask = None
        padded = padding_mask is not None
        features, frame_padding = self.front_end(source, padding_mask, padded)
        mask = teacher_padding = None
        if self.training and self.cfg.mask_prob > 0:
            # the mask is the teacher's, drawn over the frames its own padding rule leaves
            teacher_padding = teacher.frame_padding(padding_mask, features.size(1), padded)
            mask = self.distillation_mask(features.shape[:2], teacher_padding, features.device)
            features = torch.where(mask.unsqueeze(-1), self.mask_emb.to(features.dtype), features)
        targets, masked_targets = teacher.layer_outputs(source, padding_mask, mask, teacher_padding)
        if targets[0].shape[:2] != features.shape[:2]:
            raise ValueError(
                f"the student makes {features.size(1)} frames and the teacher {targets[0].size(1)}: "
                "model.conv_feature_layers must have the teacher's kernels and strides (total stride 320)"
            )
        layers = self.encoder(features, frame_padding)
        predictions = [head(hidden) for head, hidden in zip(self.heads, layers)]
        return {
            "predictions": predictions,
            "targets": targets,
            "masked_targets": masked_targets,
            "mask": mask,
            "padding_mask": frame_padding,
        }

    def extract_features(
        self,
        source: torch.Tensor,
        padding_mask: Optional[torch.Tensor] = None,
        mask: bool = False,
        layer: Optional[int] = None,
        **kwargs,
    ) -> Dict:
        """What fairseq's ``wav2vec_ctc`` calls: ``x`` is the last (or 0-based ``layer``-th) layer ``[B, T, D]``.

        ``mask=True`` applies the fine-tuning masks (``mask_prob``, ``mask_channel_prob``). ``layer_results``
        holds every layer's output batch-first ``[B, T, D]`` (fairseq's own models give ``T x B`` tuples).
        """
        features, frame_padding = self.front_end(source, padding_mask)
        if mask:
            features, _ = self.apply_mask(features, frame_padding, self.cfg.mask_prob, self.cfg.mask_channel_prob)
        layers = self.encoder(features, frame_padding, num_layers=None if layer is None else layer + 1)
        x = layers[-1] if layers else features  # layerdrop may, very rarely, drop every layer
        return {"x": x, "padding_mask": frame_padding, "layer_results": layers, "features": features}

    def hidden_states(
        self, source: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, projected: bool = True
    ) -> Tuple[List[torch.Tensor], Optional[torch.Tensor]]:
        """All layers, for a SUPERB-style learnt weighted sum: (list of ``[B, T, C]``, frame padding mask).

        ``projected=True`` gives the 12 head outputs (teacher width), which is what the released s3prl upstream
        returns and what the paper's SUPERB numbers used; ``projected=False`` gives the transformer input
        followed by every layer's output (student width D).
        """
        features, frame_padding = self.front_end(source, padding_mask)
        layers = self.encoder(features, frame_padding)
        if not projected:
            return [features] + layers, frame_padding
        if self.heads is None:
            raise RuntimeError("projected hidden states need the projection heads, which were removed")
        return [head(hidden) for head, hidden in zip(self.heads, layers)], frame_padding

    # -------------------------------------------------------------------------------- fairseq hooks
    def remove_pretraining_modules(self, **kwargs):
        """For fine-tuning: drop the heads, the teacher and the distillation-only gradient scaling."""
        self.heads = None
        self.teacher_path = None
        object.__setattr__(self, "teacher", None)
        self.encoder.layer_grad_scale = False

    def upgrade_state_dict_named(self, state_dict, name):
        """A pretraining checkpoint loads strictly into a model whose heads were removed (``wav2vec_ctc``)."""
        super().upgrade_state_dict_named(state_dict, name)
        if self.heads is None:
            prefix = f"{name}." if name else ""
            for key in [k for k in state_dict if k.startswith(f"{prefix}heads.")]:
                del state_dict[key]
        return state_dict


# ---- the released Lightning checkpoints (HF sungnyun/ARMHuBERT) <-> this model ----------------------------------
#
# The student's parameter names are the same on both sides except the heads: ``proj_head.<i>.lin_proj`` there,
# ``heads.<i>`` here; the Lightning state dict prefixes the student with ``student_model.``. The released
# ``reuse_pattern`` (True = the layer computes a map) is the negation of ``reuse_attention``.

RELEASED_STUDENT_PREFIX = "student_model."
# released layouts this model does not implement
RELEASED_UNSUPPORTED = {"layerwise_proj": True, "enable_tr_layer": False, "layer_norm_first": False,
                        "pos_conv_depth": 1, "layer_type": "transformer"}
RELEASED_COPIED = ("encoder_layers", "encoder_embed_dim", "encoder_ffn_embed_dim", "encoder_attention_heads",
                   "activation_fn", "conv_feature_layers", "extractor_mode", "conv_bias", "conv_pos",
                   "conv_pos_groups", "dropout", "attention_dropout", "activation_dropout", "dropout_input",
                   "feature_grad_mult", "layer_grad_scale")


def released_model_config(distiller: Dict, teacher: Dict) -> Dict:
    """``model`` section for ``armhubert`` from the released yaml's ``distiller`` and ``teacher`` sections."""
    for key, wanted in RELEASED_UNSUPPORTED.items():
        if key in distiller and distiller[key] != wanted:
            raise ValueError(f"distiller.{key}={distiller[key]!r}: only {wanted!r} is supported")
    pattern = distiller.get("reuse_pattern")  # absent in the MaskHuBERT config: every layer computes its map
    if not pattern:
        computes = [True] * distiller["encoder_layers"]
    else:
        computes = pattern if isinstance(pattern, list) else parse_config_list(pattern, "reuse_pattern (released yaml)")
    cfg = {key: distiller[key] for key in RELEASED_COPIED if key in distiller}
    cfg.update(
        _name="armhubert",
        teacher_path=None,
        teacher_embed_dim=distiller.get("pred_head_final_dim", 768),
        reuse_attention=str([not c for c in computes]),
        official_compat=True,
        mask_prob=teacher.get("mask_prob", 0.8),
        mask_length=teacher.get("mask_length", 10),
    )
    return cfg


def from_official(state: Dict, config: Optional[Dict] = None, path=None, **unused) -> Dict:
    """A released ARMHuBERT / ARMwavLM / MaskHuBERT Lightning checkpoint -> ours (``official_compat=true``).

    ``config`` is the parsed training yaml released with it (its ``distiller`` and ``teacher`` sections): the
    architecture is only there. The teacher's tensors are dropped.
    """
    from ..checkpoints import plugin_checkpoint

    if config is None or "distiller" not in config:
        raise ValueError(f"{path or 'armhubert'}: the architecture is in the released training yaml; pass it with "
                         "--config (conf/armhubert/armhubert-960.yaml, ...)")
    lightning = state.get("state_dict", state)
    student = {}
    for key, value in lightning.items():
        if key.startswith(RELEASED_STUDENT_PREFIX):
            key = re.sub(r"^proj_head\.(\d+)\.lin_proj\.", r"heads.\1.", key[len(RELEASED_STUDENT_PREFIX):])
            student[key] = value
    if not student:
        raise ValueError(f"{path or 'armhubert'}: no '{RELEASED_STUDENT_PREFIX}*' tensors in the checkpoint's state_dict")
    model_cfg = released_model_config(config["distiller"], config.get("teacher") or {})
    task_cfg = {"_name": "audio_pretraining", "data": "", "normalize": False, "sample_rate": 16000}
    return plugin_checkpoint(model_cfg, task_cfg, student, criterion="armhubert_distillation")


def to_official(state: Dict, path=None, **unused) -> Tuple[Dict, Dict[str, str]]:
    """Ours -> the released Lightning layout (``state_dict`` with ``student_model.`` and ``proj_head.<i>.lin_proj``),
    which the released s3prl expert loads strictly, and its training yaml (``distiller``: the architecture the
    expert reads), written beside it with the suffix ``.yaml``."""
    import yaml
    from omegaconf import DictConfig, OmegaConf

    cfg = state["cfg"]["model"]
    cfg = OmegaConf.to_container(cfg) if isinstance(cfg, DictConfig) else dict(cfg)
    if cfg.get("_name") != "armhubert":
        raise ValueError(f"{path}: model '{cfg.get('_name')}', expected armhubert")
    defaults = {f.name: f.default for f in dataclasses.fields(ArmHubertConfig)}
    value = lambda key: cfg.get(key, defaults[key])  # noqa: E731
    reuse = parse_config_list(value("reuse_attention"), "reuse_attention")
    distiller = {key: value(key) for key in RELEASED_COPIED}
    distiller.update(RELEASED_UNSUPPORTED)
    distiller.update(reuse_pattern=str([not r for r in reuse]), pred_head_final_dim=value("teacher_embed_dim"),
                     init_conv_layers=False, init_encoder_layers=0)
    teacher = {"mask_prob": value("mask_prob"), "mask_length": value("mask_length")}
    student = {}
    for key, tensor in state["model"].items():
        key = re.sub(r"^heads\.(\d+)\.", r"proj_head.\1.lin_proj.", key)
        student[RELEASED_STUDENT_PREFIX + key] = tensor
    lightning = {"state_dict": student, "epoch": 0, "global_step": 0}
    return lightning, {".yaml": yaml.safe_dump({"distiller": distiller, "teacher": teacher}, sort_keys=False)}
