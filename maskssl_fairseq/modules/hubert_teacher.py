"""A frozen fairseq HuBERT that returns every layer's output on clean and on masked input, for distillation.

The checkpoint is loaded with fairseq's own ``checkpoint_utils`` (its dictionaries come from the checkpoint's
task state, so no label files are needed). fairseq's ``HubertModel.forward`` discards the per-layer outputs,
so the front end is run here step by step with the model's own modules and the encoder's
``extract_features`` returns the layer results; fairseq itself is not modified.
"""

import pickle
from pathlib import Path
from typing import List, Optional, Tuple

import torch
import torch.nn as nn
from fairseq import checkpoint_utils
from fairseq.models.hubert import HubertModel


class HubertTeacher(nn.Module):
    """Frozen HuBERT teacher: eval mode always, no layerdrop, no sequence padding, no gradients."""

    def __init__(self, model: HubertModel):
        super().__init__()
        if not isinstance(model, HubertModel):
            raise TypeError(f"the teacher must be a fairseq HubertModel, got {type(model).__name__}")
        self.model = model
        model.encoder.layerdrop = 0.0
        # HuBERT pads the encoder input to a multiple of 2 by default; the targets must keep the student's length
        model.encoder.required_seq_len_multiple = 1
        model.requires_grad_(False)
        self.train(False)

    @classmethod
    def from_checkpoint(cls, path: str) -> "HubertTeacher":
        if not Path(path).is_file():
            raise FileNotFoundError(f"model.teacher_path: no HuBERT checkpoint at {path}")
        try:
            models, _cfg, _task = checkpoint_utils.load_model_ensemble_and_task([str(path)])
        except pickle.UnpicklingError as err:
            raise RuntimeError(
                f"model.teacher_path={path}: torch's weights-only loader refused an object in this checkpoint. "
                "If you trust the file, run with TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1.\n" + str(err)
            ) from None
        try:
            return cls(models[0])
        except TypeError as err:
            raise TypeError(f"model.teacher_path={path}: {err}") from None

    @property
    def embed_dim(self) -> int:
        return self.model.mask_emb.numel()

    @property
    def num_layers(self) -> int:
        return len(self.model.encoder.layers)

    def train(self, mode: bool = True) -> "HubertTeacher":
        """Stays in eval mode whatever fairseq asks: dropout would make the targets noisy."""
        return super().train(False)

    @torch.no_grad()
    def layer_outputs(
        self,
        source: torch.Tensor,
        padding_mask: Optional[torch.Tensor] = None,
        mask: Optional[torch.Tensor] = None,
    ) -> Tuple[List[torch.Tensor], Optional[List[torch.Tensor]]]:
        """Every layer's output ``[B, T, C]`` on the clean input and, if ``mask`` is given, on the masked input.

        Args:
            source: waveform ``[B, S]``.
            padding_mask: frame-level padding ``[B, T]`` (True = padding), shared with the student so that
                both see the same valid frames.
            mask: frames ``[B, T]`` replaced by the teacher's own learnt mask embedding, after the front end
                exactly where HuBERT masks during its pretraining.

        Returns:
            (outputs on the clean input, outputs on the masked input or None)
        """
        model = self.model
        features = model.forward_features(source).transpose(1, 2)
        features = model.layer_norm(features)
        if model.post_extract_proj is not None:
            features = model.post_extract_proj(features)
        if padding_mask is not None and padding_mask.shape != features.shape[:2]:
            raise ValueError(
                f"the teacher makes {features.shape[1]} frames but the padding mask has {padding_mask.shape[1]}"
            )
        batch = features.size(0)
        if mask is not None:
            masked = features.clone()
            masked[mask] = model.mask_emb.to(masked.dtype)
            features = torch.cat([features, masked])  # one encoder pass for both views
            if padding_mask is not None:
                padding_mask = torch.cat([padding_mask, padding_mask])
        _, layer_results = model.encoder.extract_features(features, padding_mask=padding_mask, tgt_layer=None)
        outputs = [result[0].transpose(0, 1) for result in layer_results]  # T x B x C -> B x T x C
        if mask is None:
            return outputs, None
        return [out[:batch] for out in outputs], [out[batch:] for out in outputs]
