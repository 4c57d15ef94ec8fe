"""What s3prl 0.4.18 needs from torchaudio 2.11 to import: two names torchaudio has removed.

``import s3prl.hub`` (and so ``s3prl.nn`` and ``run_downstream.py``) imports every upstream's module, and a few
call ``torchaudio.set_audio_backend("sox_io")`` at import time or import ``torchaudio.sox_effects``. torchaudio
2.9 removed both (it reads files through torchcodec / soundfile and has no backend to choose). Neither is used by
our upstream or by s3prl's ``Featurizer``; the stubs only let the modules import. A call into the sox effects
(some of s3prl's own dataset loaders apply them) raises a clear error instead of a missing attribute.
"""

import sys
import types

import torchaudio


def _no_sox_effects(*args, **kwargs):
    raise RuntimeError("torchaudio.sox_effects was removed in torchaudio 2.9; this s3prl recipe applies sox "
                       "effects, which torchaudio 2.11 cannot run")


def install() -> None:
    """Adds the stubs when torchaudio lacks the names (idempotent; a torchaudio that has them is untouched)."""
    if not hasattr(torchaudio, "set_audio_backend"):
        torchaudio.set_audio_backend = lambda backend=None: None  # the only backend left is the default one
    if "torchaudio.sox_effects" not in sys.modules and not hasattr(torchaudio, "sox_effects"):
        stub = types.ModuleType("torchaudio.sox_effects")
        stub.apply_effects_tensor = stub.apply_effects_file = _no_sox_effects
        sys.modules["torchaudio.sox_effects"] = stub
        torchaudio.sox_effects = stub


install()
