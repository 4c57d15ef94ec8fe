"""Buffers that stay float32 when fairseq casts the model to half precision.

fairseq's ``common.fp16`` / ``common.bf16`` cast the whole model (``model.half()``, ``model.to(torch.bfloat16)``),
buffers included. A front end's constants (the dataset mean and std, the STFT window, the mel filter banks)
then lose their precision (bf16 keeps 3 significant digits: MSM-MAE's loss sat about 1 % off fp32's from the
first update) or no longer match the float32 audio they multiply.
"""

import torch
import torch.nn as nn


class Float32Buffers(nn.Module):
    """A module whose own float32 buffers follow the model's device moves but never its dtype casts; its
    parameters and its children's tensors are cast as usual."""

    def _apply(self, fn, recurse=True):
        kept = {name: buffer for name, buffer in self._buffers.items()
                if buffer is not None and buffer.dtype == torch.float32}
        super()._apply(fn, recurse)
        for name, before in kept.items():
            after = self._buffers[name]
            if after.dtype != torch.float32:  # cast: move the original values instead
                self._buffers[name] = before.to(after.device)
        return self
