"""Tiny checkpoints of every model, built in-process from the examples' tiny configs and saved as fairseq's
trainer saves them (``{cfg, model, ...}``): untrained, which is all the features, s3prl and HEAR tests need."""

from pathlib import Path

import torch
from fairseq import tasks
from fairseq.dataclass.configs import FairseqConfig
from fairseq.models import MODEL_DATACLASS_REGISTRY
from fairseq.tasks import TASK_DATACLASS_REGISTRY
from omegaconf import OmegaConf

import maskssl_fairseq  # noqa: F401  (registers the models and tasks)
from helpers import REPO

# kind -> (tiny config, overrides)
TINY = {
    "eh_mam": ("eh_mam/tiny.yaml", {}),
    "data2vec2": ("eh_mam/tiny.yaml", {"model.ranking_loss_weight": 0.0, "model.hard_fraction_end": 0.0}),
    "armhubert": ("armhubert/tiny.yaml", {"model.teacher_path": None}),
    "m2d": ("m2d/tiny_random.yaml", {}),
    "msm_mae": ("m2d/tiny_msm_mae.yaml", {}),
    "m2d_clap": ("m2d_clap/tiny.yaml", {}),
    "eat": ("eat/tiny.yaml", {}),
}
SPEECH = ("eh_mam", "data2vec2", "armhubert")


def build(kind: str, path: Path, seed: int = 0) -> Path:
    """Writes the untrained tiny ``kind`` model to ``path``, as a fairseq checkpoint."""
    config, overrides = TINY[kind]
    loaded = OmegaConf.load(REPO / "examples" / config)
    cfg = OmegaConf.merge(OmegaConf.structured(FairseqConfig), {k: loaded[k] for k in ("common", "task", "model", "optimization") if k in loaded})
    # the registered dataclasses' defaults, as hydra composes them (the model's interpolate task fields)
    cfg.task = OmegaConf.merge(OmegaConf.structured(TASK_DATACLASS_REGISTRY[cfg.task._name]), cfg.task)
    cfg.model = OmegaConf.merge(OmegaConf.structured(MODEL_DATACLASS_REGISTRY[cfg.model._name]), cfg.model)
    cfg.task.data = "unused"
    if cfg.task._name == "spectrogram_pretraining":
        cfg.task.norm_stats = [-7.1, 4.2]  # M2D's fallback statistics, instead of measuring a corpus
    for key, value in overrides.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    torch.manual_seed(seed)
    captions = cfg.task.get("captions", False)
    if captions:  # M2D-CLAP trains on captions; its checkpoint says so, and must load without them
        cfg.task.captions = False
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    if captions:
        cfg.task.captions = True
    history = [{"criterion_name": "ModelCriterion", "optimizer_name": "none", "lr_scheduler_state": {},
                "num_updates": 0}]
    torch.save({"cfg": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "model": model.state_dict(),
                "optimizer_history": history, "extra_state": {}}, path)
    return path


def build_classifier(pretrained: Path, path: Path) -> Path:
    """A ``spectrogram_classifier`` on ``pretrained`` (two labels), saved as a fine-tuned checkpoint whose task data
    is gone."""
    from fairseq import models

    from maskssl_fairseq.models.audio_classifier import SpectrogramClassifierConfig

    cfg = OmegaConf.merge(OmegaConf.structured(SpectrogramClassifierConfig),
                          {"_name": "spectrogram_classifier", "pretrained_path": str(pretrained), "labels": ["a", "b"]})
    model = models.build_model(cfg, None)
    task = {"_name": "spectrogram_classification", "data": str(path.parent / "gone")}
    history = [{"criterion_name": "AudioClassificationCriterion", "optimizer_name": "none",
                "lr_scheduler_state": {}, "num_updates": 0}]
    torch.save({"cfg": {"model": OmegaConf.to_container(cfg, enum_to_str=True), "task": task},
                "model": model.state_dict(), "optimizer_history": history, "extra_state": {}}, path)
    return path
