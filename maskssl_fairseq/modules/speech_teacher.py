"""What every frozen distillation teacher (fairseq HuBERT, WavLM) shares: eval mode pinned, no gradients, its
own frame padding, and one encoder pass over the clean and the masked view together.

A teacher subclass provides ``embed_dim``, ``num_layers``, ``mask_embedding`` and three steps of its own
forward: ``project`` (waveform -> projected CNN features, where the model masks in its pretraining),
``frame_padding`` (its own sample -> frame padding rule) and ``encode`` (features -> every layer's output).
"""

import pickle
from pathlib import Path
from typing import List, Optional, Tuple

import torch
import torch.nn as nn

WAVLM_UNILM_KEY = "encoder.layers.0.self_attn.relative_attention_bias.weight"
WAVLM_TORCHAUDIO_KEY = "encoder.transformer.layers.0.attention.rel_attn_embed.weight"


class FrozenTeacher(nn.Module):
    """Frozen teacher: eval mode whatever fairseq asks, no gradients, layer outputs ``[B, T, C]``."""

    embed_dim: int
    num_layers: int

    def train(self, mode: bool = True) -> "FrozenTeacher":
        """Stays in eval mode (the released code calls ``teacher.eval()`` before every forward): dropout
        would make the targets noisy."""
        return super().train(False)

    @property
    def mask_embedding(self) -> torch.Tensor:
        raise NotImplementedError

    def project(self, source: torch.Tensor) -> torch.Tensor:
        """Waveform ``[B, S]`` -> projected CNN features ``[B, T, C]``."""
        raise NotImplementedError

    def frame_padding(self, padding_mask: Optional[torch.Tensor], frames: int,
                      padded: bool = False) -> Optional[torch.Tensor]:
        """Sample padding ``[B, S]`` (True = padding) -> the teacher's own frame padding ``[B, frames]`` or None;
        ``padded``: the caller has read that ``padding_mask`` holds padding (no second host read)."""
        raise NotImplementedError

    def encode(self, features: torch.Tensor, frame_padding: Optional[torch.Tensor]) -> List[torch.Tensor]:
        """Projected features ``[B, T, C]`` -> every layer's output ``[B, T, C]``."""
        raise NotImplementedError

    @torch.no_grad()
    def layer_outputs(
        self,
        source: torch.Tensor,
        padding_mask: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None,
        frame_padding: Optional[torch.Tensor] = None,
    ) -> Tuple[List[torch.Tensor], Optional[List[torch.Tensor]]]:
        """Every layer's output ``[B, T, C]`` on the clean input and, if ``mask`` is given, on the masked input.

        Args:
            source: waveform ``[B, S]``.
            padding_mask: sample-level padding ``[B, S]`` (True = padding); the teacher turns it into frames
                with its own rule (:meth:`frame_padding`), as the released distillation code does.
            mask: frames ``[B, T]`` replaced by the teacher's own learnt mask embedding, after the front end,
                exactly where the teacher masks in its pretraining.
            frame_padding: :meth:`frame_padding` of ``padding_mask`` where the caller computed it already.

        Returns:
            (outputs on the clean input, outputs on the masked input or None)
        """
        features = self.project(source)
        if frame_padding is None:
            frame_padding = self.frame_padding(padding_mask, features.size(1))
        batch = features.size(0)
        if mask is not None:
            if mask.shape != features.shape[:2]:
                raise ValueError(f"the teacher makes {features.shape[1]} frames but the mask has {mask.shape[1]}")
            masked = torch.where(mask.unsqueeze(-1), self.mask_embedding.to(features.dtype), features)
            features = torch.cat([features, masked])  # one encoder pass for both views
            if frame_padding is not None:
                frame_padding = torch.cat([frame_padding, frame_padding])
        outputs = self.encode(features, frame_padding)
        if mask is None:
            return outputs, None
        return [out[:batch] for out in outputs], [out[batch:] for out in outputs]


def reshape_padding_mask(padding_mask: Optional[torch.Tensor], frames: int, padded: bool = False) -> Optional[torch.Tensor]:
    """fairseq HuBERT's and unilm WavLM's ``forward_padding_mask``: trailing ``S mod frames`` samples dropped,
    the rest cut into ``frames`` equal groups, a frame is padding iff all its samples are (so a padded row
    can keep one frame more than the convolution arithmetic gives)."""
    if padding_mask is None or not (padded or padding_mask.any()):
        return None
    extra = padding_mask.size(1) % frames
    if extra > 0:
        padding_mask = padding_mask[:, :-extra]
    return padding_mask.view(padding_mask.size(0), frames, -1).all(-1)


def checkpoint_kind(path: str) -> str:
    """``"hubert"`` or ``"wavlm"``, read from the checkpoint's contents (not its name); a HuggingFace
    directory is ``"wavlm"`` when its ``config.json`` says so."""
    target = Path(path)
    if target.is_dir():
        config = target / "config.json"
        if config.is_file() and '"wavlm"' in config.read_text():
            return "wavlm"
        raise ValueError(f"model.teacher_path={path}: a directory, but not a HuggingFace WavLM (config.json with "
                         "model_type wavlm)")
    if not target.is_file():
        raise FileNotFoundError(f"model.teacher_path: no teacher checkpoint at {path}")
    try:
        state = torch.load(target, map_location="cpu", weights_only=False)
    except (RuntimeError, EOFError, pickle.UnpicklingError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RuntimeError(f"model.teacher_path={path}: not a readable checkpoint (truncated, or not saved by "
                           f"torch): {reason}") from None
    if isinstance(state, dict):
        weights = state.get("model", state)
        if isinstance(weights, dict) and (WAVLM_UNILM_KEY in weights or WAVLM_TORCHAUDIO_KEY in weights):
            return "wavlm"
        cfg = state.get("cfg")
        model_cfg = cfg.get("model") if cfg is not None and hasattr(cfg, "get") else None
        if model_cfg is not None and model_cfg.get("_name") == "hubert":
            return "hubert"
    raise ValueError(
        f"model.teacher_path={path}: neither a fairseq HuBERT checkpoint (cfg.model._name hubert) nor a WavLM "
        "checkpoint (the original authors' {'cfg', 'model'}, torchaudio's state dict or a HuggingFace directory)"
    )
