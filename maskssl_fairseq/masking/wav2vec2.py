"""wav2vec 2.0 / HuBERT span masking with fairseq's statistics, vectorised in torch.

fairseq's ``compute_mask_indices`` (``fairseq.data.data_utils``) loops over the batch in numpy and, with
numpy 2, crashes for ``no_overlap=True`` (``np.int``) and for ``mask_type="uniform"`` (``Generator.randint``).
:func:`wav2vec2_span_mask` draws the same distribution on any device, batched:

- each row of ``sz`` unpadded frames gets ``max(min_masks, int(mask_prob * sz / span + U[0, 1)))`` spans;
- span lengths: ``static`` = ``span``; ``uniform`` = integers in ``[mask_other, 2 * span]``; ``normal`` =
  ``max(1, round(N(span, mask_other)))``; ``poisson`` = ``round(Poisson(span))``;
- overlapping spans start at distinct uniform positions in ``[0, sz - shortest span)``, cut at ``sz``;
- ``no_overlap``: longest span first, each placed uniformly in a free part chosen with probability
  proportional to its size, ``min_space`` frames kept free beside it (fairseq's recursive partitioning);
- ``same_count`` (``require_same_masks``): every row keeps a random subset of its masked frames, as many as
  the row with the fewest has.
"""

import math
from typing import Optional

import torch

from .span import exact_count, valid_frames

MASK_TYPES = ("static", "uniform", "normal", "poisson")


def _span_lengths(mask_type: str, span: int, mask_other: float, shape, generator, device) -> torch.Tensor:
    """Span lengths ``[B, M]`` drawn as fairseq's ``mask_type`` does."""
    if mask_type == "static":
        return torch.full(shape, span, dtype=torch.long, device=device)
    if mask_type == "uniform":
        return torch.randint(int(mask_other), span * 2 + 1, shape, generator=generator, device=device)
    if mask_type == "normal":
        draw = torch.randn(shape, generator=generator, device=device) * mask_other + span
        return draw.round().long().clamp(min=1)
    rates = torch.full(shape, float(span), device=device)
    return torch.poisson(rates, generator=generator).round().long()


def _distinct_starts(sizes: torch.Tensor, lengths: torch.Tensor, active: torch.Tensor, length: int,
                     generator) -> torch.Tensor:
    """Starts ``[B, M]``: distinct uniform positions in ``[0, size - shortest span)`` (fairseq's
    ``rng.choice(sz - min_len, num_mask, replace=False)``, with its fix when that range is too short)."""
    num_spans = active.sum(dim=1)
    shortest = torch.where(active, lengths, torch.full_like(lengths, length + 1)).min(dim=1).values
    shortest = torch.where(sizes - shortest <= num_spans, sizes - num_spans - 1, shortest)
    allowed = torch.arange(length, device=sizes.device) < (sizes - shortest).unsqueeze(1)
    noise = torch.rand(sizes.size(0), length, generator=generator, device=sizes.device).masked_fill(~allowed, -1.0)
    return noise.argsort(dim=1, descending=True)[:, : lengths.size(1)]


def _non_overlapping_starts(sizes: torch.Tensor, lengths: torch.Tensor, active: torch.Tensor, min_space: int,
                            generator):
    """fairseq's no-overlap placement, one span index at a time for the whole batch.

    ``lengths`` and ``active`` must be sorted longest first. Returns ``(starts, placed)``, both ``[B, M]``:
    a row stops at the first span that fits in none of its free parts, as fairseq's loop breaks.
    """
    batch, most = lengths.shape
    device = sizes.device
    # the free parts [start, end) of every row: at most one new part per placed span
    part_start = torch.zeros(batch, most + 1, dtype=torch.long, device=device)
    part_end = torch.zeros(batch, most + 1, dtype=torch.long, device=device)
    part_end[:, 0] = sizes
    live = torch.zeros(batch, most + 1, dtype=torch.bool, device=device)
    live[:, 0] = True
    # a part shorter than the shortest span is dropped, as fairseq's keep_length does
    keep_length = torch.where(active, lengths, torch.full_like(lengths, int(sizes.max()) + 1)).min(dim=1).values
    running = torch.ones(batch, dtype=torch.bool, device=device)
    starts = torch.zeros(batch, most, dtype=torch.long, device=device)
    placed = torch.zeros(batch, most, dtype=torch.bool, device=device)
    first_slot = torch.zeros(batch, most + 1, device=device)
    first_slot[:, 0] = 1.0
    for j in range(most):
        span = lengths[:, j]
        size = part_end - part_start
        fits = live & (size >= (span + min_space).unsqueeze(1)) & (size > 0)
        can_place = fits.any(dim=1)
        running &= ~active[:, j] | can_place
        go = running & active[:, j]
        weights = torch.where(go.unsqueeze(1), (size * fits).float(), first_slot)
        chosen = torch.multinomial(weights, 1, generator=generator)  # [B, 1]
        start_of, end_of = part_start.gather(1, chosen).squeeze(1), part_end.gather(1, chosen).squeeze(1)
        # numpy's randint(s, e - length): e - length - s choices (at least the part's first frame)
        room = (end_of - span - start_of).clamp(min=1)
        offset = (torch.rand(batch, generator=generator, device=device) * room).long().minimum(room - 1)
        start = start_of + offset
        starts[:, j] = torch.where(go, start, starts[:, j])
        placed[:, j] = go
        # the chosen part becomes its left piece; the right piece takes the next free slot
        left_end, right_start = start - min_space + 1, start + span + min_space
        left_live = go & (start - start_of - min_space >= keep_length)
        right_live = go & (end_of - start - span - min_space > keep_length)
        rows = go.nonzero().squeeze(1)
        slot = chosen.squeeze(1)[rows]
        part_end[rows, slot] = left_end[rows]
        live[rows, slot] = left_live[rows]
        part_start[rows, j + 1] = right_start[rows]
        part_end[rows, j + 1] = end_of[rows]
        live[rows, j + 1] = right_live[rows]
    return starts, placed


def wav2vec2_span_mask(
    batch: int,
    length: int,
    mask_prob: float,
    span: int,
    *,
    mask_type: str = "static",
    mask_other: float = 0.0,
    min_masks: int = 0,
    no_overlap: bool = False,
    min_space: int = 0,
    same_count: bool = True,
    padding_mask: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """fairseq's ``compute_mask_indices`` (``mask_dropout`` 0, ``add_masks`` off) in batched torch.

    Args:
        batch, length: the mask's shape ``[B, T]``.
        mask_prob: span starts per frame times ``span`` (wav2vec 2.0 fine-tuning: 0.65 masks about 44 %).
        span: ``mask_length`` (wav2vec 2.0: 10).
        mask_type: ``mask_selection``: ``static``, ``uniform``, ``normal`` or ``poisson``.
        mask_other: ``mask_other``: the lowest length (uniform) or the std (normal).
        min_masks: at least this many spans per row (wav2vec 2.0 / HuBERT time masks: 2; data2vec 2.0: 1).
        no_overlap: ``no_mask_overlap``: spans never overlap and keep ``min_space`` frames between them.
        min_space: ``mask_min_space``.
        same_count: ``require_same_masks``: every row is cut to the smallest row's count.
        padding_mask: ``[B, T]``, True at padding (at the end of a row); padding is never masked.
        generator: seeds the draw; it must live on the mask's device.
        device: where to build the mask (default: ``padding_mask``'s, else the generator's, else the CPU).

    Returns:
        Boolean ``[B, T]``, True = masked.
    """
    if mask_type not in MASK_TYPES:
        raise ValueError(f"mask_type must be one of {MASK_TYPES}, got {mask_type!r}")
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    if span < 1:
        raise ValueError(f"span must be at least 1, got {span}")
    if min_masks < 0 or min_space < 0:
        raise ValueError(f"min_masks and min_space must be >= 0, got {min_masks} and {min_space}")
    if device is None:
        device = padding_mask.device if padding_mask is not None else generator.device if generator is not None else None
    valid = valid_frames(batch, length, padding_mask, device)
    sizes = valid.sum(dim=1)
    rounding = torch.rand(batch, generator=generator, device=valid.device, dtype=torch.float64)
    num_spans = (mask_prob * sizes.double() / span + rounding).floor().long().clamp(min=min_masks)
    spans_everywhere = min_masks >= 1 or (padding_mask is None and mask_prob * length / span >= 1)
    if mask_type == "static" and not no_overlap and spans_everywhere and batch > 0:
        # every row has a span and at most floor(mask_prob * length / span) + 1: extra columns stay inactive
        # and fixed-length spans draw nothing per column, so this bound gives the mask of the exact maximum
        # without reading it on the host
        most = min(max(math.floor(mask_prob * length / span) + 1, min_masks), length)
    else:
        most = int(num_spans.max()) if batch > 0 else 0
    if most == 0:
        return torch.zeros(batch, length, dtype=torch.bool, device=valid.device)

    active = torch.arange(most, device=valid.device) < num_spans.unsqueeze(1)
    lengths = _span_lengths(mask_type, span, mask_other, (batch, most), generator, valid.device) * active
    if mask_type != "static":
        # fairseq: spans that are all empty become one span of min(span, sz - 1)
        empty = active.any(dim=1) & (lengths.sum(dim=1) == 0)
        first = torch.arange(most, device=valid.device) == 0
        fallback = (sizes - 1).clamp(min=0, max=span).unsqueeze(1)
        lengths = torch.where(empty.unsqueeze(1) & first, fallback, lengths)
        active = torch.where(empty.unsqueeze(1), first.expand_as(active), active)

    if no_overlap:
        order = torch.where(active, lengths, torch.full_like(lengths, -1)).argsort(dim=1, descending=True, stable=True)
        lengths, active = lengths.gather(1, order), active.gather(1, order)
        starts, active = _non_overlapping_starts(sizes, lengths, active, min_space, generator)
    else:
        starts = _distinct_starts(sizes, lengths, active, length, generator)

    # frames start <= t < start + length of every active span: +1 / -1 at the ends, then a running sum
    ends = (starts + lengths).clamp(max=length)
    edges = torch.zeros(batch, length + 1, dtype=torch.long, device=valid.device)
    edges.scatter_add_(1, starts, active.long())
    edges.scatter_add_(1, ends, -active.long())
    mask = (edges.cumsum(dim=1)[:, :length] > 0) & valid
    if same_count:
        mask = exact_count(mask, mask.sum(dim=1).min(), valid, generator)  # the count stays on the device
    return mask
