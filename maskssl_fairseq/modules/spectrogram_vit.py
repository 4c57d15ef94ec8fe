"""ViT pieces on log-mel patches shared by M2D, MSM-MAE and EAT (MAE-style timm blocks, or data2vec 2.0's
post-LN blocks for EAT).

Shapes: a spectrogram ``[B, 1, F, T]`` cut into ``p x p`` patches gives a ``(F/p, T/p)`` grid whose
``N`` tokens are numbered frequency-row first (``index = f * (T/p) + t``), as ``Conv2d(...).flatten(2)``
numbers them; masks are boolean ``[B, N]`` with True = masked and the same count in every row.
"""

from functools import partial
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from timm.models.vision_transformer import Block

from .data2vec2_audio import Data2Vec2AudioConfig, TransformerBlock

LayerNorm = partial(nn.LayerNorm, eps=1e-6)


def sincos_positions(dim: int, grid: Tuple[int, int]) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings ``[H * W, dim]``: half the channels encode the row
    (frequency), half the column (time), each as MAE's 1-D sin/cos of frequencies ``1 / 10000^(k / (dim/4))``."""
    if dim % 4:
        raise ValueError(f"the embedding width must be a multiple of 4 for 2-D sin-cos positions, got {dim}")
    height, width = grid
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                                indexing="ij")
    frequencies = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def encode(position: torch.Tensor) -> torch.Tensor:
        angles = position.reshape(-1, 1) * frequencies
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    return torch.cat([encode(rows), encode(cols)], dim=1).float()


def patchify(spectrogram: torch.Tensor, patch: int) -> torch.Tensor:
    """``[B, 1, F, T]`` -> raw patches ``[B, N, patch * patch]`` in token order (DWM weights, MAE targets)."""
    batch, _, freq, time = spectrogram.shape
    grid = spectrogram.reshape(batch, freq // patch, patch, time // patch, patch)
    return grid.permute(0, 1, 3, 2, 4).reshape(batch, (freq // patch) * (time // patch), patch * patch)


def split_by_mask(tokens: torch.Tensor, mask: torch.Tensor,
                  num_masked: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``tokens [B, N, D]`` -> (visible ``[B, Nv, D]``, masked ``[B, Nm, D]``, order ``[B, N]``).

    ``order`` lists the visible positions then the masked ones, each ascending; ``order.argsort(1)`` puts a
    ``cat([visible, masked])`` sequence back into position order. ``num_masked``: the mask's count per row,
    where the caller knows it on the host (else read from ``mask``: a host sync).
    """
    order = mask.to(torch.int8).argsort(dim=1, stable=True)
    if num_masked is None:
        num_masked = int(mask[0].sum()) if mask.shape[0] else 0
    num_visible = mask.shape[1] - num_masked if mask.shape[0] else 0
    gathered = tokens.gather(1, order.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
    return gathered[:, :num_visible], gathered[:, num_visible:], order


def transformer(dim: int, depth: int, heads: int, mlp_ratio: float) -> nn.Sequential:
    """``depth`` pre-LN ViT blocks with qkv bias (timm's fused attention), as in MAE and M2D."""
    return nn.Sequential(*[Block(dim, heads, mlp_ratio, qkv_bias=True, norm_layer=LayerNorm) for _ in range(depth)])


def post_ln_transformer(dim: int, depth: int, heads: int, mlp_ratio: float, norm_eps: float = 1e-6) -> nn.ModuleList:
    """``depth`` post-LN blocks without dropout (data2vec 2.0's, as EAT uses them), each returning its FFN output."""
    cfg = Data2Vec2AudioConfig(embed_dim=dim, num_heads=heads, mlp_ratio=mlp_ratio, norm_eps=norm_eps,
                               encoder_dropout=0.0, post_mlp_drop=0.0, attention_dropout=0.0, activation_dropout=0.0)
    return nn.ModuleList(TransformerBlock(cfg, drop_path=0.0) for _ in range(depth))


def init_weights(module: nn.Module) -> None:
    """MAE's initialisation: xavier-uniform linears with zero bias, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class SpectrogramViT(nn.Module):
    """Patch embedding, fixed positions, CLS token and transformer over the *visible* patches.

    Args:
        input_size: ``(F, T)`` of the training spectrogram (M2D: 80 x 608, a 5 x 38 grid; EAT: 128 x 1024,
            8 x 64).
        patch: patch side (16).
        dim, depth, heads, mlp_ratio: ViT-B is 768, 12, 12, 4.
        post_ln: data2vec 2.0's post-LN blocks and no final norm (EAT) instead of pre-LN blocks and a final
            LayerNorm (MAE, M2D); only post-LN blocks give ``forward_layers`` their FFN outputs.
    """

    def __init__(self, input_size: Tuple[int, int], patch: int, dim: int, depth: int, heads: int, mlp_ratio: float,
                 post_ln: bool = False):
        super().__init__()
        freq, time = input_size
        if freq % patch or time < patch:
            raise ValueError(f"a {freq} x {time} spectrogram does not cut into {patch} x {patch} patches")
        self.patch = patch
        self.grid = (freq // patch, time // patch)
        self.patch_embed = nn.Conv2d(1, dim, kernel_size=patch, stride=patch)
        self.register_buffer("pos_embed", sincos_positions(dim, self.grid), persistent=False)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.post_ln = post_ln
        self.blocks = post_ln_transformer(dim, depth, heads, mlp_ratio) if post_ln else transformer(dim, depth, heads, mlp_ratio)
        self.norm = nn.Identity() if post_ln else LayerNorm(dim)
        self.apply(init_weights)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(dim, -1))
        nn.init.normal_(self.cls_token, std=0.02)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def embed(self, spectrogram: torch.Tensor) -> torch.Tensor:
        """``[B, 1, F, T']`` with ``T' <= T`` -> position-embedded patch tokens ``[B, F/p * T'/p, D]``."""
        # the front end gives float32; a half-precision model (fairseq --fp16) needs its own dtype here
        tokens = self.patch_embed(spectrogram.to(self.patch_embed.weight.dtype)).flatten(2).transpose(1, 2)
        time_patches = spectrogram.shape[-1] // self.patch
        if time_patches > self.grid[1]:
            raise ValueError(f"{time_patches} time patches, the encoder was built for {self.grid[1]}")
        positions = self.pos_embed.view(self.grid[0], self.grid[1], -1)[:, :time_patches].reshape(-1, tokens.shape[-1])
        return tokens + positions.to(tokens.dtype)

    def with_cls(self, tokens: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1).to(tokens.dtype), tokens], dim=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Embedded tokens ``[B, n, D]`` (all, or the visible ones) -> ``[B, 1 + n, D]`` with CLS first."""
        if self.post_ln:
            return self.forward_layers(tokens)[0]
        return self.norm(self.blocks(self.with_cls(tokens)))

    def forward_layers(self, tokens: torch.Tensor) -> Tuple[torch.Tensor, List[torch.Tensor]]:
        """Post-LN encoders: ``[B, n, D]`` -> (output ``[B, 1 + n, D]``, every block's FFN output ``[B, 1 + n, D]``)."""
        if not self.post_ln:
            raise ValueError("only a post-LN encoder (post_ln=True) returns its blocks' FFN outputs")
        x, ffn_outputs = self.with_cls(tokens), []
        for block in self.blocks:
            x, ffn = block(x, None)
            ffn_outputs.append(ffn)
        return x, ffn_outputs

    def chunk_tokens(self, spectrogram: torch.Tensor) -> List[torch.Tensor]:
        """Unmasked patch tokens (CLS dropped) of a spectrogram of any length ``[B, 1, F, L]``, cut into
        chunks of the training width (the last one shorter): one ``[B, (F/p) * t, D]`` per chunk. Frames past
        the last whole patch are dropped; a clip shorter than one patch is zero-padded to one."""
        width = self.grid[1] * self.patch
        if spectrogram.shape[-1] < self.patch:
            spectrogram = nn.functional.pad(spectrogram, (0, self.patch - spectrogram.shape[-1]))
        usable = spectrogram.shape[-1] // self.patch * self.patch
        return [self(self.embed(spectrogram[..., start:min(start + width, usable)]))[:, 1:]
                for start in range(0, usable, width)]

    def frame_features(self, spectrogram: torch.Tensor) -> torch.Tensor:
        """Unmasked features of a spectrogram of any length ``[B, 1, F, L]`` -> ``[B, L // p, (F/p) * D]``:
        per time step the ``F/p`` frequency tokens are concatenated (M2D: 5 x 768 = 3840-d every 160 ms)."""
        chunks = []
        for tokens in self.chunk_tokens(spectrogram):  # [B, f * t, D]
            batch, _, dim = tokens.shape
            chunks.append(tokens.view(batch, self.grid[0], -1, dim).permute(0, 2, 1, 3).reshape(batch, -1, self.grid[0] * dim))
        return torch.cat(chunks, dim=1)


class MaskedTokenPredictor(nn.Module):
    """MAE decoder / M2D predictor: fills mask tokens in, runs a narrow transformer, predicts masked positions.

    ``forward(encoded [B, 1 + Nv, D], order [B, N])`` -> ``[B, Nm, out_dim]`` for the masked positions
    in ``order`` (ascending position).
    """

    def __init__(self, in_dim: int, dim: int, depth: int, heads: int, mlp_ratio: float, out_dim: int,
                 grid: Tuple[int, int]):
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        positions = torch.cat([torch.zeros(1, dim), sincos_positions(dim, grid)])  # CLS position is zero
        self.register_buffer("pos_embed", positions, persistent=False)
        self.blocks = transformer(dim, depth, heads, mlp_ratio)
        self.norm = LayerNorm(dim)
        self.head = nn.Linear(dim, out_dim)
        self.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, encoded: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
        x = self.embed(encoded)
        cls, visible = x[:, :1], x[:, 1:]
        batch, num_patches = order.shape
        num_visible = visible.shape[1]
        filled = torch.cat([visible, self.mask_token.to(x.dtype).expand(batch, num_patches - num_visible, -1)], dim=1)
        restore = order.argsort(dim=1)
        in_place = filled.gather(1, restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        x = torch.cat([cls, in_place], dim=1) + self.pos_embed.to(x.dtype)
        x = self.head(self.norm(self.blocks(x)))[:, 1:]
        masked_positions = order[:, num_visible:]
        return x.gather(1, masked_positions.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
