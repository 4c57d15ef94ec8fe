"""data2vec 2.0 audio backbone (Baevski et al., 2022), for models that pretrain by self-distillation.

fairseq's own data2vec 2.0 code (``examples/data2vec``) does not import on Python 3.11 and needs the
fairseq repository layout, so the pieces live here, written from the paper and its published
configuration. fairseq's core is reused: the CNN feature extractor (through ``cnn_frontend``), ``SamePad``,
``EMAModule`` and the BERT initialisation; timm provides the MLP and stochastic depth.

Pieces (shapes: B batch, T frames, D ``embed_dim``, H heads):

- :class:`ContextEncoder`: convolutional positional encoding, the "prenet" blocks and the main blocks,
  with ALiBi attention biases; it can run on the unmasked frames only (the student) or on everything
  (the teacher, fine-tuning).
- :class:`TransformerBlock`: post-LN block that also returns its FFN output, data2vec 2.0's target.
- :func:`conv_decoder_blocks` / :class:`RegressionDecoder`: the lightweight convolutional decoder.
- :class:`Data2Vec2AudioModel`: data2vec 2.0 audio pretraining (EMA teacher, instance-normalised top-K
  targets, ``clone_batch``, 1-D block masking with masked frames removed from the student), with hooks
  (``draw_mask``, ``teacher_extras``, ``extra_losses``) through which EH-MAM and later methods change
  how the mask is drawn and add losses. It is not registered itself; subclasses register it.

Config field names are data2vec 2.0's (``embed_dim``, ``encoder_dropout``, ``post_mlp_drop``,
``prenet_dropout``, ``local_grad_mult``, ``mask_prob`` ...), flattened out of data2vec 2.0's
``modalities.audio`` group, because fairseq's ``wav2vec_ctc`` overrides them *by name* when it
fine-tunes a pretrained checkpoint.
"""

import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.layers import DropPath, Mlp

from fairseq.dataclass import ChoiceEnum, FairseqDataclass
from fairseq.models import BaseFairseqModel
from fairseq.models.wav2vec.wav2vec2 import ConvFeatureExtractionModel
from fairseq.modules import EMAModule, SamePad
from fairseq.modules.transformer_sentence_encoder import init_bert_params

from ..masking import block_mask, wav2vec2_span_mask
from ..masking.wav2vec2 import MASK_TYPES
from .cnn_frontend import frame_padding_mask, parse_config_list, run_feature_extractor
from .ema_teacher import EMATeacherMixin, TeacherModel

MASK_SELECTIONS = ChoiceEnum(list(MASK_TYPES))


@dataclass
class Data2Vec2AudioConfig(FairseqDataclass):
    # transformer
    embed_dim: int = field(default=768, metadata={"help": "transformer width"})
    depth: int = field(default=8, metadata={"help": "main transformer blocks; targets come from these"})
    prenet_depth: int = field(default=4, metadata={"help": "blocks between positional encoding and main blocks"})
    num_heads: int = 12
    mlp_ratio: float = 4.0
    norm_eps: float = 1e-5
    encoder_dropout: float = field(default=0.1, metadata={"help": "dropout after attention"})
    post_mlp_drop: float = field(default=0.1, metadata={"help": "dropout after the FFN, before the residual"})
    attention_dropout: float = 0.1
    activation_dropout: float = field(default=0.0, metadata={"help": "dropout inside the FFN"})
    dropout_input: float = field(default=0.0, metadata={"help": "dropout before the main blocks"})
    layerdrop: float = field(default=0.05, metadata={"help": "probability of skipping a main block"})
    prenet_layerdrop: float = field(default=0.05, metadata={"help": "probability of skipping a prenet block"})
    prenet_dropout: float = field(default=0.1, metadata={"help": "dropout before the prenet blocks"})
    start_drop_path_rate: float = 0.0
    end_drop_path_rate: float = 0.0
    use_alibi_encoder: bool = field(default=True, metadata={"help": "ALiBi attention biases"})
    learned_alibi_scale: bool = field(default=True, metadata={"help": "learn the ALiBi scale"})
    learned_alibi_scale_per_head: bool = True
    learned_alibi_scale_per_layer: bool = False

    # audio front end
    feature_encoder_spec: str = field(
        default="[(512, 10, 5)] + [(512, 3, 2)] * 4 + [(512, 2, 2)] * 2",
        metadata={"help": "CNN layers as a python list of (dim, kernel, stride); the default gives 50 Hz frames"},
    )
    extractor_mode: str = field(default="layer_norm", metadata={"help": "CNN normalisation: layer_norm or default"})
    local_grad_mult: float = field(default=1.0, metadata={"help": "gradient scale of the CNN; 0 freezes it"})
    conv_pos_width: int = field(default=95, metadata={"help": "total receptive field of the positional convs"})
    conv_pos_groups: int = 16
    conv_pos_depth: int = 5

    # masking
    mask_prob: float = field(
        default=0.5,
        metadata={"help": "pretraining: exact fraction of frames masked (data2vec 2.0 block masking); "
                          "fine-tuning: fairseq's compute_mask_indices (span starts = mask_prob * T / mask_length)"},
    )
    mask_length: int = field(default=5, metadata={"help": "span length in frames"})
    mask_prob_adjust: float = field(
        default=0.05,
        metadata={"help": "pretraining: extra share of block centres making up for overlaps (data2vec 2.0 "
                          "audio: 0.05)"},
    )
    mask_noise_std: float = field(default=0.01, metadata={"help": "std of the noise tokens at masked frames"})
    encoder_zero_mask: bool = field(default=True, metadata={"help": "zero masked frames (else noise) before the positional convs"})
    # fine-tuning masks (wav2vec_ctc's apply_mask): fairseq's compute_mask_indices statistics, wav2vec 2.0's
    # field names, which wav2vec_ctc overrides by name
    mask_selection: MASK_SELECTIONS = field(default="static", metadata={"help": "fine-tuning: how span lengths are drawn"})
    mask_other: float = field(
        default=0.0, metadata={"help": "fine-tuning: lowest length (uniform) or std (normal) of the spans"}
    )
    mask_min_masks: int = field(
        default=1, metadata={"help": "fine-tuning: at least this many spans per row (data2vec 2.0: 1; wav2vec 2.0: 2)"}
    )
    no_mask_overlap: bool = field(default=False, metadata={"help": "fine-tuning: spans do not overlap"})
    mask_min_space: int = field(default=1, metadata={"help": "fine-tuning: frames kept between spans with no_mask_overlap"})
    require_same_masks: bool = field(
        default=True, metadata={"help": "fine-tuning: cut every row to the batch's smallest masked count"}
    )
    mask_channel_prob: float = 0.0
    mask_channel_length: int = 64
    mask_channel_selection: MASK_SELECTIONS = "static"
    mask_channel_other: float = 0.0
    no_mask_channel_overlap: bool = False
    mask_channel_min_space: int = 1
    clone_batch: int = field(default=1, metadata={"help": "masked copies of every utterance per teacher pass"})

    # regression decoder
    decoder_dim: int = 384
    decoder_groups: int = 16
    decoder_kernel: int = 7
    decoder_layers: int = 4
    decoder_input_dropout: float = 0.1

    # targets and loss
    average_top_k_layers: int = field(default=8, metadata={"help": "teacher blocks averaged into the target"})
    instance_norm_target_layer: bool = field(default=True, metadata={"help": "instance-normalise each target layer"})
    loss_beta: float = field(default=0.0, metadata={"help": "0: L2 loss, else smooth L1 with this beta"})
    loss_scale: Optional[float] = field(default=None, metadata={"help": "loss scale; None: 1/sqrt(embed_dim)"})

    # EMA teacher
    ema_decay: float = 0.999
    ema_end_decay: float = 0.99999
    ema_anneal_end_step: int = 75000
    min_target_var: float = field(default=0.1, metadata={"help": "stop if the targets' mean std falls below (collapse)"})
    min_pred_var: float = field(default=0.01, metadata={"help": "stop if the predictions' mean std falls below (collapse)"})
    collapse_check_after: int = field(
        default=5000, metadata={"help": "updates after which min_target_var and min_pred_var are checked (data2vec 2.0: 5000)"}
    )

    # continued pretraining
    init_from: Optional[str] = field(
        default=None,
        metadata={"help": "a checkpoint of this plugin (e.g. a data2vec 2.0 release converted with "
                          "run/convert_checkpoint.py) whose student and EMA teacher start this run; modules it lacks "
                          "(EH-MAM's loss predictor) start fresh; ignored when the run resumes from a checkpoint"},
    )


def alibi_slopes(heads: int) -> torch.Tensor:
    """ALiBi's geometric slopes ``[heads]`` (Press et al.), interleaved when ``heads`` is not a power of 2."""

    def power_of_two(n: int) -> List[float]:
        start = 2 ** (-8 / n)
        return [start ** (i + 1) for i in range(n)]

    if math.log2(heads).is_integer():
        return torch.tensor(power_of_two(heads))
    lower = 2 ** math.floor(math.log2(heads))
    return torch.tensor(power_of_two(lower) + power_of_two(2 * lower)[0::2][: heads - lower])


class SelfAttention(nn.Module):
    """Multi-head self-attention taking an additive ``[B, H, T, T]`` bias (ALiBi plus padding)."""

    def __init__(self, dim: int, heads: int, attention_dropout: float, proj_dropout: float):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.attention_dropout = attention_dropout
        self.proj_dropout = nn.Dropout(proj_dropout)

    def forward(self, x: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        batch, length, dim = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None if bias is None else bias.to(q.dtype),  # a no-op where built in q's dtype
            dropout_p=self.attention_dropout if self.training else 0.0,
        )
        return self.proj_dropout(self.proj(out.transpose(1, 2).reshape(batch, length, dim)))


class TransformerBlock(nn.Module):
    """Post-LN transformer block returning ``(output, ffn_output)``; the FFN output (before the residual
    and the final LayerNorm) is what data2vec 2.0 averages into its targets."""

    def __init__(self, cfg: Data2Vec2AudioConfig, drop_path: float):
        super().__init__()
        dim = cfg.embed_dim
        self.attn = SelfAttention(dim, cfg.num_heads, cfg.attention_dropout, cfg.encoder_dropout)
        self.norm1 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.mlp = Mlp(dim, int(dim * cfg.mlp_ratio), act_layer=nn.GELU, drop=cfg.activation_dropout)
        self.post_mlp_dropout = nn.Dropout(cfg.post_mlp_drop)
        self.norm2 = nn.LayerNorm(dim, eps=cfg.norm_eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, bias: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
        x = self.norm1(x + self.drop_path(self.attn(x, bias)))
        ffn = self.mlp(x)
        return self.norm2(x + self.drop_path(self.post_mlp_dropout(ffn))), ffn


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of a ``[B, C, T]`` tensor."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


def conv_block(in_dim: int, out_dim: int, kernel: int, groups: int) -> nn.Sequential:
    """[B, in, T] -> [B, out, T]: grouped conv, LayerNorm without affine, GELU (data2vec 2.0's decoder/pos block)."""
    return nn.Sequential(
        nn.Conv1d(in_dim, out_dim, kernel, padding=kernel // 2, groups=groups),
        SamePad(kernel),
        ChannelLayerNorm(out_dim, elementwise_affine=False),
        nn.GELU(),
    )


def conv_decoder_blocks(in_dim: int, cfg: Data2Vec2AudioConfig) -> nn.ModuleList:
    """The convolutional stack of data2vec 2.0's audio decoder (shared with EH-MAM's loss predictor)."""
    return nn.ModuleList(
        conv_block(in_dim if i == 0 else cfg.decoder_dim, cfg.decoder_dim, cfg.decoder_kernel, cfg.decoder_groups)
        for i in range(cfg.decoder_layers)
    )


def run_conv_stack(blocks: nn.ModuleList, x: torch.Tensor) -> torch.Tensor:
    """``[B, T, C] -> [B, T, decoder_dim]`` with a residual wherever the widths match."""
    x = x.transpose(1, 2)
    for block in blocks:
        y = block(x)
        x = y + x if y.shape == x.shape else y
    return x.transpose(1, 2)


class RegressionDecoder(nn.Module):
    """data2vec 2.0's audio decoder: conv stack then a projection back to ``embed_dim``."""

    def __init__(self, cfg: Data2Vec2AudioConfig):
        super().__init__()
        self.blocks = conv_decoder_blocks(cfg.embed_dim, cfg)
        self.proj = nn.Linear(cfg.decoder_dim, cfg.embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, T, D]`` (masked frames already re-inserted) -> ``[B, T, D]`` predictions."""
        return self.proj(run_conv_stack(self.blocks, x))


def mask_frames(x: torch.Tensor, mask: torch.Tensor, cfg: Data2Vec2AudioConfig) -> torch.Tensor:
    """Replaces the masked frames of ``x [B, T, D]`` by zeros, or by N(0, mask_noise_std) noise."""
    if cfg.encoder_zero_mask:
        return x.masked_fill(mask.unsqueeze(-1), 0.0)
    return torch.where(mask.unsqueeze(-1), torch.randn_like(x) * cfg.mask_noise_std, x)


class ContextEncoder(nn.Module):
    """Positional convs, prenet and main blocks; the part of the model the EMA teacher copies."""

    def __init__(self, cfg: Data2Vec2AudioConfig):
        super().__init__()
        self.cfg = cfg
        kernel = max(3, cfg.conv_pos_width // cfg.conv_pos_depth)
        self.pos_conv = nn.Sequential(
            *[conv_block(cfg.embed_dim, cfg.embed_dim, kernel, cfg.conv_pos_groups) for _ in range(cfg.conv_pos_depth)]
        )
        self.prenet_norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        self.prenet_dropout = nn.Dropout(cfg.prenet_dropout)
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        rates = torch.linspace(cfg.start_drop_path_rate, cfg.end_drop_path_rate, max(cfg.prenet_depth, 1)).tolist()
        self.prenet = nn.ModuleList(TransformerBlock(cfg, rates[i]) for i in range(cfg.prenet_depth))
        rates = torch.linspace(cfg.start_drop_path_rate, cfg.end_drop_path_rate, max(cfg.depth, 1)).tolist()
        self.blocks = nn.ModuleList(TransformerBlock(cfg, rates[i]) for i in range(cfg.depth))
        self.alibi_scale = None
        if cfg.use_alibi_encoder:
            layers = cfg.prenet_depth + cfg.depth if cfg.learned_alibi_scale_per_layer else 1
            heads = cfg.num_heads if cfg.learned_alibi_scale_per_head else 1
            self.alibi_scale = nn.Parameter(torch.ones(layers, heads), requires_grad=cfg.learned_alibi_scale)
            self.register_buffer("slopes", alibi_slopes(cfg.num_heads), persistent=False)

    def alibi_bias(self, positions: torch.Tensor) -> Optional[torch.Tensor]:
        """Unscaled ``[B, H, T', T']`` ALiBi bias between the frames at ``positions [B, T']``."""
        if self.alibi_scale is None:
            return None
        distance = (positions.unsqueeze(2) - positions.unsqueeze(1)).abs().float()
        return -distance.unsqueeze(1) * self.slopes.view(1, -1, 1, 1)

    def layer_bias(self, alibi: Optional[torch.Tensor], padding: Optional[torch.Tensor], layer: int,
                   dtype: Optional[torch.dtype] = None):
        """The additive attention bias of one layer (in ``dtype``, the attention's, else fp32): scaled ALiBi plus
        -inf at padded keys (added after the scaling, so that the scale's gradient stays finite)."""
        bias = None
        if alibi is not None:
            scale = self.alibi_scale[layer if self.alibi_scale.size(0) > 1 else 0].clamp(min=0)
            bias = alibi * scale.view(1, -1, 1, 1)
        if padding is not None:
            bias = padding if bias is None else bias + padding
        return bias if bias is None or dtype is None else bias.to(dtype)

    def layer_biases(self, alibi: Optional[torch.Tensor], padding: Optional[torch.Tensor], dtype: torch.dtype):
        """The bias of every layer (prenet first): one tensor for all where the ALiBi scale is shared
        (``learned_alibi_scale_per_layer: false``), as fairseq builds it, instead of a ``[B, H, T', T']``
        product and cast saved for the backward in each layer."""
        layers = self.cfg.prenet_depth + self.cfg.depth
        if alibi is None or self.alibi_scale.size(0) == 1:
            return [self.layer_bias(alibi, padding, 0, dtype)] * layers
        return [self.layer_bias(alibi, padding, i, dtype) for i in range(layers)]

    def forward(
        self,
        x: torch.Tensor,
        padding_mask: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None,
        num_masked: Optional[int] = None,
    ) -> Dict[str, object]:
        """Contextualises frame features.

        Args:
            x: ``[B, T, D]`` projected CNN features.
            padding_mask: ``[B, T]``, True at padding.
            mask: ``[B, T]`` bool with the same count per row; masked frames are zeroed (or noise with
                ``encoder_zero_mask: false``) before the positional convs and then *removed*, so the
                blocks see only the ``T'`` unmasked frames.
            num_masked: that count, where the caller knows it on the host; else it is read from ``mask``
                and checked (host syncs).

        Returns:
            ``x [B, T', D]``, ``layer_results`` (the FFN output of every main block, ``[B, T', D]``),
            ``padding_mask [B, T']`` or None, ``keep [B, T']`` (the kept frames' indices) or None, and
            ``order [B, T]`` (the kept frames' indices, then the masked ones', each ascending) or None.
        """
        batch, length, _ = x.shape
        positions = torch.arange(length, device=x.device).expand(batch, -1)
        keep = order = None
        if mask is not None:
            if num_masked is None:
                counts = mask.sum(dim=1)
                if (counts != counts[0]).any():
                    raise ValueError(f"the student's mask must mask the same number of frames in every row, got "
                                     f"{counts.tolist()}: removing the masked frames needs a rectangular batch")
                num_masked = int(counts[0])
            pos_input = mask_frames(x, mask, self.cfg)
            x = x + self.pos_conv(pos_input.transpose(1, 2)).transpose(1, 2)
            # the unmasked frames in time order: a stable sort puts the False (kept) entries first
            order = mask.to(torch.uint8).sort(dim=1, stable=True).indices
            keep = order[:, : length - num_masked]
            x = x.gather(1, keep.unsqueeze(-1).expand(-1, -1, x.size(-1)))
            positions = keep
            if padding_mask is not None:
                padding_mask = padding_mask.gather(1, keep)
        else:
            x = x + self.pos_conv(x.transpose(1, 2)).transpose(1, 2)
        # a padding mask without padding adds 0 to the ALiBi bias, so only the rows kept after removing the
        # masked frames, or attention without ALiBi, need the (host-synced) check
        if padding_mask is not None and (keep is not None or self.alibi_scale is None) and not padding_mask.any():
            padding_mask = None

        alibi = self.alibi_bias(positions)
        padding = None
        if padding_mask is not None:
            padding = torch.zeros(padding_mask.shape, device=x.device).masked_fill(padding_mask, -math.inf)
            padding = padding[:, None, None, :]
        attention_dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) \
            else x.dtype
        biases = self.layer_biases(alibi, padding, attention_dtype)
        x = self.prenet_dropout(self.prenet_norm(x))
        for i, block in enumerate(self.prenet):
            if self._keep_layer(self.cfg.prenet_layerdrop):
                x, _ = block(x, biases[i])
        x = self.dropout_input(x)
        layer_results = []
        for i, block in enumerate(self.blocks):
            if self._keep_layer(self.cfg.layerdrop):
                x, ffn = block(x, biases[self.cfg.prenet_depth + i])
                layer_results.append(ffn)
        return {"x": x, "layer_results": layer_results, "padding_mask": padding_mask, "keep": keep, "order": order}

    def _keep_layer(self, layerdrop: float) -> bool:
        # torch's RNG (not numpy's): fairseq reseeds it every update, so a resumed run drops the same layers
        return not self.training or layerdrop == 0 or float(torch.rand(())) >= layerdrop


def gather_frames(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``x [B, T, D]`` at ``index [B, M]`` -> ``[B * M, D]``: ``x[mask]`` for a mask with ``M`` frames per row
    (``index`` ascending), with no host sync."""
    return x.gather(1, index.unsqueeze(-1).expand(-1, -1, x.size(-1))).reshape(-1, x.size(-1))


def instance_norm_average(layer_results: List[torch.Tensor], top_k: int, instance_norm: bool) -> torch.Tensor:
    """data2vec 2.0 target: mean of the last ``top_k`` layers, each instance-normalised over time, in fp32."""
    layers = [t.float() for t in layer_results[-top_k:]]
    if instance_norm:
        layers = [F.instance_norm(t.transpose(1, 2)).transpose(1, 2) for t in layers]
    return torch.stack(layers).mean(0)


class Data2Vec2AudioModel(EMATeacherMixin, BaseFairseqModel):
    """data2vec 2.0 audio pretraining; subclasses register it and may change the mask and add losses.

    The CNN runs once per step, with gradient; the teacher gets a detached copy of its projected
    features (data2vec 2.0's ``ema_local_encoder: false``), runs its own positional convs and blocks on
    the full sequence, and its instance-normalised top-K FFN outputs are the targets.
    """

    teacher_modules = ("encoder",)

    def __init__(self, cfg: Data2Vec2AudioConfig):
        super().__init__()
        self.cfg = cfg
        if not 0 <= cfg.mask_prob <= 1:
            raise ValueError(f"model.mask_prob must be in [0, 1], got {cfg.mask_prob}")
        if cfg.clone_batch < 1:
            raise ValueError(f"model.clone_batch must be at least 1 (masked copies of each utterance), got {cfg.clone_batch}")
        self.conv_layers = parse_config_list(cfg.feature_encoder_spec, "feature_encoder_spec")
        feature_dim = self.conv_layers[-1][0]
        self.feature_extractor = ConvFeatureExtractionModel(
            conv_layers=self.conv_layers, dropout=0.0, mode=cfg.extractor_mode, conv_bias=False
        )
        self.project_features = nn.Sequential(nn.LayerNorm(feature_dim), nn.Linear(feature_dim, cfg.embed_dim))
        self.encoder = ContextEncoder(cfg)
        self.decoder = RegressionDecoder(cfg)
        self.num_updates = 0
        self.ema: Optional[EMAModule] = None

    def build_teacher(self, names: Iterable[str] = ()) -> None:
        """Called by subclasses once all their modules exist, after their own initialisation; the teacher
        follows ``names`` (default: ``teacher_modules``)."""
        self.encoder.apply(init_bert_params)
        super().build_teacher(names or self.teacher_modules)

    # ---- training-time state -------------------------------------------------------------------------

    def set_num_updates(self, num_updates: int) -> None:
        super().set_num_updates(num_updates)
        self.num_updates = num_updates
        self.step_teacher(num_updates)

    # ---- shared pieces -------------------------------------------------------------------------------

    def local_features(self, source: torch.Tensor) -> torch.Tensor:
        """``[B, samples] -> [B, T, D]``: CNN (gradient scaled by ``local_grad_mult``) and projection."""
        features = run_feature_extractor(self.feature_extractor, source, self.cfg.local_grad_mult)
        return self.project_features(features.transpose(1, 2))

    def frame_padding_mask(self, source_padding: Optional[torch.Tensor], frames: int) -> Optional[torch.Tensor]:
        return frame_padding_mask(source_padding, frames, self.conv_layers)

    def decoder_input(self, x: torch.Tensor, mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Student output at the kept frames ``[B, T', D]`` -> ``[B, T, D]`` with noise tokens at masked frames."""
        full = torch.empty(mask.shape + (x.size(-1),), dtype=x.dtype, device=x.device)
        full.normal_(0, self.cfg.mask_noise_std)
        full = full.scatter(1, keep.unsqueeze(-1).expand_as(x), x)
        return F.dropout(full, self.cfg.decoder_input_dropout, training=self.training)

    def regression_loss(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Unreduced ``[N, D]`` L2 (or smooth L1) loss, scaled by ``loss_scale`` (default 1/sqrt(D))."""
        prediction = prediction.float()
        if self.cfg.loss_beta == 0:
            loss = F.mse_loss(prediction, target, reduction="none")
        else:
            loss = F.smooth_l1_loss(prediction, target, reduction="none", beta=self.cfg.loss_beta)
        scale = self.cfg.loss_scale if self.cfg.loss_scale is not None else 1 / math.sqrt(prediction.size(-1))
        return loss * scale

    # ---- hooks for subclasses ------------------------------------------------------------------------

    def draw_mask(self, teacher_out: Dict[str, torch.Tensor], padding_mask: Optional[torch.Tensor], batch: int,
                  length: int, device: torch.device) -> torch.Tensor:
        """The student's mask ``[B * clone_batch, T]``: data2vec 2.0's exact-count 1-D block masking."""
        return block_mask(batch, length, self.cfg.mask_prob, block=self.cfg.mask_length,
                          adjust=self.cfg.mask_prob_adjust, padding_mask=padding_mask, device=device)

    def teacher_extras(self, teacher: TeacherModel, teacher_out: Dict[str, torch.Tensor]) -> None:
        """Adds anything else the teacher computes from its outputs (before the mask is drawn)."""

    def extra_losses(self, result: Dict, decoder_input: torch.Tensor, frame_loss: torch.Tensor,
                     mask: torch.Tensor, masked: torch.Tensor, teacher_out: Dict[str, torch.Tensor]) -> None:
        """Adds losses and logs to ``result``; ``frame_loss [B', T]`` is the detached per-frame loss, ``masked
        [B', M]`` the masked frames' indices of each row, ascending (gathers with them need no host sync)."""

    # ---- forward -------------------------------------------------------------------------------------

    def forward(self, source, padding_mask=None, mask=True, features_only=False, mode=None, **unused):
        if features_only:
            return self.extract_features(source, padding_mask=padding_mask, mask=mask)
        features = self.local_features(source)
        batch, length, _ = features.shape
        padding_mask = self.frame_padding_mask(padding_mask, length)
        shortest = length if padding_mask is None else int((~padding_mask).sum(1).min())
        if shortest < self.cfg.mask_length:
            raise ValueError(f"model.mask_length={self.cfg.mask_length} frames is longer than an utterance of this "
                             f"batch ({shortest} frames): lower model.mask_length or raise task.min_sample_size")

        teacher = self.teacher(features)
        with torch.no_grad():
            teacher.eval()
            out = teacher.encoder(features.detach(), padding_mask)
            teacher_out = {
                "targets": instance_norm_average(out["layer_results"], self.cfg.average_top_k_layers,
                                                 self.cfg.instance_norm_target_layer),
                "x": out["x"],
            }
            self.teacher_extras(teacher, teacher_out)

        clones = self.cfg.clone_batch
        if clones > 1:
            features = features.repeat_interleave(clones, 0)
            padding_mask = padding_mask.repeat_interleave(clones, 0) if padding_mask is not None else None
        time_mask = self.draw_mask(teacher_out, padding_mask, batch * clones, length, features.device)
        num_masked = int(self.cfg.mask_prob * shortest)  # the masks' count per row (masked_frame_budget)
        student = self.encoder(features, padding_mask, time_mask, num_masked)
        masked = student["order"][:, length - num_masked:]  # [B', M]: what time_mask selects, row by row

        decoder_in = self.decoder_input(student["x"], time_mask, student["keep"])
        prediction = gather_frames(self.decoder(decoder_in), masked)
        targets = teacher_out["targets"]
        if clones > 1:
            targets = targets.repeat_interleave(clones, 0)
        targets = gather_frames(targets, masked)
        reg_loss = self.regression_loss(prediction, targets)
        sample_size = time_mask.sum()

        result = {"losses": {"regression": reg_loss}, "sample_size": sample_size}
        frame_loss = torch.zeros(time_mask.shape, device=reg_loss.device)
        frame_loss = frame_loss.scatter(1, masked, reg_loss.detach().sum(-1).view(masked.shape))
        self.extra_losses(result, decoder_in, frame_loss, time_mask, masked, teacher_out)

        with torch.no_grad():
            valid = time_mask.numel() if padding_mask is None else int((~padding_mask).sum())
            result["masked_pct"] = sample_size.float() / valid
            result["pred_var"] = self.compute_var(prediction.float())
            result["target_var"] = self.compute_var(targets)
            result["ema_decay"] = self.ema.get_decay() * 1000
            if self.num_updates >= self.cfg.collapse_check_after:
                self.check_collapse(result)
        return result

    @staticmethod
    def compute_var(y: torch.Tensor) -> torch.Tensor:
        """Mean per-channel standard deviation of ``[N, D]`` (data2vec 2.0's collapse monitor)."""
        return torch.sqrt(y.var(dim=0) + 1e-6).mean() if y.size(0) > 1 else y.new_zeros(())

    def check_collapse(self, result: Dict) -> None:
        update, cfg = self.num_updates + 1, self.cfg
        if not bool((result["target_var"] < cfg.min_target_var) | (result["pred_var"] < cfg.min_pred_var)):
            return  # one host read per step; which variance fell is read only when one did
        later = f"model.collapse_check_after={cfg.collapse_check_after} delays the check"
        if result["target_var"] < cfg.min_target_var:
            raise RuntimeError(
                f"model.min_target_var: the EMA teacher's targets collapsed at update {update} (mean std "
                f"{float(result['target_var']):.4f} < {cfg.min_target_var}: every frame gets nearly the same target); "
                f"try a lower optimization.lr, a longer lr_scheduler.warmup_updates or a slower teacher "
                f"(model.ema_decay, model.ema_end_decay closer to 1); {later}")
        if result["pred_var"] < cfg.min_pred_var:
            raise RuntimeError(
                f"model.min_pred_var: the student's predictions collapsed at update {update} (mean std "
                f"{float(result['pred_var']):.4f} < {cfg.min_pred_var}: the decoder predicts nearly one vector); "
                f"try a lower optimization.lr or a longer lr_scheduler.warmup_updates; {later}")

    # ---- fine-tuning interface (fairseq's wav2vec_ctc) -----------------------------------------------

    def extract_features(self, source, padding_mask=None, mask=False, mode=None, **unused):
        """Full-sequence features for fine-tuning: ``{"x": [B, T, D], "padding_mask", "layer_results"}``.

        With ``mask`` (wav2vec_ctc's ``apply_mask`` while training), frames are masked as wav2vec 2.0
        fine-tuning does (noise or zeros, not removed; spans drawn with fairseq's ``compute_mask_indices``
        statistics, :func:`maskssl_fairseq.masking.wav2vec2_span_mask`) and channels are zeroed with
        ``mask_channel_prob``.
        """
        features = self.local_features(source)
        batch, length, dim = features.shape
        padding_mask = self.frame_padding_mask(padding_mask, length)
        cfg = self.cfg
        time_mask = None
        if mask and cfg.mask_prob > 0:
            time_mask = wav2vec2_span_mask(
                batch, length, cfg.mask_prob, cfg.mask_length, mask_type=cfg.mask_selection, mask_other=cfg.mask_other,
                min_masks=cfg.mask_min_masks, no_overlap=cfg.no_mask_overlap, min_space=cfg.mask_min_space,
                same_count=cfg.require_same_masks, padding_mask=padding_mask, device=features.device,
            )
            features = mask_frames(features, time_mask, cfg)
        if mask and cfg.mask_channel_prob > 0:
            channels = wav2vec2_span_mask(
                batch, dim, cfg.mask_channel_prob, cfg.mask_channel_length, mask_type=cfg.mask_channel_selection,
                mask_other=cfg.mask_channel_other, no_overlap=cfg.no_mask_channel_overlap,
                min_space=cfg.mask_channel_min_space, device=features.device,
            )
            features = features.masked_fill(channels.unsqueeze(1), 0.0)
        out = self.encoder(features, padding_mask)
        return {"x": out["x"], "padding_mask": out["padding_mask"], "layer_results": out["layer_results"],
                "mask": time_mask}

    def remove_pretraining_modules(self, modality=None, keep_decoder=False):
        """Drops the teacher and the decoders: what remains is the encoder ``wav2vec_ctc`` fine-tunes."""
        self.ema = None
        self.cfg.clone_batch = 1
        if not keep_decoder:
            self.decoder = None

