"""CLAP pieces for M2D-CLAP: audio projectors, the batch-gathered symmetric contrastive loss, the logit scale.

The caption side is a fixed sentence embedding computed offline (M2D-CLAP 2024 and 2025 stage 1), so only
the audio projector, an optional linear caption projection and the temperature are learned here.
"""

import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from fairseq.modules import GradMultiply
from timm.models.vision_transformer import Block

from .spectrogram_vit import init_weights

LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)


class MeanMLPProjector(nn.Module):
    """M2D-CLAP 2024: mean over the tokens, then Linear-ReLU-Linear. ``[B, n, D]`` -> ``[B, D]``."""

    def __init__(self, dim: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, dim))
        self.apply(init_weights)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.mlp(tokens.mean(dim=1))


class SemanticTokenProjector(nn.Module):
    """M2D-CLAP 2025 (``AudioToSemantic``): a zero-initialised token, without position, put in front of the
    patch tokens, ``depth`` single-head ViT blocks of MLP ratio 1, a LayerNorm; the token's output is the
    embedding. ``[B, n, D]`` -> ``[B, D]``. Its LayerNorms keep torch's default epsilon (1e-5), as the
    official ``AudioToSemantic`` does (the encoder's are 1e-6)."""

    def __init__(self, dim: int, depth: int = 1):
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, 1, 1.0, qkv_bias=True, norm_layer=nn.LayerNorm) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.blocks.apply(init_weights)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.token.to(tokens.dtype).expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return self.norm(self.blocks(x))[:, 0]


def gather_with_local_grad(features: torch.Tensor) -> torch.Tensor:
    """``[b_r, D]`` on each rank ``r`` -> ``[sum b_r, D]`` in rank order, differentiable through this rank's own
    rows only (the others arrive as constants); the input itself on a single process. The ``b_r`` may differ
    (the last batches of an epoch), so the sizes are exchanged first and the rows padded to the largest."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features
    world = dist.get_world_size()
    size = torch.tensor([features.shape[0]], device=features.device)
    sizes = [torch.empty_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes = [int(s) for s in sizes]
    padded = features.detach().new_zeros((max(sizes), *features.shape[1:]))
    padded[: features.shape[0]] = features.detach()
    gathered = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(gathered, padded)
    rows = [g[:n] for g, n in zip(gathered, sizes)]
    rows[dist.get_rank()] = features
    return torch.cat(rows, dim=0)


def clip_loss(audio: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of paired ``audio [B, D]`` and ``text [B, D]``: both L2-normalised, logits
    ``exp(logit_scale) * A T^T``, the mean of the audio->text and text->audio cross-entropies with the pairs
    on the diagonal. Under distributed training both sides are gathered over every rank first, so every
    rank scores the whole global batch of ``B`` rows, and the gradient reaches only this rank's own ``b`` rows,
    multiplied by ``B / b``: weighted by this rank's share ``b / B`` and summed over the ranks, as fairseq
    treats a loss scaled by the rank's sample size, every row then gets the global-batch loss's gradient and the
    logit scale its gradient once, so the update does not depend on how the batch is split. (Without the
    factor, as in the official code, whose ranks' gradients DDP averages, the rows get ``1 / world size`` of it.)"""
    own_rows = audio.shape[0]
    audio = gather_with_local_grad(F.normalize(audio.float(), dim=-1))
    text = gather_with_local_grad(F.normalize(text.float(), dim=-1))
    if audio.shape[0] != own_rows:
        audio, text = (GradMultiply.apply(side, audio.shape[0] / own_rows) for side in (audio, text))
    with torch.autocast(device_type=audio.device.type, enabled=False):  # autocast would run the product in half
        logits = logit_scale.float().exp() * audio @ text.t()
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))
