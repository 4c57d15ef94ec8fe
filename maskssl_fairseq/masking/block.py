"""Inverse block masking (data2vec 2.0, EAT): the *visible* positions are drawn as blocks, the rest is masked.

Block centres are drawn uniformly (with replacement); each one reveals a ``block``-sided square (a span of
``block`` positions in 1-D) whose coordinates are clamped to the grid, as data2vec 2.0 does. ``adjust``
only inflates the number of centres to make up for overlaps and clamping; the visible count is then made
exact by revealing or hiding random single positions, so every row has the same count.
"""

import math
from typing import Optional, Sequence

import torch

from .span import exact_count
from .unstructured import masked_count


def inverse_block_mask(
    batch: int,
    shape: Sequence[int],
    mask_ratio: float,
    *,
    block: int = 5,
    adjust: float = 0.07,
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """Inverse block mask over a sequence ``shape = (L,)`` or a patch grid ``shape = (H, W)``.

    Args:
        batch: number of rows.
        shape: ``(L,)`` or ``(H, W)``; positions are numbered row-major, like ``Conv2d(...).flatten(2)``
            numbers patches (for M2D's 80x608 spectrogram: ``(5, 38)``, frequency rows first).
        mask_ratio: fraction of positions to mask (M2D: 0.7; EAT: 0.8).
        block: side of a visible block (EAT and the DWM paper: 5).
        adjust: extra fraction of centres drawn to make up for overlapping and clamped blocks
            (data2vec 2.0's ``mask_prob_adjust``: 0.07 in EAT).
        generator: seeds the draw; it must live on ``device``.
        device: where to build the mask (default: the generator's device, else the CPU).

    Returns:
        Boolean ``[batch, prod(shape)]``, True = masked, with ``masked_count(prod(shape), mask_ratio)``
        masked positions in every row.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (1, 2) or min(shape) < 1:
        raise ValueError(f"shape must be (L,) or (H, W) with positive sizes, got {shape}")
    if block < 1:
        raise ValueError(f"block must be at least 1, got {block}")
    if adjust < 0:
        raise ValueError(f"adjust must be >= 0, got {adjust}")
    if device is None and generator is not None:
        device = generator.device
    length = math.prod(shape)
    num_visible = length - masked_count(length, mask_ratio)

    # data2vec 2.0: int(L * (visible share + adjust) / block area)
    num_centres = int((num_visible + adjust * length) / block ** len(shape) + 1e-9)
    visible = torch.zeros(batch, length, dtype=torch.bool, device=device)
    if num_centres > 0:
        centres = torch.randint(0, length, (batch, num_centres), generator=generator, device=device)
        offsets = torch.arange(block, device=device) - block // 2
        if len(shape) == 1:
            positions = (centres.unsqueeze(-1) + offsets).clamp(0, length - 1)
        else:
            height, width = shape
            rows = (centres // width).unsqueeze(-1) + offsets  # [B, C, block]
            cols = (centres % width).unsqueeze(-1) + offsets
            rows = rows.clamp(0, height - 1).unsqueeze(-1)  # [B, C, block, 1]
            cols = cols.clamp(0, width - 1).unsqueeze(-2)  # [B, C, 1, block]
            positions = rows * width + cols
        visible.scatter_(1, positions.reshape(batch, -1), True)
    everywhere = torch.ones_like(visible)
    return ~exact_count(visible, num_visible, everywhere, generator)
