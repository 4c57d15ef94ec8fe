"""EH-MAM's adaptive mask: a share of the spans covers the regions predicted to be hardest, the rest are random.

EH-MAM (Seth et al., EMNLP 2024) keeps data2vec 2.0's masking budget (mask probability, span length) and
places a fraction of the spans on the frames with the highest predicted reconstruction loss; that
fraction grows over training (easy to hard). Two ways of choosing the hard spans:

- ``"window"`` (default): the highest-scoring non-overlapping windows of ``span`` frames (window score =
  mean frame score), chosen greedily, so the hard share of the budget covers the predicted-hardest regions;
- ``"start"``: spans *start* on the top-scored frames, as the official code does. Only a span's first frame
  is then sure to be hard and neighbouring top frames give overlapping spans: with i.i.d. scores and
  ``hard_fraction`` 1 only 0.55 of the masked frames lie in the top-scored half, against 0.73 for windows.

This is the vectorised torch version of the official ``compute_mask_indices_ema_loss`` (numpy, one Python
iteration per utterance), with three differences:

- every row masks exactly ``int(mask_prob * shortest valid length)`` frames, as data2vec 2.0's block mask
  does, instead of "span starts = mask_prob * T / span" followed by subsampling every row to the batch minimum;
- the hard span budget is ``hard_fraction`` of the ``count / span`` spans a masking without overlap
  would need, so the hard spans alone never exceed the frame budget;
- the rest of the budget is drawn by data2vec 2.0's block masking (:func:`block_mask`, with
  ``mask_prob_adjust``) on the frames the hard spans left, instead of uniform span starts, so that
  ``hard_fraction = 0`` is exactly the data2vec 2.0 baseline's mask; frames the overlaps leave free are
  then covered by random single frames, as data2vec 2.0's ``require_same_masks`` does.
"""

import math
from typing import Optional

import torch
import torch.nn.functional as F

from .block import random_blocks
from .span import masked_frame_budget, span_starts_allowed, spans_from_starts, top_k_mask, valid_frames

HARD_SELECTIONS = ("window", "start")


def _greedy_windows(scores: torch.Tensor, can_start: torch.Tensor, span: int, num_windows: int) -> torch.Tensor:
    """Starts ``[B, T]`` of the ``num_windows`` best non-overlapping windows of ``span`` frames in each row.

    Greedy: the window with the highest mean score first, then the best one not overlapping any chosen,
    and so on; only windows starting at ``can_start`` count. A row that runs out of windows gets fewer.
    """
    batch, length = scores.shape
    # window sums (same order as the means); windows that do not fit are never chosen
    sums = F.pad(scores.unfold(1, span, 1).sum(-1), (0, span - 1)) if length >= span else scores.new_zeros(scores.shape)
    priority = sums.masked_fill(~can_start, -math.inf)
    starts = torch.zeros(batch, length, dtype=torch.bool, device=scores.device)
    overlapping = torch.arange(-span + 1, span, device=scores.device)
    for _ in range(num_windows):
        best, where = priority.max(dim=1, keepdim=True)
        found = best > -math.inf
        starts.scatter_(1, where, starts.gather(1, where) | found)
        # a window starting within span - 1 frames of a chosen start would overlap it
        priority.scatter_(1, (where + overlapping).clamp(0, length - 1), -math.inf)
    return starts


def easy_to_hard_mask(
    scores: torch.Tensor,
    mask_prob: float,
    span: int,
    hard_fraction: float,
    *,
    hard_selection: str = "window",
    adjust: float = 0.05,
    generator: Optional[torch.Generator] = None,
    padding_mask: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """Masks ``int(mask_prob * L)`` frames per row: a share in spans on the top scores, the rest in random blocks.

    Args:
        scores: ``[B, T]`` predicted difficulty of every frame (the teacher's loss predictor); only their
            order within a row matters. Rows that are copies of one utterance (``clone_batch``) get the
            same hard spans, and their random blocks are drawn independently.
        mask_prob: fraction of frames to mask; ``L`` is the shortest unpadded length in the batch.
        span: span length in frames (data2vec 2.0: 5).
        hard_fraction: share in ``[0, 1]`` of the ``count / span`` span budget placed on the hardest
            frames; 0 gives data2vec 2.0's block masking (:func:`block_mask`, bit for bit).
        hard_selection: ``"window"``: the hard spans are the best non-overlapping windows of ``span``
            frames by mean score (a greedy choice); ``"start"``: they start on the top-scored frames
            (official code).
        adjust: data2vec 2.0's ``mask_prob_adjust`` for the random blocks (see :func:`block_mask`).
        generator: seeds the random spans; it must live on ``scores``' device.
        padding_mask: ``[B, T]``, True at padding; padding is never masked.

    Returns:
        Boolean ``[B, T]``, True = masked, with the same count in every row.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be [B, T], got shape {tuple(scores.shape)}")
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    if not 0.0 <= hard_fraction <= 1.0:
        raise ValueError(f"hard_fraction must be in [0, 1], got {hard_fraction}")
    if span < 1:
        raise ValueError(f"span must be at least 1, got {span}")
    if hard_selection not in HARD_SELECTIONS:
        raise ValueError(f"hard_selection must be one of {HARD_SELECTIONS}, got {hard_selection!r}")
    batch, length = scores.shape
    valid = valid_frames(batch, length, padding_mask, scores.device)
    _, count = masked_frame_budget(valid, mask_prob, unpadded=padding_mask is None)
    if count == 0:
        return torch.zeros(batch, length, dtype=torch.bool, device=scores.device)

    can_start = span_starts_allowed(valid, span)

    num_hard = min(int(hard_fraction * count / span + 0.5), count // span)
    hard_scores = scores.detach().float()
    if hard_selection == "window":
        hard_starts = _greedy_windows(hard_scores, can_start, span, num_hard)
    else:
        hard_starts = top_k_mask(hard_scores.masked_fill(~can_start, -math.inf), num_hard) & can_start
    hard = spans_from_starts(hard_starts, span) & valid

    # the rest of the budget: data2vec 2.0's block masking on the frames the hard spans left, its share of
    # mask_prob scaled by what is missing (at hard_fraction 0 this is block_mask exactly)
    missing = (count - hard.sum(dim=1)).clamp(min=0).double()
    cover = valid.sum(dim=1).double() * mask_prob * (missing / count)
    random = random_blocks(valid, valid & ~hard, cover, span, adjust, generator)

    # exact count: hard frames first, then random-span frames, then any other valid frame
    noise = torch.rand(scores.shape, generator=generator, device=scores.device)
    priority = (2.0 * hard.float() + random.float() + noise).masked_fill(~valid, -1.0)
    return top_k_mask(priority, count)
