"""EH-MAM: easy-to-hard masked acoustic modeling (Seth et al., EMNLP 2024), on the data2vec 2.0 backbone.

Per training step:

1. the CNN runs once; the EMA teacher contextualises the full, unmasked sequence, averages its
   instance-normalised top-K FFN outputs into targets, and its copy of the loss predictor scores every
   frame;
2. the student's mask keeps data2vec 2.0's budget (``mask_prob``, ``mask_length``) and places a share
   ``hard_fraction`` of the spans on the top-scored regions (``hard_selection``) (:func:`maskssl_fairseq.masking.easy_to_hard_mask`);
   ``hard_fraction`` ramps linearly with ``num_updates`` (easy to hard), so it resumes exactly;
3. the student encodes the unmasked frames, the regression decoder predicts the targets at the masked
   frames (data2vec 2.0 loss) and the student's loss predictor is trained with the pairwise ranking loss
   against the detached per-frame losses: total = regression + ``ranking_loss_weight`` * ranking.

Registered as ``data2vec_multi_eh_mam``: fairseq's ``wav2vec_ctc`` takes its data2vec 2.0 code path
(``embed_dim``, ``remove_pretraining_modules(modality=...)``, ``extract_features(mode=...)``,
``assert normalize``) only when the pretrained model's name *contains* ``data2vec_multi``.

With ``ranking_loss_weight: 0`` and a hard fraction that stays 0 no loss predictor is built and the
model is exactly data2vec 2.0 audio pretraining, the baseline of every comparison.
"""

import dataclasses
import logging
import re
from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
from omegaconf import II

from fairseq.dataclass import ChoiceEnum
from fairseq.models import register_model

from ..checkpoints import plugin_checkpoint
from ..masking import easy_to_hard_mask
from ..modules.data2vec2_audio import Data2Vec2AudioConfig, Data2Vec2AudioModel
from ..modules.ema_teacher import TeacherModel
from ..modules.loss_predictor import LossPredictor, pairwise_ranking_loss

logger = logging.getLogger(__name__)

HARD_FRACTION_SCHEDULES = ChoiceEnum(["linear", "constant"])
LOSS_PREDICTOR_INPUTS = ChoiceEnum(["targets", "final_layer"])
HARD_SELECTIONS = ChoiceEnum(["window", "start"])


@dataclass
class EhMamConfig(Data2Vec2AudioConfig):
    hard_fraction_start: float = field(default=0.0, metadata={"help": "share of spans placed on hard frames at update 0"})
    hard_fraction_end: float = field(default=0.7, metadata={"help": "share reached at the end of the ramp"})
    hard_fraction_ramp_updates: int = field(
        default=II("optimization.max_update"), metadata={"help": "updates over which the share ramps linearly"}
    )
    hard_fraction_schedule: HARD_FRACTION_SCHEDULES = field(
        default="linear", metadata={"help": "linear: start -> end over the ramp; constant: end from the first update"}
    )
    hard_selection: HARD_SELECTIONS = field(
        default="window",
        metadata={"help": "window: the hard spans are the best non-overlapping windows by mean score; start: "
                          "they start on the top-scored frames (official code)"},
    )
    ranking_loss_weight: float = field(default=0.05, metadata={"help": "alpha: weight of the ranking loss"})
    loss_predictor_input: LOSS_PREDICTOR_INPUTS = field(
        default="targets",
        metadata={"help": "what the teacher's predictor scores: the averaged targets (official code) or the "
                          "teacher's final layer"},
    )
    detach_loss_predictor_input: bool = field(
        default=False, metadata={"help": "stop the ranking loss's gradient at the student encoder"}
    )


@register_model("data2vec_multi_eh_mam", dataclass=EhMamConfig)
class EhMamModel(Data2Vec2AudioModel):
    cfg: EhMamConfig
    # model.init_from: a data2vec 2.0 checkpoint has no loss predictor; it then starts fresh
    init_fresh_modules = ("loss_predictor",)

    def __init__(self, cfg: EhMamConfig):
        super().__init__(cfg)
        if not 0 <= cfg.hard_fraction_start <= 1 or not 0 <= cfg.hard_fraction_end <= 1:
            raise ValueError("model.hard_fraction_start and model.hard_fraction_end must be in [0, 1]")
        if cfg.hard_fraction_schedule == "linear" and cfg.hard_fraction_ramp_updates <= 0:
            raise ValueError("model.hard_fraction_ramp_updates must be positive for the linear schedule")
        self.loss_predictor: Optional[LossPredictor] = None
        if cfg.ranking_loss_weight > 0 or max(cfg.hard_fraction_start, cfg.hard_fraction_end) > 0:
            self.loss_predictor = LossPredictor(cfg)
            self.teacher_modules = ("encoder", "loss_predictor")
        self.build_teacher()

    @classmethod
    def build_model(cls, cfg: EhMamConfig, task=None):
        return cls(cfg)

    def hard_fraction(self, num_updates: Optional[int] = None) -> float:
        """The share of spans on hard frames at ``num_updates`` (default: the current update)."""
        cfg = self.cfg
        if self.loss_predictor is None:
            return 0.0
        if cfg.hard_fraction_schedule == "constant":
            return cfg.hard_fraction_end
        step = self.num_updates if num_updates is None else num_updates
        progress = min(step / cfg.hard_fraction_ramp_updates, 1.0)
        return cfg.hard_fraction_start + (cfg.hard_fraction_end - cfg.hard_fraction_start) * progress

    def teacher_extras(self, teacher: TeacherModel, teacher_out: Dict[str, torch.Tensor]) -> None:
        if self.loss_predictor is None or self.hard_fraction() == 0:
            return
        inputs = teacher_out["targets"] if self.cfg.loss_predictor_input == "targets" else teacher_out["x"]
        teacher_out["scores"] = teacher.loss_predictor(inputs.to(next(teacher.parameters()).dtype))

    def draw_mask(self, teacher_out, padding_mask, batch, length, device):
        if "scores" not in teacher_out:
            return super().draw_mask(teacher_out, padding_mask, batch, length, device)
        # clones share the teacher's scores, so their hard spans coincide and their random spans differ
        scores = teacher_out["scores"].repeat_interleave(self.cfg.clone_batch, 0)
        return easy_to_hard_mask(scores, self.cfg.mask_prob, self.cfg.mask_length, self.hard_fraction(),
                                 hard_selection=self.cfg.hard_selection, adjust=self.cfg.mask_prob_adjust,
                                 padding_mask=padding_mask)

    def extra_losses(self, result, decoder_input, frame_loss, mask, masked, teacher_out) -> None:
        result["hard_fraction"] = self.hard_fraction()
        if self.loss_predictor is None:
            return
        weight = self.cfg.ranking_loss_weight
        inputs = decoder_input.detach() if self.cfg.detach_loss_predictor_input else decoder_input
        with torch.set_grad_enabled(torch.is_grad_enabled() and weight > 0):
            scores = self.loss_predictor(inputs)
            ranking, accuracy = pairwise_ranking_loss(scores.gather(1, masked), frame_loss.gather(1, masked))
        if weight > 0:
            # fairseq divides the summed losses by sample_size (the masked frames); scaling by it keeps
            # the optimised ranking term at exactly alpha * L_rank
            result["losses"]["ranking"] = ranking * (weight * result["sample_size"])
        result["ranking_loss"] = ranking.detach()
        result["ranking_accuracy"] = accuracy

    def remove_pretraining_modules(self, modality=None, keep_decoder=False):
        super().remove_pretraining_modules(modality=modality, keep_decoder=keep_decoder)
        self.loss_predictor = None


# ---- fairseq's data2vec 2.0 (data2vec_multi, audio) and the EH-MAM release <-> this model ------------------------
#
# The architectures are the same; the official module tree nests the audio pieces under
# ``modality_encoders.AUDIO`` and wraps some in Sequentials with TransposeLast layers, hence the renaming.

_AUDIO = "modality_encoders.AUDIO."
# (official prefix, our prefix); the positional convs also shift their index by one (TransposeLast first)
_PREFIXES = [
    (_AUDIO + "local_encoder.", "feature_extractor."),
    (_AUDIO + "project_features.1.", "project_features.0."),
    (_AUDIO + "project_features.2.", "project_features.1."),
    (_AUDIO + "context_encoder.blocks.", "encoder.prenet."),
    (_AUDIO + "context_encoder.norm.", "encoder.prenet_norm."),
    (_AUDIO + "decoder_pred.blocks.", "loss_predictor.blocks."),
    (_AUDIO + "decoder_pred.proj.0.", "loss_predictor.norm."),
    (_AUDIO + "decoder_pred.proj.1.", "loss_predictor.proj."),
    (_AUDIO + "decoder.", "decoder."),
    (_AUDIO + "alibi_scale", "encoder.alibi_scale"),
    ("blocks.", "encoder.blocks."),
]
_POS_OFFICIAL = re.compile(r"^modality_encoders\.AUDIO\.relative_positional_encoder\.(\d+)\.0\.(weight|bias)$")
_POS_OURS = re.compile(r"^encoder\.pos_conv\.(\d+)\.0\.(weight|bias)$")
_PREDICTOR_PROJ = "loss_predictor.proj."

# data2vec_multi's model fields that are ours under the same name, its audio modality's, its decoder's
_MODEL_FIELDS = ("embed_dim", "depth", "num_heads", "mlp_ratio", "norm_eps", "encoder_dropout", "post_mlp_drop",
                 "attention_dropout", "activation_dropout", "dropout_input", "layerdrop", "start_drop_path_rate",
                 "end_drop_path_rate", "average_top_k_layers", "instance_norm_target_layer", "loss_beta",
                 "loss_scale", "ema_decay", "ema_end_decay", "ema_anneal_end_step", "clone_batch",
                 "min_target_var", "min_pred_var")
_AUDIO_FIELDS = ("prenet_depth", "prenet_layerdrop", "prenet_dropout", "extractor_mode", "feature_encoder_spec",
                 "local_grad_mult", "conv_pos_width", "conv_pos_groups", "conv_pos_depth", "mask_prob",
                 "mask_length", "mask_prob_adjust", "mask_noise_std", "encoder_zero_mask", "use_alibi_encoder",
                 "learned_alibi_scale", "learned_alibi_scale_per_head", "learned_alibi_scale_per_layer",
                 "mask_channel_prob", "mask_channel_length")
_DECODER_FIELDS = {"decoder_dim": "decoder_dim", "decoder_groups": "decoder_groups",
                   "decoder_kernel": "decoder_kernel", "decoder_layers": "decoder_layers",
                   "input_dropout": "decoder_input_dropout"}
# official settings that change the network or its targets and that this model does not implement:
# (section, field, the supported value)
_FIXED = (("model", "layer_norm_first", False), ("model", "norm_affine", True),
          ("model", "end_of_block_targets", False), ("model", "layer_norm_target_layer", False),
          ("model", "batch_norm_target_layer", False), ("model", "instance_norm_targets", False),
          ("model", "layer_norm_targets", False), ("model", "shared_decoder", None), ("model", "recon_loss", 0),
          ("model", "cls_loss", 0), ("audio", "num_extra_tokens", 0), ("audio", "conv_pos_pre_ln", False),
          ("audio", "learned_alibi", False), ("audio", "ema_local_encoder", False), ("audio", "inverse_mask", False),
          ("decoder", "decoder_residual", True), ("decoder", "projection_layers", 1),
          ("decoder", "add_positions_masked", False), ("decoder", "add_positions_all", False))


def _rename(key: str, to_ours: bool) -> Optional[str]:
    match = (_POS_OFFICIAL if to_ours else _POS_OURS).match(key)
    if match:
        index = int(match[1]) + (-1 if to_ours else 1)
        return (f"encoder.pos_conv.{index}.0.{match[2]}" if to_ours
                else f"{_AUDIO}relative_positional_encoder.{index}.0.{match[2]}")
    for official, ours in _PREFIXES:
        source, target = (official, ours) if to_ours else (ours, official)
        if key.startswith(source):
            return target + key[len(source):]
    return None


def _weights_to_ours(weights: Dict[str, torch.Tensor], heads: int, where: str) -> Dict[str, torch.Tensor]:
    ours, unknown = {}, []
    for key, value in weights.items():
        name = _rename(key, to_ours=True)
        if name is None:
            unknown.append(key)
            continue
        if name == "encoder.alibi_scale":
            value = value.reshape(value.size(0), -1)  # (layers, 1, heads, 1, 1) -> (layers, heads)
        elif name.startswith(_PREDICTOR_PROJ):
            # the official predictor averages a Linear(decoder_dim -> embed_dim); the mean of a linear map is one
            # Linear(decoder_dim -> 1). Identical rows (our own export) are taken as they are, exactly.
            if bool((value == value[:1]).all()):
                value = value[:1].clone()
            else:
                value = value.mean(0, keepdim=True)
        ours[name] = value
    if unknown:
        raise ValueError(f"{where}: {len(unknown)} tensors this model has no place for, e.g. {unknown[:4]}")
    return ours


def _weights_to_official(weights: Dict[str, torch.Tensor], embed_dim: int) -> Dict[str, torch.Tensor]:
    official = {}
    for key, value in weights.items():
        name = _rename(key, to_ours=False)
        if name is None:
            continue  # training bookkeeping (teacher_updates)
        if key == "encoder.alibi_scale":
            value = value.reshape(value.size(0), 1, value.size(1), 1, 1)
        elif key.startswith(_PREDICTOR_PROJ):
            value = value.expand(embed_dim, *value.shape[1:]).clone()
        official[name] = value
    return official


def _official_cfg_to_ours(model: dict, name: str) -> dict:
    audio = (model.get("modalities") or {}).get("audio") or {}
    decoder = audio.get("decoder") or {}
    sections = {"model": model, "audio": audio, "decoder": decoder}
    for section, key, supported in _FIXED:
        value = sections[section].get(key, supported)
        if value != supported and not (supported is None and not value):
            where = "model." + ("" if section == "model" else "modalities.audio." if section == "audio"
                                else "modalities.audio.decoder.") + key
            raise ValueError(f"{name}: {where}={value!r}; this model implements only {supported!r}")
    for key in ("start_drop_path_rate", "end_drop_path_rate"):
        if audio.get(key, model.get(key, 0)) != model.get(key, 0):
            raise ValueError(f"{name}: model.modalities.audio.{key} differs from model.{key}; this model uses one "
                             "drop-path schedule for the prenet and the main blocks")
    cfg = {key: model[key] for key in _MODEL_FIELDS if key in model}
    cfg.update({key: audio[key] for key in _AUDIO_FIELDS if key in audio})
    cfg.update({ours: decoder[key] for key, ours in _DECODER_FIELDS.items() if key in decoder})
    cfg["_name"] = "data2vec_multi_eh_mam"
    cfg["hard_fraction_ramp_updates"] = int(model.get("max_update") or 1)
    return cfg


def _known_fields(values: dict, config_class) -> dict:
    """``values`` without the keys ``config_class`` lacks (a release made by another fairseq version)."""
    known = {f.name for f in dataclasses.fields(config_class)}
    return {key: value for key, value in values.items() if key in known}


def _task_cfg(task: dict) -> dict:
    from fairseq.tasks.audio_pretraining import AudioPretrainingConfig

    cfg = _known_fields(task, AudioPretrainingConfig)
    cfg.update(_name="audio_pretraining", data="")
    return cfg


def _container(cfg) -> dict:
    from omegaconf import DictConfig, OmegaConf

    return OmegaConf.to_container(cfg) if isinstance(cfg, DictConfig) else cfg


_CTC_INNER = "w2v_encoder.w2v_model."


def _from_official_ctc(state: dict, name: str) -> dict:
    """fairseq's ``wav2vec_ctc`` fine-tune of data2vec 2.0 (``*_960h.pt``): the inner model converted, the CTC head
    kept; the result is a ``wav2vec_ctc`` checkpoint of ours (decode it with ``run/decode.py``)."""
    from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig
    from fairseq.tasks.audio_finetuning import AudioFinetuningConfig

    cfg = _container(state["cfg"])
    inner_cfg = _container(cfg["model"].get("w2v_args"))
    if not inner_cfg or (inner_cfg.get("model") or {}).get("_name") != "data2vec_multi":
        raise ValueError(f"{name}: a wav2vec_ctc fine-tune, but not of data2vec_multi (w2v_args.model._name)")
    weights = state["model"]
    inner = {key[len(_CTC_INNER):]: value for key, value in weights.items() if key.startswith(_CTC_INNER)}
    converted = _from_official({"cfg": inner_cfg, "model": inner}, name, with_predictor=False, fine_tuned=True)
    ctc = _known_fields(cfg["model"], Wav2Vec2CtcConfig)
    ctc.update(_name="wav2vec_ctc", w2v_args=converted["cfg"])
    task = _known_fields(cfg.get("task") or {}, AudioFinetuningConfig)
    task.update(_name="audio_finetuning")
    model = {key: value for key, value in weights.items() if not key.startswith(_CTC_INNER)}
    model.update({_CTC_INNER + key: value for key, value in converted["model"].items()})
    return plugin_checkpoint(ctc, task, model, criterion="ctc")


def _from_official(state: dict, name: str, with_predictor: bool, fine_tuned: bool = False) -> dict:
    cfg = state.get("cfg")
    if cfg is None:
        raise ValueError(f"{name}: no 'cfg' in the checkpoint; a fairseq data2vec 2.0 checkpoint keeps its config there")
    cfg = _container(cfg)
    model_cfg = cfg["model"]
    if model_cfg.get("_name") == "wav2vec_ctc" and not with_predictor and not fine_tuned:
        return _from_official_ctc(state, name)
    if model_cfg.get("_name") != "data2vec_multi":
        raise ValueError(f"{name}: model '{model_cfg.get('_name')}', expected data2vec_multi (audio)")
    weights = dict(state["model"])
    teacher = weights.pop("_ema", None)
    has_predictor = any(k.startswith(_AUDIO + "decoder_pred.") for k in weights)
    if has_predictor != with_predictor:
        raise ValueError(f"{name}: " + ("an EH-MAM checkpoint (it has the loss predictor decoder_pred): use --from eh_mam"
                                        if has_predictor else
                                        "no loss predictor (decoder_pred): a data2vec 2.0 checkpoint, use --from data2vec2"))
    ours_cfg = _official_cfg_to_ours(model_cfg, name)
    if with_predictor:
        ours_cfg.update(ranking_loss_weight=EhMamConfig.ranking_loss_weight, hard_fraction_start=0.0,
                        hard_fraction_end=EhMamConfig.hard_fraction_end)
    else:
        ours_cfg.update(ranking_loss_weight=0.0, hard_fraction_start=0.0, hard_fraction_end=0.0)
    student = _weights_to_ours(weights, ours_cfg.get("num_heads", 12), f"{name} (model)")
    student["teacher_updates"] = torch.zeros((), dtype=torch.long)
    if fine_tuned:
        pass  # fine-tuning dropped the teacher
    elif teacher is not None:
        if not any(k.startswith(_AUDIO) for k in teacher):
            # ema_encoder_only: the teacher follows the main blocks only and shares the rest with the student
            teacher = {"blocks." + key: value for key, value in teacher.items()}
            teacher.update({key: value for key, value in weights.items()
                            if key.startswith((_AUDIO + "relative_positional_encoder.", _AUDIO + "context_encoder.",
                                               _AUDIO + "alibi_scale"))})
        student["_ema"] = {k: v.float() for k, v in
                           _weights_to_ours(teacher, ours_cfg.get("num_heads", 12), f"{name} (_ema)").items()}
    else:
        logger.warning(f"{name}: no EMA teacher (_ema) in the checkpoint; the teacher starts as the student")
        student["_ema"] = {k: v.float().clone() for k, v in student.items() if k.startswith(("encoder.", "loss_predictor."))}
    return plugin_checkpoint(ours_cfg, _task_cfg(cfg.get("task") or {}), student)


def from_official_data2vec2(state: dict, path=None, **unused) -> dict:
    """fairseq's data2vec 2.0 audio checkpoint (``base_libri.pt``, ``large_vox.pt``: ``data2vec_multi``, its EMA
    teacher under ``_ema``) -> ours: ``data2vec_multi_eh_mam`` with EH-MAM off (plain data2vec 2.0). A CTC
    fine-tune (``*_960h.pt``, ``wav2vec_ctc``) becomes a ``wav2vec_ctc`` checkpoint around ours."""
    return _from_official(state, str(path or "data2vec2"), with_predictor=False)


def from_official_eh_mam(state: dict, path=None, **unused) -> dict:
    """The EH-MAM release (fairseq's ``data2vec_multi`` with the loss predictor ``decoder_pred``) -> ours, with
    the paper's EH-MAM settings (ranking_loss_weight 0.05, hard fraction 0 -> 0.7)."""
    return _from_official(state, str(path or "eh_mam"), with_predictor=True)


def to_official(state: dict, path=None, **unused) -> dict:
    """Ours (``data2vec_multi_eh_mam``) -> fairseq's ``data2vec_multi`` layout (with EH-MAM's ``decoder_pred`` and
    ``learning_loss`` when the model has a loss predictor), for fairseq's ``examples/data2vec`` and EH-MAM's code."""
    cfg = _container(state["cfg"])
    ours = cfg["model"]
    if ours.get("_name") != "data2vec_multi_eh_mam":
        raise ValueError(f"{path}: model '{ours.get('_name')}', expected data2vec_multi_eh_mam")
    defaults = {f.name: f.default for f in dataclasses.fields(EhMamConfig)}
    value = lambda key: ours.get(key, defaults[key])  # noqa: E731
    model = {key: value(key) for key in _MODEL_FIELDS}
    audio = {key: value(key) for key in _AUDIO_FIELDS}
    audio["decoder"] = {key: value(ours_key) for key, ours_key in _DECODER_FIELDS.items()}
    for section, key, supported in _FIXED:
        target = {"model": model, "audio": audio, "decoder": audio["decoder"]}[section]
        target[key] = supported
    # values the official config interpolates from other sections (common.seed, model.*) are written out, so that
    # the exported model section builds on its own
    audio.update(type="AUDIO", start_drop_path_rate=model["start_drop_path_rate"],
                 end_drop_path_rate=model["end_drop_path_rate"], num_alibi_heads=model["num_heads"],
                 model_depth=model["depth"])
    model.update(_name="data2vec_multi", supported_modality="AUDIO", ema_encoder_only=False, seed=1,
                 max_update=value("hard_fraction_ramp_updates"), modalities={"audio": audio})
    weights = dict(state["model"])
    teacher = weights.pop("_ema", None)
    has_predictor = any(k.startswith("loss_predictor.") for k in weights)
    if has_predictor:
        model["learning_loss"] = 1
    official = _weights_to_official(weights, model["embed_dim"])
    if teacher is not None:
        official["_ema"] = _weights_to_official(teacher, model["embed_dim"])
    task = dict(cfg.get("task") or {})
    task.update(_name="audio_pretraining")
    return {"args": None, "cfg": {"model": model, "task": task}, "model": official,
            "optimizer_history": [{"criterion_name": "ModelCriterion", "optimizer_name": "exported",
                                   "lr_scheduler_state": {"best": None}, "num_updates": 0}],
            "extra_state": {"train_iterator": {"epoch": 1}}, "last_optimizer_state": None}
