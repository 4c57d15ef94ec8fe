"""What s3prl 0.4.18 needs to import on torchaudio 2.11 and huggingface_hub >= 1.0: names they have removed.

``import s3prl.hub`` (and so ``s3prl.nn`` and ``run_downstream.py``) imports every upstream's module, and a few
call ``torchaudio.set_audio_backend("sox_io")`` at import time or import ``torchaudio.sox_effects``. torchaudio
2.9 removed both (it reads files through torchcodec / soundfile and has no backend to choose). Neither is used by
our upstream or by s3prl's ``Featurizer``; the stubs only let the modules import. A call into the sox effects
(some of s3prl's own dataset loaders apply them) raises a clear error instead of a missing attribute.
``run_downstream.py`` imports ``huggingface_hub.HfFolder`` and ``Repository`` (removed in huggingface_hub 1.0) for
its ``--push_to_hf_hub`` option only; the stubs raise if that option is used.
"""

import sys
import types

import torchaudio


def _no_sox_effects(*args, **kwargs):
    raise RuntimeError("torchaudio.sox_effects was removed in torchaudio 2.9; this s3prl recipe applies sox "
                       "effects, which torchaudio 2.11 cannot run")


class _Removed:
    def __init__(self, name: str):
        self.name = name

    def __getattr__(self, attribute):
        raise RuntimeError(f"huggingface_hub.{self.name} was removed in huggingface_hub 1.0: s3prl's "
                           "--push_to_hf_hub does not work with this huggingface_hub")

    def __call__(self, *args, **kwargs):
        self.__getattr__("__call__")


def install() -> None:
    """Adds the stubs where a name is missing (idempotent; a library that has the name is untouched)."""
    if not hasattr(torchaudio, "set_audio_backend"):
        torchaudio.set_audio_backend = lambda backend=None: None  # the only backend left is the default one
    if "torchaudio.sox_effects" not in sys.modules and not hasattr(torchaudio, "sox_effects"):
        stub = types.ModuleType("torchaudio.sox_effects")
        stub.apply_effects_tensor = stub.apply_effects_file = _no_sox_effects
        sys.modules["torchaudio.sox_effects"] = stub
        torchaudio.sox_effects = stub
    try:
        import huggingface_hub
    except ImportError:  # s3prl's runner needs it, the upstream and Featurizer do not
        return
    for name in ("HfFolder", "Repository"):
        if not hasattr(huggingface_hub, name):
            setattr(huggingface_hub, name, _Removed(name))


install()
