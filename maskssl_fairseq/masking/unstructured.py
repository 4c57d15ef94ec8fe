"""Unstructured random masking (MAE, MSM-MAE, M2D): every position is equally likely to be masked."""

from typing import Optional

import torch

from .span import top_k_mask


def masked_count(length: int, mask_ratio: float) -> int:
    """How many of ``length`` positions a ``mask_ratio`` masks.

    MAE and M2D keep ``int(length * (1 - mask_ratio))`` positions visible and mask the rest (M2D: 57 of 190
    patches visible at 0.7); data2vec 2.0's inverse block mask and the DWM code count the same way. All the
    patch strategies use this so that they mask the same number of patches for the same ratio. A tolerance
    keeps ``1 - 0.9 = 0.0999...`` from losing a visible position (the paper ratios count as officially).
    """
    if not 0.0 <= mask_ratio <= 1.0:
        raise ValueError(f"mask_ratio must be in [0, 1], got {mask_ratio}")
    return length - int(length * (1.0 - mask_ratio) + 1e-9)


def random_mask(
    batch: int,
    length: int,
    mask_ratio: float,
    *,
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """Masks ``masked_count(length, mask_ratio)`` positions of each row, uniformly at random.

    Args:
        batch, length: the mask's shape ``[B, L]``.
        mask_ratio: fraction of positions to mask (M2D: 0.7, MSM-MAE: 0.75).
        generator: seeds the draw; it must live on ``device``.
        device: where to build the mask (default: the generator's device, else the CPU).

    Returns:
        Boolean ``[B, L]``, True = masked.
    """
    if device is None and generator is not None:
        device = generator.device
    count = masked_count(length, mask_ratio)
    return top_k_mask(torch.rand(batch, length, generator=generator, device=device), count)
