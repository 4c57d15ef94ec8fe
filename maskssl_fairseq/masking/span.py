"""Span masking (wav2vec 2.0, HuBERT, data2vec) in plain torch, with exactly the same count in every row.

fairseq's ``compute_mask_indices`` is numpy, loops over the batch in Python, crashes on numpy 2 with
``no_overlap=True`` and masks a varying number of frames. Here every row gets exactly
``int(mask_prob * shortest valid length)`` masked frames, as data2vec 2.0's block masking does, and the
spans are drawn on the device of the data.

The helpers (``masked_frame_budget``, ``span_starts_allowed``, ``spans_from_starts``, ``top_k_mask``, ...)
are shared by the other span-based strategies (for example the easy-to-hard mask).
"""

import math
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F


def valid_frames(
    batch: int, length: int, padding_mask: Optional[torch.Tensor], device: Optional[torch.device] = None
) -> torch.Tensor:
    """Boolean ``[batch, length]``, True where a frame holds data (fairseq's padding mask is True at padding)."""
    if padding_mask is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    if padding_mask.shape != (batch, length):
        raise ValueError(f"padding_mask has shape {tuple(padding_mask.shape)}, expected {(batch, length)}")
    return ~padding_mask.bool()


def masked_frame_budget(valid: torch.Tensor, mask_prob: float, unpadded: bool = False) -> Tuple[int, int]:
    """``(shortest valid length L, int(mask_prob * L))``: every row of ``valid [B, T]`` masks that many frames.

    ``unpadded``: every frame holds data (no padding mask), so ``L`` is the width, read without a host sync.
    """
    if unpadded or valid.shape[0] == 0:
        shortest = valid.shape[1] if valid.shape[0] > 0 else 0
    else:
        shortest = int(valid.sum(dim=1).min())
    return shortest, int(mask_prob * shortest)


def span_starts_allowed(valid: torch.Tensor, span: int) -> torch.Tensor:
    """Boolean ``[B, T]``: where a span of ``span`` frames may start and still fit in the row's valid frames."""
    positions = torch.arange(valid.shape[1], device=valid.device)
    return valid & (positions.unsqueeze(0) <= (valid.sum(dim=1) - span).clamp(min=0).unsqueeze(1))


def top_k_mask(priority: torch.Tensor, k: Union[int, torch.Tensor]) -> torch.Tensor:
    """Boolean mask of the ``k`` highest entries of each row of ``priority [B, T]``.

    ``k`` may be a 0-dim tensor on the device (a count the host has not read): the rows are then ranked by a
    full sort instead of ``topk``, the same entries where the values differ, with no host sync.
    """
    mask = torch.zeros(priority.shape, dtype=torch.bool, device=priority.device)
    if torch.is_tensor(k):
        ranked = priority.argsort(dim=1, descending=True)
        first_k = torch.arange(priority.shape[1], device=priority.device) < k
        return mask.scatter_(1, ranked, first_k.expand_as(ranked))
    if k > 0:
        mask.scatter_(1, priority.topk(k, dim=1).indices, True)
    return mask


def spans_from_starts(starts: torch.Tensor, span: int) -> torch.Tensor:
    """Marks ``span`` consecutive frames from every True of ``starts [B, T]`` (cut at the end)."""
    # a frame is covered if a start lies in the `span` frames up to it: a windowed count via cumsum
    # (CPU max_pool1d was ~100x slower on these shapes under load)
    counts = starts.to(torch.int32).cumsum(dim=1)
    return counts - F.pad(counts, (span, 0))[:, : counts.size(1)] > 0


def exact_count(
    mask: torch.Tensor, count: Union[int, torch.Tensor], valid: torch.Tensor, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """Drops or adds random frames so that every row of ``mask [B, T]`` has exactly ``count`` Trues.

    Frames already masked are kept first, so a row with too few gains random valid frames and a row with
    too many loses random ones; frames outside ``valid`` are never chosen.
    """
    noise = torch.rand(mask.shape, generator=generator, device=mask.device)
    priority = (mask.float() + noise).masked_fill(~valid, -1.0)
    return top_k_mask(priority, count)


def spans_for_coverage(fraction: float, span: int, length: int) -> int:
    """How many uniformly placed spans of ``span`` frames cover ``fraction`` of ``length`` frames on average.

    Overlapping spans cover less than ``spans * span`` frames: coverage is ``1 - (1 - span/length)^spans``.
    Solving for ``spans`` keeps the spans intact instead of topping up with scattered single frames.
    """
    if fraction <= 0:
        return 0
    starts = max(length - span + 1, 1)
    if fraction >= 1 or span >= length:
        return starts
    return min(starts, math.ceil(math.log1p(-fraction) / math.log1p(-span / length)))


def span_mask(
    batch: int,
    length: int,
    mask_prob: float,
    span: int,
    *,
    generator: Optional[torch.Generator] = None,
    padding_mask: Optional[torch.Tensor] = None,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """Masks spans of ``span`` frames covering exactly ``int(mask_prob * L)`` frames of each row.

    Args:
        batch, length: the mask's shape ``[B, T]``.
        mask_prob: fraction of frames to mask; ``L`` is the shortest unpadded length in the batch, so
            every row has the same count.
        span: span length in frames (wav2vec 2.0: 10; data2vec 2.0: 5).
        generator: seeds the draw; it must live on the mask's device.
        padding_mask: ``[B, T]``, True at padding; padding is never masked.
        device: where to build the mask (default: ``padding_mask``'s device, else the CPU).

    Returns:
        Boolean ``[B, T]``, True = masked.
    """
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    if span < 1:
        raise ValueError(f"span must be at least 1, got {span}")
    if device is None and padding_mask is not None:
        device = padding_mask.device
    valid = valid_frames(batch, length, padding_mask, device)
    shortest, count = masked_frame_budget(valid, mask_prob, unpadded=padding_mask is None)
    if count == 0:
        return torch.zeros(batch, length, dtype=torch.bool, device=valid.device)

    num_spans = spans_for_coverage(count / shortest, span, shortest)
    can_start = span_starts_allowed(valid, span)
    start_noise = torch.rand(batch, length, generator=generator, device=valid.device)
    starts = top_k_mask(start_noise.masked_fill(~can_start, -1.0), num_spans) & can_start
    return exact_count(spans_from_starts(starts, span) & valid, count, valid, generator)
