"""CLAP pieces for M2D-CLAP: audio projectors, the batch-gathered symmetric contrastive loss, the logit scale.

The caption side is a fixed sentence embedding computed offline (M2D-CLAP 2024 and 2025 stage 1), so only
the audio projector, an optional linear caption projection and the temperature are learned here.
"""

import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import Block

from .spectrogram_vit import LayerNorm, init_weights

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
    embedding. ``[B, n, D]`` -> ``[B, D]``."""

    def __init__(self, dim: int, depth: int = 1):
        super().__init__()
        self.token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, 1, 1.0, qkv_bias=True, norm_layer=LayerNorm) for _ in range(depth)])
        self.norm = LayerNorm(dim)
        self.blocks.apply(init_weights)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.token.to(tokens.dtype).expand(tokens.shape[0], -1, -1), tokens], dim=1)
        return self.norm(self.blocks(x))[:, 0]


def gather_with_local_grad(features: torch.Tensor) -> torch.Tensor:
    """``[b, D]`` on each of R ranks -> ``[R * b, D]`` in rank order, differentiable through this rank's own
    rows only (the others arrive as constants); the input itself on a single process."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return features
    gathered = [torch.empty_like(features) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, features.detach().contiguous())
    gathered[dist.get_rank()] = features
    return torch.cat(gathered, dim=0)


def clip_loss(audio: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE of paired ``audio [B, D]`` and ``text [B, D]``: both L2-normalised, logits
    ``exp(logit_scale) * A T^T``, the mean of the audio->text and text->audio cross-entropies with the pairs
    on the diagonal. Under distributed training both sides are gathered over every rank first, so every
    rank scores the whole global batch."""
    audio = gather_with_local_grad(F.normalize(audio.float(), dim=-1))
    text = gather_with_local_grad(F.normalize(text.float(), dim=-1))
    logits = logit_scale.float().exp() * audio @ text.t()
    targets = torch.arange(logits.shape[0], device=logits.device)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.t(), targets))
