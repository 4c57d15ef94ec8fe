"""Self-guided informed masking (SGIM, from SG-MAE), for the cost comparison the DWM paper makes.

The model's own encoder features of *all* patches are split in two by a Normalized-Cut approximation:
the sign of each token's projection on the first principal component of the (L2-normalised) tokens,
as the official code's default PCA variant does. Each token is scored by its best cosine similarity to
the two cluster centres; the lowest-scoring patches are masked, then the DWM hint exchange applies.
The expensive part is not here but in the caller: an extra encoder pass over every patch, every step.
"""

from typing import Optional

import torch
import torch.nn.functional as F

from .dispersion import exchange_hints
from .span import top_k_mask
from .unstructured import masked_count


def informed_mask(
    features: torch.Tensor, mask_ratio: float, hint_ratio: float, *, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """SGIM on encoder features of all patches ``[B, N, D]`` -> boolean ``[B, N]``, True = masked.

    Args:
        features: the online encoder's output tokens for every patch (no CLS), computed without grad.
        mask_ratio: fraction of patches to mask.
        hint_ratio: share of the informed mask swapped for uniformly random patches (1 = random masking).
        generator: seeds the hint exchange; it must live on ``features.device``.
    """
    if features.dim() != 3:
        raise ValueError(f"features must be [batch, patches, dim], got shape {tuple(features.shape)}")
    count = masked_count(features.shape[1], mask_ratio)
    with torch.no_grad():
        tokens = F.normalize(features.float(), dim=-1)
        centred = tokens - tokens.mean(dim=1, keepdim=True)
        # first principal direction of each sample's tokens: top right-singular vector
        direction = torch.linalg.svd(centred, full_matrices=False).Vh[:, 0]  # [B, D]
        projection = torch.einsum("bnd,bd->bn", centred, direction)
        in_first = (projection > projection.mean(dim=1, keepdim=True)).float().unsqueeze(-1)  # [B, N, 1]
        centres = torch.stack([
            (tokens * in_first).sum(dim=1) / in_first.sum(dim=1).clamp_min(1.0),
            (tokens * (1 - in_first)).sum(dim=1) / (1 - in_first).sum(dim=1).clamp_min(1.0),
        ], dim=1)  # [B, 2, D]
        score = torch.einsum("bnd,bkd->bnk", tokens, F.normalize(centres, dim=-1)).amax(dim=-1)
        return exchange_hints(top_k_mask(-score, count), hint_ratio, generator, num_masked=count)
