"""Loading fairseq checkpoints with torch >= 2.6, whose ``torch.load`` defaults to ``weights_only=True``.

A fine-tuned checkpoint holds the task's fairseq ``Dictionary``; allow-listing that class keeps the safe
loader (no arbitrary pickles) while letting fairseq resume training, validate and decode. Importing the
plugin (``common.user_dir``) is enough.
"""

from pathlib import Path
from typing import Tuple

import torch
from fairseq.data import Dictionary

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
