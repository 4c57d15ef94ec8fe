"""Loading fairseq checkpoints with torch >= 2.6, whose ``torch.load`` defaults to ``weights_only=True``.

A fine-tuned checkpoint holds the task's fairseq ``Dictionary``; allow-listing that class keeps the safe
loader (no arbitrary pickles) while letting fairseq resume training, validate and decode. Importing the
plugin (``common.user_dir``) is enough. Importing it also makes fairseq's checkpoint copies atomic
(:func:`atomic_copy`) and has an unreadable checkpoint (``model.w2v_path``, ``checkpoint.restore_file``, ...)
named in the error (:func:`load_checkpoint_to_cpu`).
"""

import os
import pickle
import shutil
from pathlib import Path
from typing import Tuple

import torch
from fairseq import checkpoint_utils
from fairseq.data import Dictionary
from fairseq.file_io import PathManager

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
    """fairseq's checkpoint loader; a truncated or non-torch file is an error that names it."""
    try:
        return _fairseq_load_checkpoint_to_cpu(path, arg_overrides, load_on_all_ranks)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if isinstance(error, RuntimeError) and "PytorchStreamReader" not in reason:
            raise
        raise RuntimeError(f"{path}: not a readable checkpoint (truncated, or not saved by torch): {reason}") from error


checkpoint_utils.load_checkpoint_to_cpu = load_checkpoint_to_cpu
