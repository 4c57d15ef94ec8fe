"""Every example config names only fields that exist: a misspelt key fails here, not hours into a cluster job."""

from pathlib import Path

import pytest
from omegaconf import OmegaConf

import maskssl_fairseq  # noqa: F401  (registers our models, tasks and criterions)
from fairseq.criterions import CRITERION_DATACLASS_REGISTRY
from fairseq.dataclass.configs import FairseqConfig
from fairseq.models import MODEL_DATACLASS_REGISTRY
from fairseq.optim import OPTIMIZER_DATACLASS_REGISTRY
from fairseq.optim.lr_scheduler import LR_SCHEDULER_DATACLASS_REGISTRY
from fairseq.tasks import TASK_DATACLASS_REGISTRY
from helpers import REPO

CONFIGS = sorted((REPO / "examples").glob("*/*.yaml"))
COMPONENTS = {
    "model": MODEL_DATACLASS_REGISTRY,
    "task": TASK_DATACLASS_REGISTRY,
    "criterion": CRITERION_DATACLASS_REGISTRY,
    "optimizer": OPTIMIZER_DATACLASS_REGISTRY,
    "lr_scheduler": LR_SCHEDULER_DATACLASS_REGISTRY,
}


def check_component(group: str, node, where: str) -> None:
    """Merges a ``{_name: ..., field: value}`` node into its registered dataclass, which refuses unknown keys."""
    if not OmegaConf.is_dict(node):  # e.g. ``lr_scheduler: pass_through``
        return
    registry = COMPONENTS[group]
    assert node._name in registry, f"{where}: unknown {group} {node._name!r}"
    OmegaConf.merge(OmegaConf.structured(registry[node._name]), node)
    for name, nested in (node.get("groups") or {}).items():  # the composite optimizer's parameter groups
        for nested_group in ("optimizer", "lr_scheduler"):
            check_component(nested_group, nested[nested_group], f"{where} groups.{name}")


def test_every_method_has_configs():
    assert {path.parent.name for path in CONFIGS} == {"eh_mam", "m2d", "m2d_clap", "eat", "armhubert", "finetune",
                                                         "wav2vec2"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_config_fields_exist(path: Path):
    config = OmegaConf.load(path)
    # hydra's own section is not fairseq's; without chdir a relative common.user_dir fails once hydra.run.dir is set
    chdir = OmegaConf.select(config, "hydra.job.chdir")
    assert chdir is False, f"{path}: add 'hydra: {{job: {{chdir: false}}}}'"
    config.pop("hydra")
    OmegaConf.merge(OmegaConf.structured(FairseqConfig), config)  # common, dataset, optimization, checkpoint, ...
    for group in COMPONENTS:
        check_component(group, config[group], f"{path} {group}")


def test_a_misspelt_field_is_caught(tmp_path):
    config = OmegaConf.load(REPO / "examples" / "m2d" / "demo_m2d.yaml")
    config.model.mask_ration = 0.7
    with pytest.raises(Exception, match="mask_ration"):
        check_component("model", config.model, "demo_m2d.yaml model")
