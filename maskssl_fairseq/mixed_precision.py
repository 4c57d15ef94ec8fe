"""Six fixes to fairseq's mixed-precision optimizer wrappers and its composite optimizer, so that ``common.amp`` and ``common.fp16`` train
as the paper recipes are written (fairseq's ``composite`` optimizer, one AdamW per parameter group).

1. **AMP unscaled the gradients twice.** ``AMPOptimizer.clip_grad_norm`` (which fairseq's trainer calls on every
   update, whatever ``clip_norm``) unscales the inner torch optimizer, then ``AMPOptimizer.step`` hands the
   fairseq wrapper around it to ``GradScaler.step``: another object to the scaler, whose gradients it unscales
   again, so every ``amp: true`` run stepped with its gradients divided by the loss scale once more. Here
   ``step`` passes the scaler the object the clip unscaled, so the gradients are unscaled once.
2. **The composite optimizer had no ``param_groups``** on its inner torch optimizer (``CompositeOptimizer``
   never calls ``torch.optim.Optimizer.__init__``), which AMP's ``zero_grad`` and the scaler read: it gets
   its sub-optimizers' groups.
3. **amp together with bf16** (or fp16) cast the model and stepped its half-precision weights directly, with
   no fp32 master copy: refused, naming the fix.
4. **fp16 flattened the composite optimizer's parameters** into one tensor, which loses the group each
   parameter belongs to ("Composite optimizer only works when there are multiple parameter groups"): a
   composite optimizer keeps one fp32 master copy per parameter (``common.fp16_no_flatten_grads=true``).

5. **The spectrogram models' waveforms were rounded** to bf16 / fp16 with the rest of the batch before their
   fp32 front end saw them: the rounding noise (about 48 dB under the signal in bf16) lifts the quiet log-mel
   bins, and MSM-MAE's first bf16 loss sat 0.6-1.1 % off fp32's. A model whose ``frontend`` is a log-mel front
   end gets its ``source`` in fp32; every other tensor of the batch is cast as fairseq casts it.
6. **Composite optimizers shared their groups across the process.** ``FairseqCompositeOptimizer`` declares
   ``optimizers`` and ``lr_schedulers`` as class-level dicts and fills them in ``__init__``: each one built
   after another in the same process (tests, ``run/recipe_check.py``, a notebook) also held, stepped, clipped
   (stale gradients in its norm) and saved the earlier ones' groups. Each gets its own dicts.

Installed when the plugin is imported (``common.user_dir``).
"""

import logging

from fairseq.optim.amp_optimizer import AMPOptimizer
from fairseq.optim.composite import CompositeOptimizer, FairseqCompositeOptimizer
from fairseq.optim.fp16_optimizer import FP16Optimizer
from fairseq.trainer import Trainer
from omegaconf import OmegaConf, open_dict

from .modules.log_mel import StandardisedSpectrogram

logger = logging.getLogger(__name__)


def _sub_optimizer_groups(self):
    return [group for optimizer in self.optimizers.values() for group in optimizer.param_groups]


CompositeOptimizer.param_groups = property(_sub_optimizer_groups)

_fairseq_composite_init = FairseqCompositeOptimizer.__init__


def _composite_with_its_own_groups(self, cfg, params):
    self.optimizers, self.lr_schedulers = {}, {}  # instance dicts: fairseq's ``__init__`` fills these in place
    _fairseq_composite_init(self, cfg, params)


FairseqCompositeOptimizer.__init__ = _composite_with_its_own_groups


def _step_the_unscaled_optimizer(self):
    # ``clip_grad_norm`` unscaled ``self.optimizer``: the scaler steps that one (the fairseq wrapper's ``step``
    # only calls its ``step``), so that it finds it unscaled and does not unscale it again
    self.scaler.step(self.optimizer)
    self.scaler.update()


AMPOptimizer.step = _step_the_unscaled_optimizer

_fairseq_amp_build_optimizer = AMPOptimizer.build_optimizer.__func__


def _build_amp_optimizer(cls, cfg, params, **kwargs):
    if cfg.common.bf16 or cfg.common.fp16:
        raise ValueError("common.amp=true with common.bf16=true or common.fp16=true: fairseq casts the model and "
                         "AMP then steps the half-precision weights themselves, without fp32 master copies. For "
                         "bf16 set common.amp=false common.bf16=true; for AMP leave common.bf16 and common.fp16 false")
    return _fairseq_amp_build_optimizer(cls, cfg, params, **kwargs)


AMPOptimizer.build_optimizer = classmethod(_build_amp_optimizer)

_fairseq_fp16_build_optimizer = FP16Optimizer.build_optimizer.__func__


def _build_fp16_optimizer(cls, cfg, params, **kwargs):
    if cfg.optimizer._name == "composite" and not cfg.common.fp16_no_flatten_grads and not cfg.common.bf16:
        logger.info("fp16 with the composite optimizer: one fp32 master copy per parameter (its group is kept)")
        cfg = OmegaConf.create(OmegaConf.to_container(cfg))  # a copy: the run's own config stays as given
        with open_dict(cfg):
            cfg.common.fp16_no_flatten_grads = True
    return _fairseq_fp16_build_optimizer(cls, cfg, params, **kwargs)


FP16Optimizer.build_optimizer = classmethod(_build_fp16_optimizer)

_fairseq_fp_convert_sample = Trainer._fp_convert_sample


def _fp_convert_sample(self, sample):
    converted = _fairseq_fp_convert_sample(self, sample)  # new dicts: ``sample`` keeps its fp32 tensors
    if isinstance(getattr(self._model, "frontend", None), StandardisedSpectrogram) and "net_input" in sample:
        converted["net_input"]["source"] = sample["net_input"]["source"]
    return converted


Trainer._fp_convert_sample = _fp_convert_sample
