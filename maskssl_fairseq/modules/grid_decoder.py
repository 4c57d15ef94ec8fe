"""EAT's lightweight 2-D CNN decoder on the patch grid: the image counterpart of data2vec 2.0's 1-D audio
decoder (``data2vec2_audio.RegressionDecoder``), with the same block (grouped conv, LayerNorm without
affine, GELU, residual) in two dimensions.
"""

from typing import Tuple

import torch
import torch.nn as nn


class ChannelLayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a ``[B, C, H, W]`` tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class GridConvDecoder(nn.Module):
    """``[B, N, in_dim]`` tokens of an ``(H, W)`` grid (row-major) -> ``[B, N, in_dim]`` predictions.

    ``layers`` blocks of [Conv2d(kernel, groups, same padding) -> LayerNorm without affine -> GELU], each
    with a residual connection (the first one too when its input width equals ``dim``), then a linear
    projection back to ``in_dim``. EAT-base: 6 blocks of 768 channels, kernel 3, 16 groups.
    """

    def __init__(self, in_dim: int, dim: int, layers: int, kernel: int, groups: int, grid: Tuple[int, int]):
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"the decoder kernel must be odd for same padding, got {kernel}")
        self.grid = grid
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(in_dim if i == 0 else dim, dim, kernel, padding=kernel // 2, groups=groups),
                ChannelLayerNorm2d(dim, elementwise_affine=False),
                nn.GELU(),
            )
            for i in range(layers)
        )
        self.proj = nn.Linear(dim, in_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, channels = tokens.shape
        x = tokens.transpose(1, 2).reshape(batch, channels, *self.grid)
        for block in self.blocks:
            y = block(x)
            x = y + x if y.shape == x.shape else y
        return self.proj(x.flatten(2).transpose(1, 2))
