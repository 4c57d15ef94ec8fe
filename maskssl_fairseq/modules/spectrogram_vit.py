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


def sincos_positions(dim: int, grid: Tuple[int, int], time_first: bool) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings ``[H * W, dim]`` of an ``(H, W) = (frequency, time)`` grid:
    half the channels encode the time (column) index and half the frequency (row) index, each as MAE's 1-D
    sin/cos of frequencies ``1 / 10000^(k / (dim/4))``. ``time_first``: MAE's and M2D's order (their images
    are frequency x time and MAE encodes the column first); EAT's images are time x frequency, so the same
    MAE code puts frequency first there."""
    if dim % 4:
        raise ValueError(f"the embedding width must be a multiple of 4 for 2-D sin-cos positions, got {dim}")
    height, width = grid
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                                indexing="ij")
    frequencies = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim / 4))

    def encode(position: torch.Tensor) -> torch.Tensor:
        angles = position.reshape(-1, 1) * frequencies
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    halves = [encode(cols), encode(rows)] if time_first else [encode(rows), encode(cols)]
    return torch.cat(halves, dim=1).float()


def fill_legacy_positions(module: nn.Module, state_dict: dict, prefix: str, table: torch.Tensor) -> None:
    """A checkpoint saved before the position table was stored (before 2026-12-06) lacks ``pos_embed``: it
    was trained with the table built then, frequency in the first half of the channels; put that one in."""
    key = prefix + "pos_embed"
    if key not in state_dict:
        state_dict[key] = table.to(module.pos_embed.device)


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
        post_ln: data2vec 2.0's post-LN blocks (EAT), whose input [CLS + patches] is layer-normalised first
            (data2vec 2.0's ``context_encoder.norm``) and whose output is not, instead of pre-LN blocks and a
            final LayerNorm (MAE, M2D); only post-LN blocks give ``forward_layers`` their FFN outputs.
        time_first_positions: the channel order of the position table (:func:`sincos_positions`): True for
            M2D / MSM-MAE, False for EAT. The table is stored in checkpoints (``pos_embed``), as the official
            models store theirs.
    """

    def __init__(self, input_size: Tuple[int, int], patch: int, dim: int, depth: int, heads: int, mlp_ratio: float,
                 post_ln: bool = False, time_first_positions: bool = True):
        super().__init__()
        freq, time = input_size
        if freq % patch or time < patch:
            raise ValueError(f"a {freq} x {time} spectrogram does not cut into {patch} x {patch} patches")
        self.patch = patch
        self.grid = (freq // patch, time // patch)
        self.patch_embed = nn.Conv2d(1, dim, kernel_size=patch, stride=patch)
        self.register_buffer("pos_embed", sincos_positions(dim, self.grid, time_first_positions))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.post_ln = post_ln
        self.blocks = post_ln_transformer(dim, depth, heads, mlp_ratio) if post_ln else transformer(dim, depth, heads, mlp_ratio)
        self.context_norm = LayerNorm(dim) if post_ln else None
        self.norm = nn.Identity() if post_ln else LayerNorm(dim)
        self.apply(init_weights)
        nn.init.xavier_uniform_(self.patch_embed.weight.view(dim, -1))
        nn.init.normal_(self.cls_token, std=0.02)

    @property
    def num_patches(self) -> int:
        return self.grid[0] * self.grid[1]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        fill_legacy_positions(self, state_dict, prefix, sincos_positions(self.pos_embed.shape[-1], self.grid, False))
        if self.context_norm is not None and prefix + "context_norm.weight" not in state_dict:
            raise KeyError(f"'{prefix}context_norm.weight' is missing: an EAT checkpoint from before 2026-12-06, when "
                           "the LayerNorm that EAT applies to [CLS + visible patches] before its blocks was added; "
                           "it cannot be loaded into the corrected model")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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
        x, ffn_outputs = self.context_norm(self.with_cls(tokens)), []
        for block in self.blocks:
            x, ffn = block(x, None)
            ffn_outputs.append(ffn)
        return x, ffn_outputs


class MaskedTokenPredictor(nn.Module):
    """MAE decoder / M2D predictor: fills mask tokens in, runs a narrow transformer, predicts masked positions.

    ``forward(encoded [B, 1 + Nv, D], order [B, N])`` -> ``[B, Nm, out_dim]`` for the masked positions
    in ``order`` (ascending position).
    """

    def __init__(self, in_dim: int, dim: int, depth: int, heads: int, mlp_ratio: float, out_dim: int,
                 grid: Tuple[int, int]):
        super().__init__()
        self.grid = grid
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.register_buffer("pos_embed", self.positions(dim, grid, time_first=True))  # stored, as M2D / MAE store it
        self.blocks = transformer(dim, depth, heads, mlp_ratio)
        self.norm = LayerNorm(dim)
        self.head = nn.Linear(dim, out_dim)
        self.apply(init_weights)
        nn.init.normal_(self.mask_token, std=0.02)

    @staticmethod
    def positions(dim: int, grid: Tuple[int, int], time_first: bool) -> torch.Tensor:
        """``[1 + N, dim]``: a zero row for CLS, then the patches' table."""
        return torch.cat([torch.zeros(1, dim), sincos_positions(dim, grid, time_first)])

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        fill_legacy_positions(self, state_dict, prefix, self.positions(self.pos_embed.shape[-1], self.grid, False))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

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
