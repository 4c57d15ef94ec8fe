"""A checkpoint of the wrong kind given to ``model.w2v_path`` or ``model.pretrained_path`` is one line naming the
field, the kind found and the kind expected.

Without this fairseq's ``wav2vec_ctc`` builds whatever model the checkpoint holds and fails later (``'M2DModel'
object has no attribute 'remove_pretraining_modules'``, or first its normalisation assertion), naming neither.
Installed when the plugin is imported (``common.user_dir``); ``spectrogram_classifier`` calls
:func:`require_kind` for ``model.pretrained_path``.
"""

from typing import Callable

from fairseq import checkpoint_utils
from fairseq.models import MODEL_REGISTRY
from fairseq.models.wav2vec.wav2vec2_asr import Wav2VecEncoder


def model_name(state: dict) -> str:
    """The ``model._name`` (fairseq's registered name) a checkpoint was saved with."""
    cfg = state.get("cfg")
    if cfg is not None and cfg.get("model") is not None:
        return cfg["model"].get("_name") or "?"
    args = state.get("args")
    return getattr(args, "arch", None) or getattr(args, "_name", None) or "?"


def require_kind(field: str, path, state: dict, accepts: Callable[[type], bool], expected: str) -> None:
    """Raises ``ValueError`` unless the model class of the checkpoint ``state`` (read from ``field=path``) passes
    ``accepts``; ``expected`` says in words what the field takes."""
    name = model_name(state)
    model_class = MODEL_REGISTRY.get(name)
    if model_class is not None and accepts(model_class):
        return
    found = f"a {name!r} model"
    pretrained = (state.get("cfg") or {}).get("model", {}).get("w2v_path") or \
        (state.get("cfg") or {}).get("model", {}).get("pretrained_path")
    if pretrained:
        found += f" (a fine-tuned model; it was fine-tuned from {pretrained})"
    raise ValueError(f"{field}={path} holds {found}; expected {expected}")


def speech_pretraining(model_class: type) -> bool:
    """What ``wav2vec_ctc`` fine-tunes: a pretraining model whose pretraining-only modules it can drop."""
    return hasattr(model_class, "remove_pretraining_modules")


_fairseq_encoder_init = Wav2VecEncoder.__init__


def encoder_init(self, cfg, output_size=None):
    if cfg.w2v_args is None:  # else the stored pretraining config is used and w2v_path is not read
        state = checkpoint_utils.load_checkpoint_to_cpu(cfg.w2v_path)
        names = sorted(name for name, model in MODEL_REGISTRY.items() if speech_pretraining(model))
        require_kind("model.w2v_path", cfg.w2v_path, state, speech_pretraining,
                     f"a speech pretraining checkpoint ({', '.join(names)})")
        del state
    _fairseq_encoder_init(self, cfg, output_size)


Wav2VecEncoder.__init__ = encoder_init
