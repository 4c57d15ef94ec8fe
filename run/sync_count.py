"""Host syncs of one real fairseq training step, counted on CPU.

    python run/sync_count.py <config.yaml | method> [-v] [--data DIR] [overrides ...]
    python run/sync_count.py eh_mam -v                 # a method name picks its tiny config
    python run/sync_count.py examples/m2d/tiny_dwm.yaml model.encoder_layers=1
    python run/sync_count.py all                       # one line per method

On CUDA every op whose result the host must read stalls the CPU until the GPU has drained its queue:
``.item()``, ``float()`` / ``int()`` / ``bool()`` of a tensor (``aten._local_scalar_dense``), ``nonzero``,
``masked_select``, indexing with a boolean mask (``x[mask]``, ``x[mask] = y``: a ``nonzero`` inside, again in
the backward), ``unique``, ``repeat_interleave`` without ``output_size``, ``bincount``, ``equal``. A
``TorchDispatchMode`` sees every such op of the step, the backward included; tensors made on the host on
purpose (a factory call without ``device=``, such as layerdrop's ``torch.rand(())``, and what is computed
from them alone) are not counted, as they stay on the CPU on a GPU run too.

The task, model, criterion and ``Trainer`` are built from the config exactly as ``fairseq-hydra-train``
builds them (hydra composition, ``add_defaults``, ``checkpoint_utils.load_checkpoint``), on tiny generated
data (noise-and-tone clips, captions, a random HuBERT teacher for ARMHuBERT, a pretrained checkpoint for
CTC fine-tuning). One ``trainer.train_step`` warms up (lazy one-time moves), the next one is counted.

Every sync is charged to the innermost frame of the plugin or of fairseq on its Python stack (for a backward
op, on the stack that built the autograd node): ``model`` (``models/``, ``modules/``, ``masking/``),
``criterion`` (``criterions/``), ``plugin`` (our other hooks into fairseq's step, e.g. ``guards.py``) and
``fairseq`` (its trainer and its logging: the ``model`` criterion's ``float()`` of the log keys, every
``reduce_metrics``). Whatever runs inside the model's forward or backward is the model's, fairseq's modules
(a HuBERT teacher) included. The budget is ours: model + criterion + plugin.
"""

import argparse
import collections
import contextlib
import dataclasses
import os
import sys
import tempfile
import traceback
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "maskssl_fairseq"
sys.path.insert(0, str(REPO))

# method -> (tiny config, overrides)
METHODS = {
    "eh_mam": ("examples/eh_mam/tiny.yaml", []),
    "data2vec2": ("examples/eh_mam/tiny.yaml", ["model.ranking_loss_weight=0", "model.hard_fraction_end=0"]),
    "m2d_random": ("examples/m2d/tiny_random.yaml", []),
    "m2d_ibm": ("examples/m2d/tiny_ibm.yaml", []),
    "m2d_dwm": ("examples/m2d/tiny_dwm.yaml", []),
    "msm_mae": ("examples/m2d/tiny_msm_mae.yaml", []),
    "m2d_clap": ("examples/m2d_clap/tiny.yaml", []),
    "eat": ("examples/eat/tiny.yaml", []),
    "armhubert": ("examples/armhubert/tiny.yaml", []),
    "ctc": ("examples/eh_mam/finetune_tiny.yaml", []),
}
OURS = ("model", "criterion", "plugin")

# factories whose result lives on the host when no device is named
HOST_FACTORIES = {
    torch.rand, torch.randn, torch.randint, torch.randperm, torch.zeros, torch.ones, torch.empty, torch.full,
    torch.arange, torch.linspace, torch.tensor, torch.as_tensor, torch.scalar_tensor,
}
_HOST = "_sync_count_host"


def is_host(value) -> bool:
    return getattr(value, _HOST, False)


def mark_host(out) -> None:
    for leaf in tree_flatten(out)[0]:
        if isinstance(leaf, torch.Tensor):
            try:
                setattr(leaf, _HOST, True)
            except (AttributeError, RuntimeError):
                pass


class HostFactories(TorchFunctionMode):
    """Marks the tensors made by a factory call without ``device=``: they stay on the host on a GPU run."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in HOST_FACTORIES and kwargs.get("device") is None:
            mark_host(out)
        return out


def _boolean(index) -> bool:
    return isinstance(index, torch.Tensor) and index.dtype in (torch.bool, torch.uint8)


def sync_kind(func, args, kwargs) -> Optional[str]:
    """The name of the host sync ``func`` makes on CUDA, else None."""
    name = func.overloadpacket.__name__
    if name == "_local_scalar_dense":
        return "item"
    if name in ("nonzero", "masked_select", "unique_consecutive", "_unique", "_unique2", "unique_dim",
                "bincount", "equal"):
        return name
    if name == "index" and any(_boolean(i) for i in args[1]):
        return "boolean index"
    if name in ("index_put", "index_put_", "_index_put_impl_") and any(_boolean(i) for i in args[1]):
        return "boolean index_put"
    if name == "repeat_interleave" and isinstance(args[0], torch.Tensor) and args[0].dtype != torch.bool \
            and len(args) == 1 and kwargs.get("output_size") is None:
        return "repeat_interleave"
    return None


@dataclasses.dataclass
class Sync:
    kind: str
    phase: str  # forward of the model, criterion outside it, backward, or the rest of the trainer's step
    part: str  # model, criterion, plugin or fairseq
    site: str


def _site(frames: List[traceback.FrameSummary], phase: str) -> tuple:
    """(part, "file:line (function)") of the innermost plugin or fairseq frame.

    Whatever runs in the model's forward or backward is the model's (fairseq's modules inside it too);
    elsewhere our ``criterions/`` are the criterion, ``reduce_metrics`` and fairseq's own code (its trainer,
    its ``model`` criterion reading the log keys) are fairseq's logging, the rest of ours the plugin."""
    stack = [f for f in frames if Path(f.filename).resolve() != Path(__file__).resolve()]
    logging_frame = any(f.name == "reduce_metrics" for f in stack)
    for frame in reversed(stack):
        path = Path(frame.filename).resolve()
        try:
            relative = path.relative_to(PLUGIN)
        except ValueError:
            relative = None
        if relative is not None:
            top = relative.parts[0]
            part = ("model" if phase in ("model", "backward") or top in ("models", "modules", "masking")
                    else "fairseq" if logging_frame else "criterion" if top == "criterions" else "plugin")
            return part, f"maskssl_fairseq/{relative}:{frame.lineno} ({frame.name})"
        parts = path.parts
        if "fairseq" in parts or "fairseq_cli" in parts:
            where = parts.index("fairseq") if "fairseq" in parts else parts.index("fairseq_cli")
            part = "model" if phase == "model" else "fairseq"
            return part, f"{'/'.join(parts[where:])}:{frame.lineno} ({frame.name})"
    return "other", "?"


def _forward_frames() -> Optional[List[traceback.FrameSummary]]:
    """The forward stack of the autograd node being run (anomaly mode records it), else None."""
    node = torch._C._current_autograd_node()
    if node is None:
        return None
    trace = node.metadata.get("traceback_")
    if not trace:
        return []
    frames = []
    for line in "".join(trace).splitlines():
        line = line.strip()
        if line.startswith('File "'):
            filename, _, rest = line[len('File "'):].partition('", line ')
            lineno, _, name = rest.partition(", in ")
            frames.append(traceback.FrameSummary(filename, int(lineno), name, line=""))
    return frames


class SyncCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.syncs: List[Sync] = []
        self.phases: List[str] = ["trainer"]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        tensors = [a for a in tree_flatten((args, kwargs))[0] if isinstance(a, torch.Tensor)]
        host = bool(tensors) and all(is_host(t) for t in tensors)
        if host:
            mark_host(out)
        kind = None if host else sync_kind(func, args, kwargs)
        if kind:
            backward = _forward_frames()
            frames = backward if backward is not None else traceback.extract_stack()
            phase = "backward" if backward is not None else self.phases[-1]
            part, site = _site(frames, phase)
            self.syncs.append(Sync(kind, phase, part, site))
        return out

    @contextlib.contextmanager
    def phase(self, name: str):
        self.phases.append(name)
        try:
            yield
        finally:
            self.phases.pop()


def _wrap_forward(module: torch.nn.Module, counter: SyncCounter, name: str) -> None:
    forward = module.forward

    def counted(*args, **kwargs):
        with counter.phase(name):
            return forward(*args, **kwargs)

    module.forward = counted


# ---- tiny data --------------------------------------------------------------------------------------

def write_clips(root: Path, split: str, seconds: List[float], seed: int, sample_rate: int = 16000) -> None:
    """``<split>.tsv`` of noise-and-tone clips of the given lengths (a manifest as fairseq reads it)."""
    import soundfile

    rng = np.random.default_rng(seed)
    lines = [str(root / "audio")]
    (root / "audio").mkdir(parents=True, exist_ok=True)
    for i, length in enumerate(seconds):
        samples = int(length * sample_rate)
        t = np.arange(samples) / sample_rate
        audio = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t) + 0.05 * rng.standard_normal(samples)
        name = f"{split}_{i}.wav"
        soundfile.write(root / "audio" / name, audio.astype(np.float32), sample_rate)
        lines.append(f"{name}\t{samples}")
    (root / f"{split}.tsv").write_text("\n".join(lines) + "\n")


def write_labels(root: Path, split: str, clips: int) -> None:
    """Letter transcripts (``.ltr``, ``.wrd``) and ``dict.ltr.txt`` for CTC fine-tuning."""
    words = ["a cat", "the dog", "so big", "red sun"]
    text = [words[i % len(words)] for i in range(clips)]
    (root / f"{split}.wrd").write_text("\n".join(text) + "\n")
    (root / f"{split}.ltr").write_text("\n".join(" ".join(t.replace(" ", "|")) + " |" for t in text) + "\n")
    (root / "dict.ltr.txt").write_text("".join(f"{c} 1\n" for c in "|ACDEGIBNORSTUH"))


def write_captions(root: Path, split: str, clips: int, dim: int) -> None:
    from maskssl_fairseq.data.captions import CAPTION_SUFFIX, EMBEDDING_SUFFIX

    (root / f"{split}{CAPTION_SUFFIX}").write_text("".join(f"a tone number {i}\n" for i in range(clips)))
    embeddings = np.random.default_rng(0).standard_normal((clips, 1, dim)).astype(np.float16)
    np.save(root / f"{split}{EMBEDDING_SUFFIX}", embeddings)


def make_data(root: Path, caption_dim: Optional[int], labels: bool) -> None:
    # lengths differ, as in real corpora: tasks that pad (ARMHuBERT, fine-tuning) see padding
    for split, seconds in (("pretrain", [2.0, 2.5, 3.0, 3.5, 2.2, 2.8, 3.2, 2.4] * 2), ("dev", [2.0, 2.6])):
        write_clips(root, split, seconds, seed=len(split))
        if caption_dim:
            write_captions(root, split, len(seconds), caption_dim)
    if labels:
        for split in ("train_10m", "train_1h"):
            write_clips(root, split, [2.0, 2.5, 3.0, 2.2, 2.8, 2.4] * 3, seed=len(split))
            write_labels(root, split, 18)
        write_labels(root, "dev", 2)


# ---- the fairseq step -------------------------------------------------------------------------------

def compose(config: Path, overrides: List[str]):
    from hydra import compose as hydra_compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from fairseq.dataclass.initialize import add_defaults, hydra_init
    from fairseq.dataclass.utils import omegaconf_no_object_check
    from omegaconf import OmegaConf

    import maskssl_fairseq  # noqa: F401  (registers our tasks and models before add_defaults reads them)

    GlobalHydra.instance().clear()
    hydra_init(config.stem)  # fairseq's schema under the config's name, as fairseq-hydra-train does
    with initialize_config_dir(config_dir=str(config.parent.resolve()), version_base="1.1"):
        cfg = hydra_compose(config.stem, overrides=overrides)
    add_defaults(cfg)
    with omegaconf_no_object_check():
        cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    OmegaConf.set_struct(cfg, True)
    return cfg


def build_trainer(cfg):
    from fairseq import checkpoint_utils, tasks, utils
    from fairseq.trainer import Trainer

    utils.import_user_module(cfg.common)
    np.random.seed(cfg.common.seed)
    utils.set_torch_seed(cfg.common.seed)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    criterion = task.build_criterion(cfg.criterion)
    trainer = Trainer(cfg, task, model, criterion)
    _, epoch_itr = checkpoint_utils.load_checkpoint(cfg.checkpoint, trainer)
    return trainer, epoch_itr


def train_steps(trainer, epoch_itr, steps: int):
    """Yields before each of ``steps`` calls of ``trainer.train_step``, as fairseq_cli/train.py makes them."""
    from fairseq.data import iterators

    update_freq = trainer.cfg.optimization.update_freq[0]
    batches = iterators.GroupedIterator(epoch_itr.next_epoch_itr(shuffle=False), update_freq)
    for _, samples in zip(range(steps), batches):
        yield samples


def needs(config: Path) -> Dict[str, bool]:
    text = config.read_text()
    return {"captions": "captions: true" in text, "teacher": "teacher_path: ???" in text,
            "pretrained": "w2v_path: ???" in text}


def prepared_overrides(config: Path, overrides: List[str], work: Path) -> List[str]:
    need = needs(config)
    data = work / "data"
    if not data.exists():
        make_data(data, caption_dim=None, labels=True)
    if need["captions"]:
        dim = int(compose(config, [f"task.data={data}", f"checkpoint.save_dir={work}", *overrides]).model.caption_embed_dim)
        caption_data = work / f"captions{dim}"
        if not caption_data.exists():
            make_data(caption_data, caption_dim=dim, labels=False)
        data = caption_data
    extra = [f"task.data={data}", f"checkpoint.save_dir={work / 'checkpoints' / config.stem}",
             f"common.user_dir={PLUGIN}", "common.log_interval=1", "dataset.num_workers=0",
             "optimization.max_update=10"]
    if need["teacher"]:
        teacher = work / "hubert_teacher.pt"
        if not teacher.exists():
            sys.path.insert(0, str(REPO / "examples" / "armhubert"))
            import make_random_teacher

            dim = int(compose(config, [*extra, "model.teacher_path=x", *overrides]).model.teacher_embed_dim)
            make_random_teacher.main(["--kind", "hubert", "--out", str(teacher), "--layers", "2", "--dim", str(dim),
                                      "--ffn", str(2 * dim), "--heads", "4", "--conv-dim", "32", "--conv-pos", "16",
                                      "--conv-pos-groups", "4"])
        extra.append(f"model.teacher_path={teacher}")
    if need["pretrained"]:
        pretrained = work / "pretrained.pt"
        if not pretrained.exists():
            pre_config = REPO / METHODS["eh_mam"][0]
            pre_cfg = compose(pre_config, [f"task.data={data}", f"checkpoint.save_dir={work / 'pretrain'}",
                                           f"common.user_dir={PLUGIN}"])
            trainer, _ = build_trainer(pre_cfg)
            trainer.consolidate_optimizer()
            trainer.save_checkpoint(str(pretrained), {})
        extra.append(f"model.w2v_path={pretrained}")
    return extra + overrides


def count(config: Path, overrides: List[str], work: Path, quiet: bool = True) -> List[Sync]:
    """The host syncs of one training step of ``config`` (after a warm-up step)."""
    import logging

    if quiet:
        logging.disable(logging.WARNING)
    cfg = compose(config, prepared_overrides(config, overrides, work))
    trainer, epoch_itr = build_trainer(cfg)
    counter = SyncCounter()
    _wrap_forward(trainer.model, counter, "model")
    _wrap_forward(trainer.criterion, counter, "criterion")
    steps = list(train_steps(trainer, epoch_itr, 2))
    if len(steps) < 2:
        raise RuntimeError(f"{config}: the tiny data gave fewer than 2 batches")
    trainer.train_step(steps[0])
    with torch.autograd.set_detect_anomaly(True, check_nan=False), HostFactories(), counter:
        trainer.train_step(steps[1])
    return counter.syncs


def summary(syncs: List[Sync]) -> Dict[str, int]:
    parts = collections.Counter(s.part for s in syncs)
    return {"ours": sum(parts[p] for p in OURS), **{p: parts[p] for p in (*OURS, "fairseq", "other")}}


def report(name: str, syncs: List[Sync], verbose: bool) -> None:
    totals = summary(syncs)
    print(f"{name}: {totals['ours']} host syncs in model + criterion + plugin (model {totals['model']}, "
          f"criterion {totals['criterion']}, plugin {totals['plugin']}); fairseq {totals['fairseq']}"
          + (f"; other {totals['other']}" if totals["other"] else ""))
    if verbose:
        sites = collections.Counter((s.part, s.phase, s.kind, s.site) for s in syncs)
        for (part, phase, kind, site), n in sorted(sites.items()):
            print(f"  {n:3d} x {part:9s} {phase:9s} {kind:18s} {site}")


def resolve(target: str) -> tuple:
    if target in METHODS:
        config, overrides = METHODS[target]
        return REPO / config, list(overrides)
    path = Path(target)
    if not path.is_file():
        raise SystemExit(f"{target}: neither a config file nor a method ({', '.join(METHODS)})")
    return path, []


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("target", help=f"a config yaml, a method ({', '.join(METHODS)}) or 'all'")
    parser.add_argument("overrides", nargs="*", help="hydra overrides, e.g. model.encoder_layers=1")
    parser.add_argument("-v", "--verbose", action="store_true", help="list every site (file:line) with its count")
    parser.add_argument("--work", type=Path, help="where the tiny data and checkpoints go (default: a temp dir)")
    args = parser.parse_intermixed_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    with contextlib.ExitStack() as stack:
        work = args.work or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        targets = list(METHODS) if args.target == "all" else [args.target]
        for target in targets:
            config, overrides = resolve(target)
            report(target, count(config, overrides + args.overrides, work), args.verbose)


if __name__ == "__main__":
    main()
