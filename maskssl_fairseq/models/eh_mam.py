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

from dataclasses import dataclass, field
from typing import Dict, Optional

import torch
from omegaconf import II

from fairseq.dataclass import ChoiceEnum
from fairseq.models import register_model

from ..masking import easy_to_hard_mask
from ..modules.data2vec2_audio import Data2Vec2AudioConfig, Data2Vec2AudioModel
from ..modules.ema_teacher import TeacherModel
from ..modules.loss_predictor import LossPredictor, pairwise_ranking_loss

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
