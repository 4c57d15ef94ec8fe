"""A frozen fairseq HuBERT that returns every layer's output on clean and on masked input, for distillation.

The checkpoint is loaded with fairseq's own ``checkpoint_utils`` (its dictionaries come from the checkpoint's
task state, so no label files are needed). fairseq's ``HubertModel.forward`` discards the per-layer outputs,
so the front end is run here step by step with the model's own modules (its frame padding from HuBERT's own
``forward_padding_mask``, as the released ARMHuBERT teacher has it) and the encoder's ``extract_features``
returns the layer results; fairseq itself is not modified.
"""

import pickle
from pathlib import Path
from typing import List, Optional

import torch
from fairseq import checkpoint_utils
from fairseq.models.hubert import HubertModel

from .speech_teacher import FrozenTeacher


class HubertTeacher(FrozenTeacher):
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

    @property
    def mask_embedding(self) -> torch.Tensor:
        return self.model.mask_emb

    def project(self, source: torch.Tensor) -> torch.Tensor:
        model = self.model
        features = model.layer_norm(model.forward_features(source).transpose(1, 2))
        if model.post_extract_proj is not None:
            features = model.post_extract_proj(features)
        return features

    def frame_padding(self, padding_mask: Optional[torch.Tensor], frames: int,
                      padded: bool = False) -> Optional[torch.Tensor]:
        if padding_mask is None or not (padded or padding_mask.any()):
            return None
        return self.model.forward_padding_mask(padding_mask.new_empty(padding_mask.size(0), frames), padding_mask)

    def encode(self, features: torch.Tensor, frame_padding: Optional[torch.Tensor]) -> List[torch.Tensor]:
        _, layer_results = self.model.encoder.extract_features(features, padding_mask=frame_padding, tgt_layer=None)
        return [result[0].transpose(0, 1) for result in layer_results]  # T x B x C -> B x T x C
