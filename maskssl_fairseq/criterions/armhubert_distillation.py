"""Masking distillation loss of ARMHuBERT (Jang et al., Interspeech 2023, eq. 3), layer to layer, MSE.

For student layer ``l`` with head output ``S_l`` and teacher layer ``l``:

* masked frames regress the teacher on the clean input, ``T_l(x)``;
* unmasked frames regress the teacher on the masked input, ``T_l(mu(x))`` (so that the teacher cannot leak
  what the mask removed);

with layer weights ``hint_weight`` (0.1) for layers 1 .. L-1 and ``last_layer_weight`` (1.0) for layer L.
As in the released code, a frame's error is the mean over channels and both terms are divided by the number
of frames in the batch (so they add up to the loss); unlike it, padded frames are left out. In evaluation
nothing is masked and every frame regresses the teacher on the clean input.
"""

from dataclasses import dataclass, field

import torch
from fairseq import metrics
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass


@dataclass
class ArmHubertDistillationConfig(FairseqDataclass):
    hint_weight: float = field(default=0.1, metadata={"help": "weight of layers 1 .. L-1 (paper: 0.1)"})
    last_layer_weight: float = field(default=1.0, metadata={"help": "weight of the last layer (paper: 1.0)"})


@register_criterion("armhubert_distillation", dataclass=ArmHubertDistillationConfig)
class ArmHubertDistillationCriterion(FairseqCriterion):
    def __init__(self, cfg: ArmHubertDistillationConfig, task):
        super().__init__(task)
        self.hint_weight = cfg.hint_weight
        self.last_layer_weight = cfg.last_layer_weight

    def forward(self, model, sample, reduce=True):
        out = model(**sample["net_input"])
        predictions, targets = out["predictions"], out["targets"]
        masked_targets = out["masked_targets"]
        first = predictions[0]
        valid = torch.ones(first.shape[:2], dtype=torch.bool, device=first.device)
        if out["padding_mask"] is not None:
            valid = ~out["padding_mask"]
        mask = out["mask"] if out["mask"] is not None else torch.zeros_like(valid)
        unmasked = valid & ~mask
        frames = valid.sum().clamp(min=1).float()

        masked_loss = first.new_zeros((), dtype=torch.float32)
        unmasked_loss = first.new_zeros((), dtype=torch.float32)
        last = len(predictions) - 1
        for layer, (prediction, target) in enumerate(zip(predictions, targets)):
            if masked_targets is not None:  # masked frames: clean-input target; others: masked-input target
                target = torch.where(mask.unsqueeze(-1), target, masked_targets[layer])
            error = (prediction.float() - target.float()).pow(2).mean(dim=-1)  # [B, T]
            weight = self.last_layer_weight if layer == last else self.hint_weight
            masked_loss = masked_loss + weight * (error * mask).sum() / frames
            unmasked_loss = unmasked_loss + weight * (error * unmasked).sum() / frames
        loss = masked_loss + unmasked_loss

        # every micro-batch loss is already a mean, so fairseq averages gradients over micro-batches and workers
        logging_output = {
            "loss": loss.detach(),
            "masked_loss": masked_loss.detach(),
            "unmasked_loss": unmasked_loss.detach(),
            "masked_fraction": (mask.sum() / frames).detach(),
            "ntokens": frames.detach().long(),  # fairseq's logging reads it (no host sync here)
            "nsentences": first.size(0),
            "sample_size": 1,
        }
        return loss, 1, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs) or 1
        for key in ("loss", "masked_loss", "unmasked_loss", "masked_fraction"):
            total = sum(float(log.get(key, 0)) for log in logging_outputs)
            metrics.log_scalar(key, total / sample_size, sample_size, round=4)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
