"""Masking strategies shared by every model: plain torch, no fairseq import.

Every strategy takes shapes (and data where it needs them) and returns a boolean mask, True = masked,
with the same number of masked positions in every row, on any device, seeded by an optional
``torch.Generator`` that lives on that device.
"""

from .span import span_mask  # noqa: F401
from .unstructured import masked_count, random_mask  # noqa: F401
from .block import block_mask, inverse_block_mask  # noqa: F401
from .dispersion import dispersion_weighted_mask, patch_dispersion  # noqa: F401
from .schedules import hint_ratio  # noqa: F401
from .easy_to_hard import easy_to_hard_mask  # noqa: F401
from .informed import informed_mask  # noqa: F401
from .wav2vec2 import wav2vec2_span_mask  # noqa: F401
