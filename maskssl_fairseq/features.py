"""Layer features from every speech model of the plugin, and from fairseq's own: the SUPERB convention (the CNN's
output projection first, then every transformer layer's output), with padded batches giving what each utterance
gives alone.

    model, cfg = load_model("checkpoint_best.pt")
    layers, padding = hidden_states(model, waveforms, padding_mask)   # list of [B, T, C], [B, T] or None

Kinds: data2vec 2.0 / EH-MAM (``Data2Vec2AudioModel``), ARMHuBERT / MaskHuBERT students (``ArmHubertModel``),
fairseq's ``Wav2Vec2Model`` and ``HubertModel``, and ``wav2vec_ctc`` fine-tunes of any of them (their
``w2v_encoder.w2v_model``).

Why the CNN runs one utterance at a time: a group norm over time in the first conv block (wav2vec 2.0 BASE,
HuBERT BASE, data2vec 2.0) sees a padded row's zeros, so a batched CNN changes a short utterance's features
(by up to 0.2). The frames of each utterance are then padded with zeros, which is what the positional
convolutions see past the end of an utterance run alone, and the transformer runs batched with the padded
frames excluded as keys. A frame is valid if the convolution arithmetic gives it for the utterance's length.
An ARMHuBERT student with ``official_compat`` pairs attention maps with other samples of its batch (the released
code's behaviour), so only its batches of one utterance equal the utterance alone.
"""

import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .modules.cnn_frontend import conv_output_lengths


def load_model(path: str, data_dir: Optional[str] = None, device: str = "cpu") -> Tuple[nn.Module, object]:
    """A fairseq checkpoint of any plugin or fairseq speech model -> (model in eval mode, its config).

    ``data_dir`` replaces the checkpoint's ``task.data``: a ``wav2vec_ctc`` fine-tune needs the folder of its
    ``dict.ltr.txt`` to be built.
    """
    from fairseq import checkpoint_utils

    overrides = {"data": str(data_dir)} if data_dir else None
    try:
        models, cfg, _task = checkpoint_utils.load_model_ensemble_and_task([str(path)], arg_overrides=overrides)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{path}: building its task needs a file that is not there ({err}); for a "
                                "fine-tuned model pass data_dir= (--data-dir) with its dict.ltr.txt") from None
    return models[0].eval().to(device), cfg


def speech_encoder(model: nn.Module) -> nn.Module:
    """The pretrained network inside a ``wav2vec_ctc`` fine-tune, or the model itself."""
    encoder = getattr(model, "w2v_encoder", None)
    return encoder.w2v_model if encoder is not None else model


def conv_layers_of(model: nn.Module) -> List[Tuple[int, int, int]]:
    """The ``(dim, kernel, stride)`` layers of the model's fairseq ``ConvFeatureExtractionModel``."""
    convs = [block[0] for block in model.feature_extractor.conv_layers]
    return [(conv.out_channels, conv.kernel_size[0], conv.stride[0]) for conv in convs]


def projected_features(model: nn.Module, waveform: torch.Tensor) -> torch.Tensor:
    """One utterance ``[1, S]`` -> the CNN output projection ``[1, T, C]`` (the first SUPERB hidden state)."""
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Model
    from fairseq.models.hubert import HubertModel

    from .models.armhubert import ArmHubertModel
    from .modules.data2vec2_audio import Data2Vec2AudioModel

    if isinstance(model, Data2Vec2AudioModel):
        return model.local_features(waveform)
    if isinstance(model, ArmHubertModel):
        return model.front_end(waveform)[0]
    if isinstance(model, (Wav2Vec2Model, HubertModel)):
        features = model.layer_norm(model.feature_extractor(waveform).transpose(1, 2))
        return model.post_extract_proj(features) if model.post_extract_proj is not None else features
    raise TypeError(f"no layer features for a {type(model).__name__}: supported are data2vec 2.0 / EH-MAM, "
                    "ARMHuBERT, fairseq's wav2vec 2.0 and HuBERT, and wav2vec_ctc fine-tunes of them")


def transformer_layers(model: nn.Module, x: torch.Tensor, padding: Optional[torch.Tensor]) -> List[torch.Tensor]:
    """Projected features ``[B, T, C]`` with zeros at ``padding [B, T]`` -> every layer's output ``[B, T, C]``."""
    from .models.armhubert import ArmHubertModel
    from .modules.data2vec2_audio import Data2Vec2AudioModel

    if isinstance(model, Data2Vec2AudioModel):
        return data2vec2_block_outputs(model, x, padding)
    if isinstance(model, ArmHubertModel):
        return model.encoder(x, padding)
    _, layer_results = model.encoder.extract_features(x, padding_mask=padding, tgt_layer=None)
    return [result[0].transpose(0, 1) for result in layer_results]  # fairseq: T x B x C


def data2vec2_block_outputs(model: nn.Module, x: torch.Tensor, padding: Optional[torch.Tensor]) -> List[torch.Tensor]:
    """Every main block's output of data2vec 2.0's context encoder (its ``forward`` returns the FFN outputs
    instead), the padded frames zeroed after each positional conv block as the conv's own zero padding is."""
    encoder = model.encoder
    positional = x.transpose(1, 2)
    for block in encoder.pos_conv:
        positional = block(positional)
        if padding is not None:
            positional = positional.masked_fill(padding.unsqueeze(1), 0.0)
    x = x + positional.transpose(1, 2)
    positions = torch.arange(x.size(1), device=x.device).expand(x.size(0), -1)
    alibi = encoder.alibi_bias(positions)
    key_bias = None
    if padding is not None:
        key_bias = torch.zeros(padding.shape, device=x.device).masked_fill(padding, -math.inf)[:, None, None, :]
    x = encoder.prenet_norm(x)
    for i, block in enumerate(encoder.prenet):
        x, _ = block(x, encoder.layer_bias(alibi, key_bias, i))
    outputs = []
    for i, block in enumerate(encoder.blocks):
        x, _ = block(x, encoder.layer_bias(alibi, key_bias, encoder.cfg.prenet_depth + i))
        outputs.append(x)
    return outputs


@torch.no_grad()
def hidden_states(
    model: nn.Module, waveforms: torch.Tensor, padding_mask: Optional[torch.Tensor] = None
) -> Tuple[List[torch.Tensor], Optional[torch.Tensor]]:
    """Per-layer features of a batch: (``[projection, layer 1, ..., layer L]``, each ``[B, T, C]``, frame padding
    ``[B, T]`` (True = padding) or None).

    Args:
        model: a model from :func:`load_model` (any supported kind, in eval mode).
        waveforms: ``[B, S]``, already normalised if the model was trained on normalised audio
            (``cfg.task.normalize``).
        padding_mask: ``[B, S]``, True at padded samples (each row's valid samples come first).
    """
    model = speech_encoder(model)
    lengths = [waveforms.size(1)] * waveforms.size(0)
    if padding_mask is not None:
        lengths = (~padding_mask).sum(1).tolist()
    frames = conv_output_lengths(torch.tensor(lengths), conv_layers_of(model)).tolist()
    per_utterance = [projected_features(model, waveforms[b:b + 1, :n]) for b, n in enumerate(lengths)]
    longest = max(frames)
    x = torch.cat([F.pad(f, (0, 0, 0, longest - f.size(1))) for f in per_utterance])
    padding = torch.arange(longest, device=x.device).unsqueeze(0) >= torch.tensor(frames, device=x.device)[:, None]
    padding = padding if padding.any() else None
    return [x] + transformer_layers(model, x, padding), padding


def select_layers(layers: Sequence[torch.Tensor], layer: Optional[int]) -> torch.Tensor:
    """``layer`` (0 = the projection, 1..L = transformer layers) ``[B, T, C]``, or all stacked ``[B, L+1, T, C]``."""
    if layer is None:
        return torch.stack(list(layers), dim=1)
    if not 0 <= layer < len(layers):
        raise ValueError(f"--layer {layer}: the model has layers 0 (CNN projection) to {len(layers) - 1}")
    return layers[layer]
