"""Block masking (data2vec 2.0, EAT): blocks around uniformly drawn centres, masked or (inverse) left visible.

Block centres are drawn uniformly (with replacement); each one covers a ``block``-sided square (a span of
``block`` positions in 1-D) centred on it, with coordinates clamped to the grid, as data2vec 2.0 does
(fairseq's ``compute_block_mask_1d`` / ``compute_block_mask_2d``). ``adjust`` only inflates the number of
centres to make up for overlaps and clamping; the count is then made exact by adding or removing random
single positions (fairseq's ``require_same_masks``), so every row has the same count.

- :func:`block_mask`: the blocks are the *masked* frames (data2vec 2.0 audio: ``inverse_mask: false``);
- :func:`inverse_block_mask`: the blocks are the *visible* positions, the rest is masked (M2D, EAT).
"""

import math
from typing import Optional, Sequence, Union

import torch

from .span import exact_count, masked_frame_budget, valid_frames
from .unstructured import masked_count


def block_centre_count(cover: Union[float, torch.Tensor], positions: Union[int, torch.Tensor], adjust: float,
                       block_area: int) -> Union[int, torch.Tensor]:
    """data2vec 2.0's number of centres: ``int((cover + adjust * positions) / block_area)``, per row if tensors."""
    count = (cover + adjust * positions) / block_area + 1e-9
    return count.floor().long() if torch.is_tensor(count) else int(count)


def blocks_around(centres: torch.Tensor, block: int, shape: Sequence[int],
                  lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Boolean ``[B, prod(shape)]``: the union of ``block``-sided blocks centred on ``centres [B, C]``.

    Block coordinates are clamped to the grid (1-D: to each row's ``lengths [B]`` when given, so a block
    never reaches padding). Positions are numbered row-major.
    """
    batch = centres.size(0)
    offsets = torch.arange(block, device=centres.device) - block // 2
    if len(shape) == 1:
        positions = centres.unsqueeze(-1) + offsets
        if lengths is None:
            positions = positions.clamp(0, shape[0] - 1)
        else:
            positions = torch.minimum(positions.clamp(min=0), lengths.view(batch, 1, 1) - 1)
    else:
        height, width = shape
        rows = (centres // width).unsqueeze(-1) + offsets  # [B, C, block]
        cols = (centres % width).unsqueeze(-1) + offsets
        rows = rows.clamp(0, height - 1).unsqueeze(-1)  # [B, C, block, 1]
        cols = cols.clamp(0, width - 1).unsqueeze(-2)  # [B, C, 1, block]
        positions = rows * width + cols
    covered = torch.zeros(batch, math.prod(shape), dtype=torch.bool, device=centres.device)
    return covered.scatter_(1, positions.reshape(batch, -1), True)


def random_blocks(valid: torch.Tensor, free: torch.Tensor, cover: torch.Tensor, block: int, adjust: float,
                  generator: Optional[torch.Generator] = None, most: Optional[int] = None) -> torch.Tensor:
    """Blocks of ``block`` frames around centres drawn uniformly among each row's ``free`` frames.

    Args:
        valid: ``[B, T]``, True at the frames that hold data (a prefix of each row); blocks are clamped to it.
        free: ``[B, T]``, subset of ``valid`` where centres may fall and frames may be covered.
        cover: ``[B]``, the number of frames each row's blocks are meant to cover; a row gets
            ``block_centre_count(cover, free frames, adjust, block)`` centres.
        block, adjust: as in :func:`block_mask`.
        generator: seeds the centres.
        most: the largest number of centres of a row, where the caller knows it on the host (else it is
            read from the device: a host sync).

    Returns:
        Boolean ``[B, T]``: the covered free frames.
    """
    batch = valid.size(0)
    num_free = free.sum(dim=1)
    num_centres = block_centre_count(cover, num_free, adjust, block)
    if most is None:
        most = int(num_centres.max()) if batch > 0 else 0
    if most == 0:
        return torch.zeros_like(free)
    # the k-th free frame of a row, k uniform in [0, free frames): with no frame taken, k is the frame itself
    draw = torch.rand(batch, most, generator=generator, device=valid.device)
    rank = (draw * num_free.unsqueeze(1)).long().clamp(max=(num_free - 1).clamp(min=0).unsqueeze(1))
    centres = torch.searchsorted(free.long().cumsum(dim=1), rank + 1).clamp(max=valid.size(1) - 1)
    # rows that need fewer centres than the most repeat their first one, which adds nothing
    centres = torch.where(torch.arange(most, device=valid.device) < num_centres.unsqueeze(1), centres, centres[:, :1])
    covered = blocks_around(centres, block, (valid.size(1),), lengths=valid.sum(dim=1))
    return covered & free & (num_centres > 0).unsqueeze(1)


def block_mask(
    batch: int,
    length: int,
    mask_prob: float,
    *,
    block: int = 5,
    adjust: float = 0.05,
    padding_mask: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    device: Optional[torch.device] = None,
) -> torch.Tensor:
    """data2vec 2.0's 1-D block mask (``compute_block_mask_1d`` with ``inverse_mask: false``), exact counts.

    Each row draws ``int(L_b * (mask_prob + adjust) / block)`` centres uniformly in its ``L_b`` unpadded
    frames and masks ``block`` frames around each (clamped to the row); then random frames are unmasked or
    masked until every row has ``int(mask_prob * L)`` (``L``: the shortest row), as ``require_same_masks``
    does.

    Args:
        batch, length: the mask's shape ``[B, T]``.
        mask_prob: fraction of frames to mask (data2vec 2.0 audio: 0.5).
        block: block length in frames (data2vec 2.0 audio ``mask_length``: 5).
        adjust: extra fraction of centres making up for overlaps (``mask_prob_adjust``: 0.05).
        padding_mask: ``[B, T]``, True at padding; padding is never masked.
        generator: seeds the draw; it must live on the mask's device.
        device: where to build the mask (default: ``padding_mask``'s, else the generator's, else the CPU).

    Returns:
        Boolean ``[B, T]``, True = masked.
    """
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    if block < 1:
        raise ValueError(f"block must be at least 1, got {block}")
    if adjust < 0:
        raise ValueError(f"adjust must be >= 0, got {adjust}")
    if device is None:
        device = padding_mask.device if padding_mask is not None else generator.device if generator is not None else None
    valid = valid_frames(batch, length, padding_mask, device)
    _, count = masked_frame_budget(valid, mask_prob, unpadded=padding_mask is None)
    if count == 0:
        return torch.zeros(batch, length, dtype=torch.bool, device=valid.device)
    most = None
    if padding_mask is None:
        # every row has the same centre count: the same float32 ops on a host copy of one row give it
        full = torch.tensor([length])
        most = int(block_centre_count(mask_prob * full, full, adjust, block)[0])
    covered = random_blocks(valid, valid, mask_prob * valid.sum(dim=1), block, adjust, generator, most)
    return exact_count(covered, count, valid, generator)


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

    num_centres = block_centre_count(num_visible, length, adjust, block ** len(shape))
    visible = torch.zeros(batch, length, dtype=torch.bool, device=device)
    if num_centres > 0:
        centres = torch.randint(0, length, (batch, num_centres), generator=generator, device=device)
        visible = blocks_around(centres, block, shape)
    everywhere = torch.ones_like(visible)
    return ~exact_count(visible, num_visible, everywhere, generator)
