"""Lists the trainable parameters that a training step of a config leaves without a gradient.

    python run/unused_params.py --config-dir examples/m2d --config-name m2d_dwm [--at-updates 0,-1] \\
        common.user_dir=maskssl_fairseq task.data=<manifests> [size overrides ...]

``pytorch_ddp`` (torch's DistributedDataParallel, whose bucketed all-reduce overlaps the backward pass) expects
every parameter that requires a gradient to get one in every step unless ``find_unused_parameters`` is set;
``legacy_ddp`` all-reduces after the backward and fills missing gradients with zeros. This tool composes the
config as ``fairseq-hydra-train`` does, builds fairseq's own ``Trainer`` on CPU in fp32 (the precision flags do
not change which parameters a step uses) with one process, and runs one real ``train_step`` at each update
number of ``--at-updates`` (negative: counted back from ``optimization.max_update``, so ``-1`` is the last
update, where warm-ups, freezes and schedules have run out). After each step it prints the parameters whose
``.grad`` is None. The last line is a JSON summary; the exit status is 1 when any step left one unused.
"""

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

# on CPU, one process, fp32, in-process data loading: nothing here changes which parameters a step uses
CPU_OVERRIDES = [
    "common.cpu=true", "common.fp16=false", "common.bf16=false", "common.amp=false",
    "common.memory_efficient_fp16=false", "common.memory_efficient_bf16=false",
    "distributed_training.distributed_world_size=1", "dataset.num_workers=0", "optimization.update_freq=[1]",
]


def compose(config_dir: str, config_name: str, overrides: List[str], save_dir: str):
    """The config ``fairseq-hydra-train --config-dir D --config-name N overrides`` runs, resolved."""
    from fairseq.dataclass.initialize import add_defaults, hydra_init
    from fairseq.dataclass.utils import omegaconf_no_object_check
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    path = Path(config_dir).resolve()
    if not (path / f"{config_name}.yaml").is_file():
        sys.exit(f"unused_params: --config-dir/--config-name: no config {path / config_name}.yaml")
    hydra_init(config_name)  # fairseq's schema under the config's own name, as fairseq-hydra-train registers it
    with initialize_config_dir(config_dir=str(path), version_base="1.1"):
        cfg = hydra_compose(config_name, overrides=[*overrides, *CPU_OVERRIDES, f"checkpoint.save_dir={save_dir}"])
    add_defaults(cfg)
    with omegaconf_no_object_check():
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    OmegaConf.set_struct(cfg, True)
    return cfg


def unused_parameters(cfg, at_updates: List[int]) -> Dict[int, List[str]]:
    """``{update: [names of trainable parameters without a gradient after that update's train_step]}``."""
    from fairseq import tasks, utils
    from fairseq.trainer import Trainer

    utils.import_user_module(cfg.common)
    utils.set_torch_seed(cfg.common.seed)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    trainer = Trainer(cfg, task, model, criterion)
    batches = trainer.get_train_iterator(epoch=1).next_epoch_itr(shuffle=False)
    trainable = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    found = {}
    for update in at_updates:
        update = update if update >= 0 else cfg.optimization.max_update + update
        trainer.set_num_updates(update)
        trainer.train_step([next(batches)])  # zeroes the gradients (to None) first, as in training
        found[update] = [name for name, p in trainable if p.grad is None]
    return found


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-dir", required=True)
    parser.add_argument("--config-name", required=True)
    parser.add_argument("--at-updates", default="0,-1",
                        help="comma-separated update numbers to step at; negative counts back from max_update")
    parser.add_argument("overrides", nargs="*", help="hydra overrides, e.g. common.user_dir=... task.data=...")
    args = parser.parse_args(argv)
    try:
        at_updates = [int(u) for u in args.at_updates.split(",")]
    except ValueError:
        parser.error(f"--at-updates {args.at_updates!r}: comma-separated integers expected")
    with tempfile.TemporaryDirectory() as save_dir:
        cfg = compose(args.config_dir, args.config_name, args.overrides, save_dir)
        found = unused_parameters(cfg, at_updates)
    for update, names in found.items():
        listed = "\n  ".join(names)
        print(f"update {update}: " + (f"{len(names)} trainable parameters without a gradient:\n  {listed}" if names
                                       else "every trainable parameter got a gradient"))
    print(json.dumps({"config": f"{args.config_dir}/{args.config_name}", "unused": found}))
    return int(any(found.values()))


if __name__ == "__main__":
    sys.exit(main())
