"""Dispersion-weighted masking (DWM, Niizumi et al. 2026): busy spectrogram patches are masked more often.

Each patch's weight is its mean absolute deviation (MAD) plus a small epsilon. The masked set is drawn
without replacement with probability proportional to the weights, then a ``hint_ratio`` share of it is
swapped with random patches so that the task is not too hard early in training (see ``schedules``).
"""

from typing import Optional

import torch

from .span import top_k_mask
from .unstructured import masked_count

#: keeps flat (for example silent, padded) patches drawable; the official code adds 1e-12 to the MAD
DISPERSION_EPS = 1e-12


def patch_dispersion(patches: torch.Tensor, eps: float = DISPERSION_EPS) -> torch.Tensor:
    """Mean absolute deviation of each patch of ``patches [B, N, P]`` plus ``eps``, as float32 ``[B, N]``."""
    values = patches.float()
    return (values - values.mean(dim=-1, keepdim=True)).abs().mean(dim=-1) + eps


def weighted_sample_mask(weights: torch.Tensor, count: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Marks ``count`` positions per row of ``weights [B, N]``, drawn without replacement ∝ the weights.

    Adding Gumbel noise to the log-weights and keeping the top ``count`` gives exactly the distribution of
    sequential draws without replacement (what ``torch.multinomial(weights, count)`` does), in one batched
    ``topk`` on the weights' device.
    """
    uniform = torch.rand(weights.shape, generator=generator, device=weights.device)
    gumbel = -torch.log(-torch.log(uniform.clamp_min(torch.finfo(uniform.dtype).tiny)))
    return top_k_mask(weights.log() + gumbel, count)


def exchange_hints(
    mask: torch.Tensor, hint_ratio: float, generator: Optional[torch.Generator] = None,
    num_masked: Optional[int] = None,
) -> torch.Tensor:
    """Reveals ``int(hint_ratio * masked)`` random masked positions and masks as many random other ones.

    The new masked positions are drawn from the visible positions *and* the just revealed ones, so with
    ``hint_ratio = 1`` the result is a uniform random mask whatever ``mask`` was. Counts stay exact.
    ``num_masked``: the masked count of every row, where the caller knows it (else read from the device: a
    host sync).
    """
    if not 0.0 <= hint_ratio <= 1.0:
        raise ValueError(f"hint_ratio must be in [0, 1], got {hint_ratio}")
    if num_masked is None:
        num_masked = int(mask[0].sum()) if mask.shape[0] else 0
    num_hints = int(num_masked * hint_ratio)
    if num_hints == 0:
        return mask
    noise = torch.rand((2,) + mask.shape, generator=generator, device=mask.device)
    revealed = top_k_mask(noise[0].masked_fill(~mask, -1.0), num_hints)
    candidates = ~mask | revealed
    remasked = top_k_mask(noise[1].masked_fill(~candidates, -1.0), num_hints)
    return (mask & ~revealed) | remasked


def dispersion_weighted_mask(
    patches: torch.Tensor,
    mask_ratio: float,
    hint_ratio: float,
    *,
    generator: Optional[torch.Generator] = None,
) -> torch.Tensor:
    """DWM on the raw (normalised, not embedded) patches ``[B, N, P]``.

    Args:
        patches: the input cut into patches, in the same order as the tokens (for M2D, ``[B, 190, 256]``
            from an 80x608 log-mel spectrogram).
        mask_ratio: fraction of patches to mask.
        hint_ratio: share of the dispersion-weighted masked patches swapped for uniformly random ones;
            1 is uniform random masking, 0 is pure DWM (see ``schedules.hint_ratio``).
        generator: seeds the draw; it must live on ``patches.device``.

    Returns:
        Boolean ``[B, N]`` on ``patches.device``, True = masked, ``masked_count(N, mask_ratio)`` per row.
    """
    if patches.dim() != 3:
        raise ValueError(f"patches must be [batch, patches, values], got shape {tuple(patches.shape)}")
    count = masked_count(patches.shape[1], mask_ratio)
    if not 0.0 <= hint_ratio <= 1.0:
        raise ValueError(f"hint_ratio must be in [0, 1], got {hint_ratio}")
    with torch.no_grad():
        initial = weighted_sample_mask(patch_dispersion(patches), count, generator)
        return exchange_hints(initial, hint_ratio, generator, num_masked=count)
