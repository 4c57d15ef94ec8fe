"""Loading fairseq checkpoints with torch >= 2.6, whose ``torch.load`` defaults to ``weights_only=True``.

A fine-tuned checkpoint holds the task's fairseq ``Dictionary``; allow-listing that class keeps the safe
loader (no arbitrary pickles) while letting fairseq resume training, validate and decode. Importing the
plugin (``common.user_dir``) is enough. Importing it also makes fairseq's checkpoint copies atomic
(:func:`atomic_copy`) and has an unreadable checkpoint (``model.w2v_path``, ``checkpoint.restore_file``, ...)
named in the error (:func:`load_checkpoint_to_cpu`), as well as a release in its official layout, with the
``run/convert_checkpoint.py`` command that converts it (:func:`released_format`).

Continued pretraining: a model whose config has ``init_from`` starts from that checkpoint's weights when
training does not resume (:func:`trainer_load_checkpoint`, :func:`load_init_weights`).
"""

import logging
import os
import pickle
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from fairseq import checkpoint_utils
from fairseq.data import Dictionary
from fairseq.file_io import PathManager
from fairseq.trainer import Trainer

from .checkpoint_safety import partial_file

torch.serialization.add_safe_globals([Dictionary])


def load_finetuned(checkpoint: Path, data_dir: Path, device: str) -> Tuple[torch.nn.Module, Dictionary, bool, int]:
    """A CTC fine-tuned model in eval mode with its letter dictionary, ``task.normalize`` and sample rate.

    ``data_dir`` replaces the training run's ``task.data`` so the dictionary is read from the decoded
    manifest's folder; the pretrained checkpoint (``w2v_path``) is not needed, its config is stored.
    """
    from fairseq import checkpoint_utils

    models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(checkpoint)], arg_overrides={"data": str(data_dir)}
    )
    model = models[0].eval().to(device)
    return model, task.target_dictionary, bool(cfg.task.normalize), int(cfg.task.sample_rate)


_fairseq_copy = PathManager.copy


def atomic_copy(src_path: str, dst_path: str, overwrite: bool = False) -> bool:
    """``PathManager.copy`` through a temporary file and a rename, for local paths.

    fairseq writes the first checkpoint of a save atomically (``torch_persistent_save``) and copies it to the
    other names, ``checkpoint_last.pt`` among them, with a plain ``shutil.copyfile``: a process killed during
    that copy would leave a truncated ``checkpoint_last.pt``, from which the next run cannot resume.
    """
    if not PathManager.supports_rename(dst_path):
        return _fairseq_copy(src_path, dst_path, overwrite=overwrite)
    if not overwrite and os.path.exists(dst_path):
        return False
    with partial_file(dst_path) as partial:  # this process's own temporary name, removed if the copy fails
        with open(src_path, "rb") as source, open(partial, "wb") as target:
            shutil.copyfileobj(source, target, length=16 << 20)
            target.flush()
            os.fsync(target.fileno())
    return True


PathManager.copy = staticmethod(atomic_copy)


_fairseq_load_checkpoint_to_cpu = checkpoint_utils.load_checkpoint_to_cpu


def load_checkpoint_to_cpu(path, arg_overrides=None, load_on_all_ranks=False):
    """fairseq's checkpoint loader; a truncated or non-torch file is an error that names it, and so is a release
    in its official layout (data2vec 2.0, EH-MAM, EAT, M2D, ARMHuBERT), with the command that converts it, where
    fairseq would fail with ``KeyError: "'_name'"``, ``KeyError: 'best_loss'`` or "Could not infer task type"."""
    try:
        state = _fairseq_load_checkpoint_to_cpu(path, arg_overrides, load_on_all_ranks)
    except (RuntimeError, EOFError, pickle.UnpicklingError, KeyError, ImportError, AttributeError) as error:
        # a release whose metadata fairseq's upgrade expects in vain (KeyError), whose pickle names classes that
        # are not here (ImportError) or that torch's weights-only loader refuses -- or a file that is no checkpoint
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        weights_only = "Weights only" in reason
        unreadable = isinstance(error, EOFError) or "PytorchStreamReader" in reason or (
            isinstance(error, pickle.UnpicklingError) and not weights_only)
        if isinstance(error, RuntimeError) and not (unreadable or weights_only):
            raise
        try:
            name = released_format_of_strings(pickled_strings(path))
        except Exception as parse_error:  # noqa: BLE001  (whatever a file that is no pickle makes the parser raise)
            if not unreadable:  # torch's reason was about the content; the parser's says why there is none
                reason = str(parse_error).strip() or type(parse_error).__name__
            name, unreadable = None, True
        if name is not None:
            raise unconverted_release_error(path, name) from error
        if unreadable:
            raise RuntimeError(f"{path}: not a readable checkpoint (truncated, or not saved by torch): {reason}") from error
        raise
    name = released_format(state)
    if name is not None:
        raise unconverted_release_error(path, name)
    return state


checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu


# ---- released checkpoints of the official implementations ------------------------------------------------------

CONVERT_COMMAND = "python run/convert_checkpoint.py --from {name} {path} <converted.pt>"


class _UnknownGlobal(dict):
    """Stands in for a class that a released pickle names but this environment lacks (PyTorch Lightning's
    ``AttributeDict``, argparse-like configs of other code bases): its state is kept, never executed. A dict, so
    that pickled dict subclasses fill it too."""

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.args, self.kwargs = args, kwargs

    def __setstate__(self, state):
        self.state = state


class _TolerantUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_UnknownGlobal,), {"__module__": f"unavailable.{module}"})


class _TolerantPickle:
    """A ``pickle_module`` for ``torch.load`` whose unpickler replaces unimportable classes by placeholders."""

    Unpickler = _TolerantUnpickler
    load = pickle.load
    __name__ = "pickle"


def load_release(path) -> dict:
    """A released checkpoint file as a dict of plain containers and tensors, on CPU, for ``run/convert_checkpoint.py``.

    Release files pickle more than tensors (fairseq's meters, Lightning's hyper-parameters, argparse
    namespaces), so torch's ``weights_only`` loader refuses them: the file is unpickled in full, which runs
    whatever it names, so convert only files you trust (the loaders of the tools never call this; they identify
    a release from its pickled strings, :func:`pickled_strings`). Classes of packages that are not installed here
    load as inert placeholders.
    """
    state = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_TolerantPickle)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a checkpoint dict")
    return state


def _cfg_section(state: dict, name: str) -> dict:
    cfg = state.get("cfg") or {}
    section = cfg.get(name) if hasattr(cfg, "get") else None
    return section if section is not None else {}


def released_format(state: dict) -> Optional[str]:
    """The ``run/convert_checkpoint.py --from`` name of a release layout that this plugin does not load as it is,
    or None for anything else (our own checkpoints, fairseq's wav2vec 2.0 / HuBERT)."""
    from fairseq.models import MODEL_REGISTRY

    model_cfg = _cfg_section(state, "model")
    name = model_cfg.get("_name") if hasattr(model_cfg, "get") else None
    if name == "wav2vec_ctc" and model_cfg.get("w2v_args"):
        inner = model_cfg["w2v_args"].get("model") or {}
        if inner.get("_name") == "data2vec_multi" and "data2vec_multi" not in MODEL_REGISTRY:
            return "data2vec2"  # a CTC fine-tune, which the data2vec2 importer converts too
    if name == "data2vec_multi" and name not in MODEL_REGISTRY:
        weights = state.get("model") or {}
        if str(model_cfg.get("supported_modality", "")).upper().endswith("IMAGE") or any(
                k.startswith("modality_encoders.IMAGE.") for k in weights):
            return "eat"
        return "eh_mam" if any(".decoder_pred." in k for k in weights) or "learning_loss" in model_cfg else "data2vec2"
    if name == "mae_image_classification" and name not in MODEL_REGISTRY:
        return "eat_finetuned"
    if "cfg" in state or "args" in state:
        return None
    lightning = state.get("state_dict")
    if isinstance(lightning, dict) and any(k.startswith("student_model.") for k in lightning):
        return "armhubert"
    weights = state.get("model", state)
    if isinstance(weights, dict) and "patch_embed.proj.weight" in weights:
        if any(k.startswith("audio_proj.") for k in weights):
            return "m2d_clap"
        return "m2d"
    return None


def pickled_strings(path) -> set:
    """Every string constant of a torch file's pickle, read without unpickling it (no code of the file runs)."""
    import pickletools
    import zipfile

    def strings(stream) -> set:
        found = set()
        for opcode, argument, _ in pickletools.genops(stream):
            if isinstance(argument, str) and "UNICODE" in opcode.name:
                found.add(argument)
        return found

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            member = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            with archive.open(member) as stream:
                return strings(stream)
    found = set()
    with open(path, "rb") as stream:  # torch's legacy format: magic number, protocol, system info, then the object
        for _ in range(4):
            found |= strings(stream)
    return found


def released_format_of_strings(strings: set) -> Optional[str]:
    """:func:`released_format` for a file that fairseq's (weights-only) loader refused, from its pickled strings:
    the same layouts, recognised by their model names and key prefixes."""
    from fairseq.models import MODEL_REGISTRY

    if "mae_image_classification" in strings and "mae_image_classification" not in MODEL_REGISTRY:
        return "eat_finetuned"
    if "data2vec_multi" in strings and "data2vec_multi" not in MODEL_REGISTRY:
        if "IMAGE" in strings or any(s.startswith("modality_encoders.IMAGE.") for s in strings):
            return "eat"
        if "wav2vec_ctc" not in strings and any(".decoder_pred." in s for s in strings):
            return "eh_mam"
        return "data2vec2"
    if any(s.startswith("student_model.") for s in strings):
        return "armhubert"
    if "patch_embed.proj.weight" in strings:
        return "m2d_clap" if any(s.startswith("audio_proj.") for s in strings) else "m2d"
    return None


def unconverted_release_error(path, name: str) -> ValueError:
    hint = {"m2d": " (--from msm_mae for an MSM-MAE file)"}.get(name, "")
    return ValueError(
        f"{path}: a released '{name}' checkpoint in its official layout, which fairseq cannot build here; convert it "
        f"once with `{CONVERT_COMMAND.format(name=name, path=path)}`{hint} and use the converted file "
        f"(model.w2v_path, model.pretrained_path, model.init_from, run/extract_features.py, ...)")


def plugin_checkpoint(model_cfg: dict, task_cfg: dict, model_state: Dict[str, torch.Tensor],
                      criterion: str = "model") -> dict:
    """A fairseq checkpoint of this plugin's layout from converted weights: what every tool loads
    (``load_model``, ``model.w2v_path``, ``model.pretrained_path``, ``model.init_from``), at update 0 with no
    optimiser state."""
    return {
        "args": None,
        "cfg": {"model": model_cfg, "task": task_cfg},
        "model": model_state,
        "optimizer_history": [{"criterion_name": criterion, "optimizer_name": "converted",
                               "lr_scheduler_state": {"best": None}, "num_updates": 0}],
        "extra_state": {"train_iterator": {"epoch": 1}},
        "last_optimizer_state": None,
    }


# ---- continued pretraining: model.init_from ---------------------------------------------------------------------

logger = logging.getLogger(__name__)


def load_init_weights(model: torch.nn.Module, path, fresh: Sequence[str] = ()) -> Dict[str, List[str]]:
    """Initialises a freshly built pretraining model from a checkpoint of this plugin (``model.init_from``).

    Contract:

    - ``path`` is a checkpoint in this plugin's layout (a training checkpoint, or ``run/convert_checkpoint.py``'s
      output); a release in its official layout is refused with the command that converts it.
    - Every entry of ``model.state_dict()`` is taken from the checkpoint, with its shape checked, except entries
      under the prefixes ``fresh`` (and the model's ``init_fresh_modules`` attribute), which the checkpoint may
      lack and which then keep their fresh initialisation (EH-MAM's ``loss_predictor`` from a data2vec 2.0
      checkpoint), and bookkeeping buffers named in the model's ``training_state_keys`` (the EMA teacher's update
      count), which stay as built. Checkpoint entries the model lacks are ignored and reported.
    - The EMA teacher kept under ``_ema`` (:class:`~maskssl_fairseq.modules.ema_teacher.EMATeacherMixin`) is
      taken from the checkpoint's ``_ema``; a teacher entry that the checkpoint lacks is copied from the student
      entry of the same name as just loaded or initialised (a fresh module; or a checkpoint without a
      teacher, whose teacher then starts as its student). A teacher kept inside the state dict (M2D's target
      encoder) is covered by the first rule.
    - Only weights change: the optimiser, learning-rate schedule, update count and data order start afresh.

    Returns ``{"loaded": [...], "fresh": [...], "ignored": [...], "teacher_from_student": [...]}`` (state-dict keys).
    """
    from omegaconf import OmegaConf

    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model.init_from: no checkpoint at {path}")
    state = load_checkpoint_to_cpu(path)
    source = dict(state["model"])
    fresh = tuple(fresh) + tuple(getattr(model, "init_fresh_modules", ()))
    keep = set(getattr(model, "training_state_keys", ()))
    own = model.state_dict()
    own_teacher = own.pop("_ema", None)
    source_teacher = source.pop("_ema", None)

    merged, report = {}, {"loaded": [], "fresh": [], "ignored": [], "teacher_from_student": []}
    missing = []
    for key, value in own.items():
        if key in keep:
            merged[key] = value
        elif key in source:
            if source[key].shape != value.shape:
                raise ValueError(f"model.init_from ({path}): {key} has shape {tuple(source[key].shape)} there and "
                                 f"{tuple(value.shape)} in this model: the architectures differ")
            merged[key] = source[key]
            report["loaded"].append(key)
        elif key.startswith(fresh):
            merged[key] = value
            report["fresh"].append(key)
        else:
            missing.append(key)
    if missing:
        saved = OmegaConf.to_container(state["cfg"]["model"]) if state.get("cfg") else {}
        raise ValueError(f"model.init_from ({path}): the checkpoint (model {saved.get('_name')}) lacks "
                         f"{len(missing)} weights of this model, e.g. {missing[:3]}: the architectures differ")
    report["ignored"] = sorted(set(source) - set(own))
    if own_teacher is not None:
        teacher = {}
        for key, value in own_teacher.items():
            if source_teacher is not None and key in source_teacher:
                teacher[key] = source_teacher[key]
            else:
                teacher[key] = merged[key].float()
                report["teacher_from_student"].append(key)
        merged["_ema"] = teacher
    model.load_state_dict(merged, strict=True)
    logger.info(f"model.init_from: {len(report['loaded'])} weights from {path}; fresh: "
                f"{sorted({k.split('.')[0] for k in report['fresh']}) or 'none'}; ignored: {report['ignored'] or 'none'}; "
                f"teacher entries copied from the student: {len(report['teacher_from_student'])}")
    return report


# the plugin may be imported twice (user_dir under another module name): wrap fairseq's own method once
_fairseq_trainer_load_checkpoint = getattr(Trainer.load_checkpoint, "fairseq_original", Trainer.load_checkpoint)


def trainer_load_checkpoint(self, filename, *args, **kwargs):
    """fairseq's ``Trainer.load_checkpoint``, then ``model.init_from`` applied when nothing was restored.

    fairseq calls it at the start of training with ``checkpoint_last.pt`` (or ``checkpoint.restore_file`` /
    ``finetune_from_model``); it returns no state exactly when no such file exists, so a resumed run never
    re-initialises, and the weights are in place before the optimiser's fp32 copies are built. Every rank reads
    the file itself.
    """
    extra_state = _fairseq_trainer_load_checkpoint(self, filename, *args, **kwargs)
    model = self.get_model()
    init_from = getattr(getattr(model, "cfg", None), "init_from", None)
    if init_from:
        if extra_state is None and self.get_num_updates() == 0:
            load_init_weights(model, init_from)
        else:
            logger.info(f"model.init_from={init_from} not used: training resumes from {filename}")
    return extra_state


trainer_load_checkpoint.fairseq_original = _fairseq_trainer_load_checkpoint
Trainer.load_checkpoint = trainer_load_checkpoint
