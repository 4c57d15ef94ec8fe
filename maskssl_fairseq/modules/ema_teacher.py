"""A full EMA teacher for fairseq models: fairseq's ``EMAModule`` over copies of named student modules.

The teacher is not a child module, so fairseq's optimizer never sees it; its fp32 parameters travel in the
checkpoint under ``_ema``, and the update it last stepped at in a ``teacher_updates`` buffer, so that a
resumed run steps it exactly as an uninterrupted one would. The momentum rises linearly from
``ema_decay`` to ``ema_end_decay`` over ``ema_anneal_end_step`` updates, then stays (data2vec 2.0, EAT).
It serves the data2vec 2.0 audio backbone (``data2vec2_audio``: data2vec 2.0, EH-MAM) and EAT; M2D's target
encoder uses its fp32 master copy (:func:`fp32_ema`).
"""

import copy
from typing import Dict, Iterable, Optional

import torch
import torch.nn as nn
from fairseq.modules import EMAModule, EMAModuleConfig

from ..distributed import check_identical_across_ranks, rank_check_due


def fp32_ema(teacher: nn.Module, decay: float) -> EMAModule:
    """fairseq's ``EMAModule`` stepping ``teacher``'s own parameters, with an fp32 master copy of each: in a
    half-precision model a momentum of 0.9999 moves a weight by less than bf16's or fp16's resolution (the
    copy goes to the checkpoint; :func:`fp32_params_to` moves it with the model)."""
    return EMAModule(teacher, EMAModuleConfig(ema_decay=decay, ema_fp32=True, add_missing_params=False,
                                              log_norms=False), copy_model=False)


def fp32_params_to(ema: EMAModule, device: torch.device) -> None:
    """The fp32 master copy on ``device`` (it is no module tensor, so the model's moves leave it behind)."""
    for key, value in ema.fp32_params.items():
        if value.device != device:
            ema.fp32_params[key] = value.to(device)


class TeacherModel(nn.Module):
    """What the EMA teacher holds: copies of the student modules it follows (data2vec 2.0: the context
    encoder, EH-MAM: plus its loss predictor; EAT: the whole encoder). Attribute names equal the student's,
    so ``EMAModule.step`` matches parameters by name and skips the student-only ones (CNN, decoder)."""

    def __init__(self, modules: Dict[str, nn.Module]):
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)


class EMATeacherMixin:
    """For a ``BaseFairseqModel`` whose ``cfg`` has ``ema_decay``, ``ema_end_decay`` and ``ema_anneal_end_step``.

    Call :meth:`build_teacher` once the student modules are initialised; ``self.teacher(like).<name>`` is
    then the teacher's copy of ``self.<name>``.
    """

    # state that counts training progress, not weights: model.init_from leaves it as built
    training_state_keys = ("teacher_updates",)

    def build_teacher(self, names: Iterable[str]) -> None:
        self.register_buffer("teacher_updates", torch.zeros((), dtype=torch.long))
        self._teacher_updates_seen: Optional[int] = 0  # host copy of the buffer; None: read it (after a load)
        teacher = TeacherModel({name: copy.deepcopy(getattr(self, name)) for name in names})
        teacher.requires_grad_(False)
        self.ema = fp32_ema(teacher, self.cfg.ema_decay)

    def ema_decay_at(self, num_updates: int) -> float:
        cfg = self.cfg
        if num_updates >= cfg.ema_anneal_end_step:
            return cfg.ema_end_decay
        return cfg.ema_decay + (cfg.ema_end_decay - cfg.ema_decay) * num_updates / cfg.ema_anneal_end_step

    def step_teacher(self, num_updates: int) -> None:
        """Called from ``set_num_updates``: one EMA step per new update number while training."""
        if self.ema is None or not self.training or num_updates == 0:
            return
        if self._teacher_updates_seen is None:
            self._teacher_updates_seen = int(self.teacher_updates)
        if num_updates == self._teacher_updates_seen:
            return
        self.ema.set_decay(self.ema_decay_at(num_updates))
        if self.ema.get_decay() < 1:
            self.ema.step(self)
        self.teacher_updates.fill_(num_updates)
        self._teacher_updates_seen = num_updates
        if rank_check_due(num_updates):
            check_identical_across_ranks(self.ema.fp32_params.values(), "the EMA teacher", num_updates)

    def teacher(self, like: torch.Tensor) -> nn.Module:
        """The teacher on ``like``'s device and dtype (fp16/bf16 training casts the student only)."""
        model = self.ema.model
        reference = next(model.parameters())
        if reference.device != like.device or reference.dtype != like.dtype:
            self.ema.model = model = model.to(device=like.device, dtype=like.dtype)
            fp32_params_to(self.ema, like.device)
        return model

    def state_dict(self, destination=None, prefix="", keep_vars=False):
        state = super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        if self.ema is not None:
            state[prefix + "_ema"] = self.ema.fp32_params
        return state

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        ema_state = state_dict.pop(prefix + "_ema", None)
        self._teacher_updates_seen = None  # the loaded teacher_updates is read at the next step
        if self.ema is not None:
            if ema_state is None:
                raise KeyError(f"checkpoint lacks the EMA teacher ('{prefix}_ema'): it cannot resume pretraining")
            self.ema.restore(ema_state, build_fp32_params=True)
        return super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
