"""Attention-map reuse (ARMHuBERT, Jang et al., Interspeech 2023, eq. 1) and the post-LN encoder built on it.

A *computing* layer owns query, key, value and output projections and can hand its post-softmax attention
map on. A *reuse* layer owns only value and output projections and multiplies the map of the last computing
layer with its own values, in the same (sample, head) order:

    ReuseMHSA(x) = [A_1 V_1, ..., A_H V_H] W_o,   A_h from the earlier layer, V_h = x W_{h,v}

``official_compat=True`` reproduces what the released ARMHuBERT code does instead (so that its checkpoints
behave as released): the map, stored head-major ``(H, B, T, T)``, is read back as if it were sample-major
``(B, H, T, T)`` (so with more than one utterance per batch, slots are paired with another sample's or
head's map), padded keys are set to -inf and the already normalised map goes through a second softmax.

Shapes are batch first: ``x`` is ``[B, T, C]``, a padding mask is ``[B, T]`` (True = padding) and an
attention map is ``[B, H, T, T]`` (rows = queries).
"""

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from fairseq import utils
from fairseq.models.wav2vec.wav2vec2 import make_conv_pos
from fairseq.modules import GradMultiply, LayerNorm
from fairseq.modules.transformer_sentence_encoder import init_bert_params


def official_reused_map(attention_map: torch.Tensor, padding_mask: Optional[torch.Tensor]) -> torch.Tensor:
    """The map a reuse layer of the released ARMHuBERT code really applies, ``[B, H, T, T]``.

    That code keeps fairseq's head-major per-head weights ``(H, B, T, T)`` and views them as ``B*H`` maps in
    sample-major order, so slot ``(b, h)`` receives the map of flat index ``b*H + h`` of the head-major
    tensor; it then masks padded keys of sample ``b`` and applies a softmax to the probabilities again.
    """
    batch, heads, tgt_len, src_len = attention_map.shape
    mixed = attention_map.transpose(0, 1).reshape(batch, heads, tgt_len, src_len).float()
    if padding_mask is not None:
        mixed = mixed.masked_fill(padding_mask[:, None, None, :], float("-inf"))
    return mixed.softmax(dim=-1).to(attention_map.dtype)


class ReuseAttention(nn.Module):
    """ReuseMHSA: own value and output projections, attention map taken from an earlier layer.

    The released code runs reuse layers without attention dropout ("0 in original paper"), so there is none.
    """

    def __init__(self, embed_dim: int, num_heads: int, official_compat: bool = False):
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.official_compat = official_compat
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, C]`` -> ``[B, H, T, C/H]``."""
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

    def merge_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, H, T, C/H]`` -> ``[B, T, C]``, then the output projection."""
        batch, _, length, _ = x.shape
        return self.out_proj(x.transpose(1, 2).reshape(batch, length, self.embed_dim))

    def forward(
        self, x: torch.Tensor, attention_map: torch.Tensor, padding_mask: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """``x [B, T, C]``, ``attention_map [B, H, T, T]`` (post-softmax, padded keys at 0) -> ``[B, T, C]``."""
        if self.official_compat:
            attention_map = official_reused_map(attention_map, padding_mask)
        values = self.split_heads(self.v_proj(x))
        return self.merge_heads(torch.matmul(attention_map.to(values.dtype), values))


class MapAttention(ReuseAttention):
    """Standard multi-head self-attention that can also return its post-softmax map for later layers.

    The map handed on is taken before attention dropout, as fairseq's per-head weights are.
    """

    def __init__(self, embed_dim: int, num_heads: int, attention_dropout: float = 0.0):
        super().__init__(embed_dim, num_heads)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.attention_dropout = attention_dropout

    def forward(
        self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, need_map: bool = False
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``x [B, T, C]`` -> (``[B, T, C]``, the map ``[B, H, T, T]`` if ``need_map`` else None)."""
        queries = self.split_heads(self.q_proj(x))
        keys = self.split_heads(self.k_proj(x))
        values = self.split_heads(self.v_proj(x))
        dropout = self.attention_dropout if self.training else 0.0
        if not need_map:  # fused kernel: nobody needs the map
            keep = None if padding_mask is None else ~padding_mask[:, None, None, :]
            out = F.scaled_dot_product_attention(queries, keys, values, attn_mask=keep, dropout_p=dropout)
            return self.merge_heads(out), None
        scores = torch.matmul(queries / math.sqrt(self.head_dim), keys.transpose(-2, -1))
        if padding_mask is not None:
            scores = scores.masked_fill(padding_mask[:, None, None, :], float("-inf"))
        attention_map = scores.float().softmax(dim=-1).to(values.dtype)
        out = torch.matmul(F.dropout(attention_map, p=dropout), values)
        return self.merge_heads(out), attention_map


class ReuseEncoderLayer(nn.Module):
    """Post-LN transformer layer (HuBERT BASE layout) whose attention computes or reuses a map."""

    def __init__(
        self,
        embed_dim: int,
        ffn_dim: int,
        num_heads: int,
        reuses_map: bool,
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation_dropout: float = 0.1,
        activation_fn: str = "gelu",
        official_compat: bool = False,
    ):
        super().__init__()
        self.reuses_map = reuses_map
        if reuses_map:
            self.self_attn = ReuseAttention(embed_dim, num_heads, official_compat)
        else:
            self.self_attn = MapAttention(embed_dim, num_heads, attention_dropout)
        self.self_attn_layer_norm = LayerNorm(embed_dim)
        self.fc1 = nn.Linear(embed_dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, embed_dim)
        self.final_layer_norm = LayerNorm(embed_dim)
        self.activation_fn = utils.get_activation_fn(activation_fn)
        self.dropout = nn.Dropout(dropout)
        self.activation_dropout = nn.Dropout(activation_dropout)

    def forward(
        self,
        x: torch.Tensor,
        padding_mask: Optional[torch.Tensor] = None,
        attention_map: Optional[torch.Tensor] = None,
        need_map: bool = False,
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """``x [B, T, C]`` -> (``[B, T, C]``, this layer's map if it computes one and ``need_map``)."""
        if self.reuses_map:
            if attention_map is None:
                raise ValueError("a reuse layer needs the attention map of an earlier layer")
            attended, new_map = self.self_attn(x, attention_map, padding_mask), None
        else:
            attended, new_map = self.self_attn(x, padding_mask, need_map)
        x = self.self_attn_layer_norm(x + self.dropout(attended))
        hidden = self.activation_dropout(self.activation_fn(self.fc1(x)))
        x = self.final_layer_norm(x + self.dropout(self.fc2(hidden)))
        return x, new_map


def check_reuse_pattern(reuse: Sequence[bool], num_layers: int) -> List[bool]:
    """Validates a reuse pattern (True = the layer reuses the last computed map) and returns it as a list."""
    pattern = [bool(r) for r in reuse]
    if len(pattern) != num_layers:
        raise ValueError(f"model.reuse_attention has {len(pattern)} entries but the encoder has {num_layers} layers")
    if pattern and pattern[0]:
        raise ValueError("model.reuse_attention: the first layer has no earlier map to reuse; it must be false")
    return pattern


class ReuseTransformerEncoder(nn.Module):
    """Convolutional positional embedding, LayerNorm and post-LN layers, some of which reuse attention maps.

    ``layer_grad_scale`` reproduces the released code's per-layer gradient scaling (its "GradHuBERT"): with
    ``N`` layers and 0-based index ``i``, ``m_i = (N - i) / (N - i + 1)`` scales the gradient of the state
    passed on by ``m_i`` and that of the copy returned for distillation by a further ``1 - m_i``.

    ``layerdrop`` drops attention groups, a computing layer together with the layers that reuse its map,
    so that a reuse layer never runs without its map.
    """

    def __init__(
        self,
        embed_dim: int,
        ffn_dim: int,
        num_heads: int,
        reuse_attention: Sequence[bool],
        dropout: float = 0.1,
        attention_dropout: float = 0.1,
        activation_dropout: float = 0.1,
        activation_fn: str = "gelu",
        conv_pos: int = 128,
        conv_pos_groups: int = 16,
        layerdrop: float = 0.0,
        official_compat: bool = False,
        layer_grad_scale: bool = False,
    ):
        super().__init__()
        self.reuse_attention = check_reuse_pattern(reuse_attention, len(reuse_attention))
        self.pos_conv = make_conv_pos(embed_dim, conv_pos, conv_pos_groups)
        self.layer_norm = LayerNorm(embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.layerdrop = layerdrop
        self.layer_grad_scale = layer_grad_scale
        self.layers = nn.ModuleList(
            ReuseEncoderLayer(
                embed_dim, ffn_dim, num_heads, reuses, dropout, attention_dropout, activation_dropout,
                activation_fn, official_compat,
            )
            for reuses in self.reuse_attention
        )
        # whether some later layer reuses the map of layer i
        self.map_needed = [
            not reuses and i + 1 < len(self.layers) and self.reuse_attention[i + 1]
            for i, reuses in enumerate(self.reuse_attention)
        ]
        self.layers.apply(init_bert_params)

    def dropped_layers(self) -> List[bool]:
        """Which layers layerdrop skips in this forward pass (whole attention groups)."""
        dropped = []
        for reuses in self.reuse_attention:
            if reuses:
                dropped.append(dropped[-1])
            else:
                dropped.append(self.training and self.layerdrop > 0 and float(torch.rand(())) < self.layerdrop)
        return dropped

    def forward(
        self, x: torch.Tensor, padding_mask: Optional[torch.Tensor] = None, num_layers: Optional[int] = None
    ) -> List[torch.Tensor]:
        """``x [B, T, C]`` (front-end features) -> the output ``[B, T, C]`` of every layer that ran.

        ``num_layers`` stops after that many layers. Dropped layers (layerdrop) are missing from the list.
        """
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.unsqueeze(-1), 0.0)
        x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        x = self.dropout(self.layer_norm(x))
        outputs, attention_map = [], None
        total = len(self.layers)
        for i, (layer, dropped) in enumerate(zip(self.layers, self.dropped_layers())):
            if num_layers is not None and i >= num_layers:
                break
            if dropped:
                continue
            x, new_map = layer(x, padding_mask, attention_map, need_map=self.map_needed[i])
            if new_map is not None:
                attention_map = new_map
            if self.layer_grad_scale:
                passed_on = (total - i) / (total - i + 1)
                x = GradMultiply.apply(x, passed_on)
                outputs.append(GradMultiply.apply(x, 1.0 - passed_on))
            else:
                outputs.append(x)
        return outputs
