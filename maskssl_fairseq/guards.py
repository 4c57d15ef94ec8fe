"""A non-finite loss stops the run at the update that produced it, naming every loss term.

Without this fairseq trains on until the gradient norm turns NaN and then stops with "gradients are Nan/Inf",
which says neither which update nor which term went wrong. Under fp16 / AMP the loss scaler handles
overflows itself (it skips the update and lowers the scale), so those runs are left to it; bf16 has no
scaler and is checked.

The check costs no host sync of its own: loss terms fairseq already logged as floats are checked at once;
the rest (the total loss, tensor terms) become one device flag per micro-batch, folded into the gradient
norm that fairseq's trainer reads anyway (``torch.isfinite(grad_norm)`` before the optimizer step). A
non-finite loss thus fails that check at the same update, and the ``FloatingPointError`` fairseq raises is
replaced by one naming the update and the terms (read from the device then, on the error path only).

Installed when the plugin is imported (``common.user_dir``), for every task.
"""

import math
from dataclasses import dataclass
from typing import List

import torch
from fairseq.optim.amp_optimizer import AMPOptimizer
from fairseq.tasks import FairseqTask
from fairseq.trainer import Trainer

_train_step = FairseqTask.train_step
_trainer_train_step = Trainer.train_step
_clip_grad_norm = Trainer.clip_grad_norm
PENDING = "_maskssl_loss_checks"  # the task's unchecked micro-batches of the current update


@dataclass
class LossCheck:
    update_num: int
    loss: torch.Tensor
    logging_output: dict
    finite: torch.Tensor  # 0-dim bool on the loss's device


def loss_terms(loss: torch.Tensor, logging_output: dict) -> dict:
    """The total loss and every logged ``loss*`` term as floats."""
    terms = {"loss": float(loss.detach().float().sum())}
    for key, value in logging_output.items():
        if key.startswith("loss") and key != "loss":
            terms[key] = float(value.detach().float().sum()) if torch.is_tensor(value) else float(value)
    return terms


def not_finite_error(update_num: int, terms: dict) -> FloatingPointError:
    listed = ", ".join(f"{key}={value:.4g}" for key, value in terms.items())
    return FloatingPointError(f"update {update_num + 1}: the loss is not finite ({listed}); check the "
                              "input audio for NaN/Inf, or lower optimization.lr")


def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False, **kwargs):
    loss, sample_size, logging_output = _train_step(self, sample, model, criterion, optimizer, update_num,
                                                    ignore_grad, **kwargs)
    scaled = isinstance(optimizer, AMPOptimizer) or getattr(optimizer, "scaler", None) is not None  # fp16
    if not ignore_grad and not scaled:
        logged = [v for k, v in logging_output.items() if k.startswith("loss") and k != "loss" and not torch.is_tensor(v)]
        if not all(math.isfinite(float(v)) for v in logged):
            raise not_finite_error(update_num, loss_terms(loss, logging_output))
        tensors = [loss.detach()] + [v.detach() for k, v in logging_output.items()
                                     if k.startswith("loss") and k != "loss" and torch.is_tensor(v)]
        finite = torch.stack([torch.isfinite(t.float()).all() for t in tensors]).all()
        checks: List[LossCheck] = [c for c in getattr(self, PENDING, []) if c.update_num == update_num]
        setattr(self, PENDING, checks + [LossCheck(update_num, loss.detach(), logging_output, finite)])
    return loss, sample_size, logging_output


def clip_grad_norm(self, clip_norm):
    """fairseq's gradient norm, NaN where a loss of this update was not finite."""
    grad_norm = _clip_grad_norm(self, clip_norm)
    checks = getattr(self.task, PENDING, [])
    if checks and torch.is_tensor(grad_norm):
        finite = torch.stack([c.finite.to(grad_norm.device) for c in checks]).all()
        grad_norm = torch.where(finite, grad_norm, torch.full_like(grad_norm, math.nan))
    return grad_norm


def trainer_train_step(self, samples, raise_oom=False):
    setattr(self.task, PENDING, [])
    try:
        return _trainer_train_step(self, samples, raise_oom)
    except FloatingPointError as error:
        for check in getattr(self.task, PENDING, []):
            terms = loss_terms(check.loss, check.logging_output)
            if not all(math.isfinite(value) for value in terms.values()):
                raise not_finite_error(check.update_num, terms) from error
        raise
    finally:
        setattr(self.task, PENDING, [])


FairseqTask.train_step = train_step
Trainer.clip_grad_norm = clip_grad_norm
Trainer.train_step = trainer_train_step
