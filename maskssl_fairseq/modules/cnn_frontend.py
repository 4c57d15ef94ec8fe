"""What the waveform models (data2vec 2.0 / EH-MAM, ARMHuBERT) share around fairseq's ``ConvFeatureExtractionModel``:
its layer list from the config, its gradient scale, and the frame padding its strides imply."""

from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from fairseq.modules import GradMultiply


def parse_config_list(text: str, name: str) -> list:
    """A list written as a python expression, fairseq's format for ``conv_feature_layers``-like fields."""
    try:
        value = eval(text, {"__builtins__": {}}, {"True": True, "False": False})  # noqa: S307
    except Exception as err:
        raise ValueError(f"model.{name}={text!r} is not a python list expression: {err}") from None
    if not isinstance(value, list):
        raise ValueError(f"model.{name}={text!r} must evaluate to a list, got {type(value).__name__}")
    return value


def conv_output_lengths(lengths: torch.Tensor, layers: List[Tuple[int, int, int]]) -> torch.Tensor:
    """Frames that the CNN's ``(dim, kernel, stride)`` layers make from ``lengths`` samples."""
    for _, kernel, stride in layers:
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths


def frame_padding_mask(
    source_padding: Optional[torch.Tensor], frames: int, layers: List[Tuple[int, int, int]], padded: bool = False
) -> Optional[torch.Tensor]:
    """Sample-level padding ``[B, samples]`` -> frame-level ``[B, frames]`` (True at padding), None without any.

    ``padded``: the caller has read that ``source_padding`` holds padding (no second host read)."""
    if source_padding is None or not (padded or source_padding.any()):
        return None
    lengths = conv_output_lengths((~source_padding).long().sum(-1), layers)
    return torch.arange(frames, device=lengths.device).unsqueeze(0) >= lengths.unsqueeze(1)


def run_feature_extractor(extractor: nn.Module, source: torch.Tensor, grad_mult: float) -> torch.Tensor:
    """``[B, samples] -> [B, C, T]`` with the gradient into the CNN scaled by ``grad_mult`` (0 freezes it)."""
    if grad_mult <= 0:
        with torch.no_grad():
            return extractor(source)
    features = extractor(source)
    return GradMultiply.apply(features, grad_mult) if grad_mult != 1.0 else features
