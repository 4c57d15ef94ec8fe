"""A non-finite loss stops the run at the update that produced it, naming every loss term.

Without this fairseq trains on until the gradient norm turns NaN and then stops with "gradients are Nan/Inf",
which says neither which update nor which term went wrong. Under fp16 / AMP the loss scaler handles
overflows itself (it skips the update and lowers the scale), so those runs are left to it; bf16 has no
scaler and is checked.

Installed when the plugin is imported (``common.user_dir``), for every task.
"""

import math

import torch
from fairseq.optim.amp_optimizer import AMPOptimizer
from fairseq.tasks import FairseqTask

_train_step = FairseqTask.train_step


def loss_terms(loss: torch.Tensor, logging_output: dict) -> dict:
    """The total loss and every logged ``loss*`` term as floats."""
    terms = {"loss": float(loss.detach().float().sum())}
    for key, value in logging_output.items():
        if key.startswith("loss") and key != "loss":
            terms[key] = float(value.detach().float().sum()) if torch.is_tensor(value) else float(value)
    return terms


def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False, **kwargs):
    loss, sample_size, logging_output = _train_step(self, sample, model, criterion, optimizer, update_num,
                                                    ignore_grad, **kwargs)
    scaled = isinstance(optimizer, AMPOptimizer) or getattr(optimizer, "scaler", None) is not None  # fp16
    if not ignore_grad and not scaled:
        terms = loss_terms(loss, logging_output)
        if not all(math.isfinite(value) for value in terms.values()):
            listed = ", ".join(f"{key}={value:.4g}" for key, value in terms.items())
            raise FloatingPointError(f"update {update_num + 1}: the loss is not finite ({listed}); check the "
                                     "input audio for NaN/Inf, or lower optimization.lr")
    return loss, sample_size, logging_output


FairseqTask.train_step = train_step
