"""Loss and metrics of audio classification fine-tuning: ``spectrogram_classification``.

Multi-label tasks (``task.multi_label``): binary cross-entropy, averaged over the classes, and mAP, the mean
over classes that have a positive clip of their average precision, computed on the whole validation set.
Single-label tasks: cross-entropy against the (mixed, then label-smoothed) target distribution, and accuracy.
Losses are summed over clips, ``sample_size`` is the number of clips. Validation logs ``accuracy`` or
``mAP``, which ``checkpoint.best_checkpoint_metric`` can name to keep ``checkpoint_best.pt`` on it.
"""

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass
from fairseq.logging import meters, metrics
from fairseq.logging.meters import Meter


def mean_average_precision(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """``scores, targets [N, C]`` (targets 0/1) -> the mean over classes with a positive of their average
    precision: the mean, over the positives, of the precision among the clips scored at least as high."""
    precisions = []
    for column in range(scores.shape[1]):
        positive = targets[:, column] > 0.5
        if not positive.any():
            continue
        order = scores[:, column].argsort(descending=True, stable=True)
        hits = positive[order].double()
        precision_at = hits.cumsum(0) / torch.arange(1, len(hits) + 1, dtype=torch.float64)
        precisions.append(float((precision_at * hits).sum() / hits.sum()))
    return sum(precisions) / len(precisions) if precisions else float("nan")


class MeanAveragePrecisionMeter(Meter):
    """Collects the scores and targets of every validation batch; its value is their mAP."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.scores, self.targets = [], []

    def update(self, scores: torch.Tensor, targets: torch.Tensor):
        self.scores.append(scores)
        self.targets.append(targets)

    @property
    def smoothed_value(self) -> float:
        if not self.scores:
            return float("nan")
        return round(mean_average_precision(torch.cat(self.scores), torch.cat(self.targets)), 5)


# a checkpoint saves the validation meters by class name, and fairseq looks the name up in its meters module
# when it resumes
meters.MeanAveragePrecisionMeter = MeanAveragePrecisionMeter


@dataclass
class SpectrogramClassificationCriterionConfig(FairseqDataclass):
    label_smoothing: float = field(default=0.0, metadata={"help": "single-label tasks: share spread over all classes"})


@register_criterion("spectrogram_classification", dataclass=SpectrogramClassificationCriterionConfig)
class SpectrogramClassificationCriterion(FairseqCriterion):
    def __init__(self, task, label_smoothing: float = 0.0):
        super().__init__(task)
        self.multi_label = task.cfg.multi_label
        self.label_smoothing = label_smoothing

    def forward(self, model, sample, reduce=True):
        out = model(**sample["net_input"], target=sample["target"])
        logits, target = out["logits"].float(), out["target"].float()  # fp16 training halves the sample too
        if self.multi_label:
            loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean(dim=1).sum()
        else:
            smoothed = target * (1 - self.label_smoothing) + self.label_smoothing / target.shape[1]
            loss = -(smoothed * F.log_softmax(logits, dim=-1)).sum()
        batch = logits.shape[0]
        logging_output = {"loss": loss.item(), "sample_size": batch, "nsentences": batch, "ntokens": batch}
        if self.multi_label:
            if not model.training:  # mAP needs every clip of the epoch
                logging_output["_scores"] = torch.sigmoid(logits).detach().cpu()
                logging_output["_targets"] = sample["target"].float().cpu()
        else:
            logging_output["correct"] = int((logits.argmax(-1) == sample["target"].argmax(-1)).sum())
        return loss, batch, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        sample_size = sum(log.get("sample_size", 0) for log in logging_outputs)
        metrics.log_scalar("loss", sum(log.get("loss", 0) for log in logging_outputs) / max(sample_size, 1),
                           sample_size, round=4)
        if any("correct" in log for log in logging_outputs):
            metrics.log_scalar("_correct", sum(log.get("correct", 0) for log in logging_outputs))
            metrics.log_scalar("_clips", sample_size)
            metrics.log_derived("accuracy", lambda meters: round(meters["_correct"].sum / meters["_clips"].sum, 5)
                                if meters["_clips"].sum > 0 else float("nan"))
        for log in logging_outputs:
            if "_scores" in log:
                metrics.log_custom(MeanAveragePrecisionMeter, "mAP", log["_scores"], log["_targets"])

    def logging_outputs_can_be_summed(self) -> bool:
        return False  # the validation scores are concatenated, not summed
