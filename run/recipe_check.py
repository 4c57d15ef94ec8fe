"""Every paper-scale recipe under ``examples/`` starts and trains as written, shrunk to CPU size.

    python run/recipe_check.py                       # all recipes, on a small demo corpus made here
    python run/recipe_check.py --data demo/manifests --only eat

Each recipe (every yaml under ``examples/`` but the tiny and demo ones) goes through fairseq's hydra training
entry (``fairseq_cli.hydra_train``, in this one process: what ``fairseq-hydra-train`` runs after parsing) with
size overrides only: layers, widths, batch, crop, the number of updates and the warm-ups within it, data paths
(one process, no workers, no validation). Optimizer, scheduler, precision flags, clone batch, masks and the
rest stay as the yaml has them. On CPU:

- ``common.amp``: fairseq's ``AMPOptimizer`` (scaled backward, unscale and clip, scaler step) with a CPU
  ``torch.amp.GradScaler`` at fairseq's initial scale (fairseq's own is a CUDA scaler, disabled on CPU); the
  forward runs in fp32, as fairseq's CUDA autocast does not act on CPU.
- ``common.fp16``: fairseq's ``FP16Optimizer`` over the model cast with ``model.half()``: its dynamic loss scale
  (an update whose scaled gradients overflow is skipped and the scale halved) and its fp32 master copies,
  flattened where the yaml says so (the composite optimizer keeps one per parameter,
  ``maskssl_fairseq/mixed_precision.py``). fairseq's two CUDA-only lines on that path run on CPU here: the flat
  copy is keyed by the CUDA device index (None on CPU) and a skipped update's zero norm is made with ``.cuda()``.
- a mixed-precision recipe also runs in fp32 (all precision flags off) and in ``common.bf16``; their losses
  over the first updates must agree within ``--bf16-tolerance`` (relative).

One line per recipe: how it trained (updates, precision, optimizer wrapper), its losses, and the bf16 check.
Pretraining recipes hand their checkpoints to the fine-tuning ones (EAT -> EAT fine-tuning, EH-MAM -> its CTC
fine-tuning; fairseq's wav2vec 2.0 ``examples/wav2vec2/tiny.yaml`` -> ``examples/finetune``); ARMHuBERT's
teachers are random tiny HuBERT / WavLM files (``examples/armhubert/make_random_teacher.py``).
"""

import argparse
import io
import logging
import math
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Dict, List, Optional

import yaml

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
sys.path[:0] = [str(REPO), str(REPO / "manifests"), str(EXAMPLES / "m2d_clap"), str(EXAMPLES / "armhubert")]

UPDATES = 2
BF16_TOLERANCE = 0.005
VERBOSE = False
DEMO_MINUTES = ["--pretrain-minutes", "0.5", "--train-10m-minutes", "0.3", "--train-1h-minutes", "0.3",
                "--dev-minutes", "0.1", "--test-minutes", "0.1"]
TINY_TEACHER = ["--layers", "2", "--dim", "64", "--ffn", "128", "--heads", "4", "--conv-dim", "32", "--conv-pos", "16",
                "--conv-pos-groups", "4"]

# size overrides per model (``++`` also sets a field the yaml leaves at its default)
VIT = {"encoder_embed_dim": 64, "encoder_layers": 2, "encoder_attention_heads": 4}
SIZES: Dict[str, Dict[str, object]] = {
    "m2d": {**VIT, "predictor_embed_dim": 64, "predictor_layers": 1, "predictor_attention_heads": 4},
    "m2d_clap": {**VIT, "predictor_embed_dim": 64, "predictor_layers": 1, "predictor_attention_heads": 4,
                 "caption_embed_dim": 64},
    "msm_mae": {**VIT, "decoder_embed_dim": 64, "decoder_layers": 1, "decoder_attention_heads": 4},
    "eat": {**VIT, "input_frames": 256, "decoder_dim": 64, "decoder_layers": 1, "average_top_k_layers": 2},
    "armhubert": {"teacher_embed_dim": 64, "encoder_layers": 2, "encoder_embed_dim": 48, "encoder_ffn_embed_dim": 96,
                  "encoder_attention_heads": 4, "conv_pos": 16, "conv_pos_groups": 4,
                  "conv_feature_layers": "[(16, 10, 5)] + [(32, 1, 1)] + [(32, 3, 2)] * 4 + [(48, 1, 1)] + [(48, 2, 2)] * 2"},
    # 256 wide: fine-tuning's channel masks (mask_channel_length 64 at probability 0.25) need >= 1 span
    "data2vec_multi_eh_mam": {"embed_dim": 256, "num_heads": 4, "depth": 1, "prenet_depth": 1, "average_top_k_layers": 1,
                              "feature_encoder_spec": "[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2",
                              "conv_pos_depth": 2, "conv_pos_width": 38, "conv_pos_groups": 8, "decoder_dim": 32,
                              "decoder_groups": 8, "decoder_layers": 1},
    "spectrogram_classifier": {},  # the pretrained checkpoint's size
    "wav2vec_ctc": {"freeze_finetune_updates": 1},  # the pretrained checkpoint's size; unfrozen at update 2
}
TASK_SIZES: Dict[str, Dict[str, object]] = {
    "spectrogram_pretraining": {"task.crop_frames": 208, "task.norm_sample_size": 8, "dataset.batch_size": 4},
    "spectrogram_classification": {"task.crop_samples": 40000, "dataset.batch_size": 4},
    "audio_pretraining": {"task.max_sample_size": 48000, "task.min_sample_size": 8000, "dataset.max_tokens": 100000},
    "audio_finetuning": {"dataset.max_tokens": 100000},
}
PADDED_MAX_TOKENS = 200000  # above the longest demo-corpus utterance (about 6 s)
EAT_SIZES = {"task.crop_frames": 256, "task.crop_samples": 40000, "dataset.batch_size": 2}  # 16 clones each


def recipes(only: Optional[str] = None) -> List[Path]:
    """The paper-scale yamls: all but the tiny and demo configs and the tiny teacher; ``only``: comma-separated
    parts of their paths under ``examples/``."""
    found = sorted(p for p in EXAMPLES.glob("*/*.yaml") if "tiny" not in p.stem and "demo" not in p.stem)
    parts = only.split(",") if only else [""]
    return [p for p in found if any(part in str(p.relative_to(EXAMPLES)) for part in parts)]


def producer_first(paths: List[Path]) -> List[Path]:
    """Pretraining recipes before the fine-tuning ones that start from their checkpoints."""
    return sorted(paths, key=lambda p: read_yaml(p)["model"]["_name"] in ("spectrogram_classifier", "wav2vec_ctc"))


def read_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@contextmanager
def quiet():
    """What the tools and fairseq print (a fine-tuned model's encoder, file summaries), unless ``--verbose``."""
    if VERBOSE:
        yield
        return
    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):
        yield


class CheckData:
    """The data every recipe reads, from a demo corpus: each recipe's train subset name, captions, labels."""

    def __init__(self, corpus: Path, root: Path):
        self.corpus, self.root = corpus, root
        self.checkpoints: Dict[str, Path] = {}
        self._teachers: Dict[str, Path] = {}

    def for_recipe(self, cfg: dict) -> Path:
        task = cfg["task"]["_name"]
        subset = cfg["dataset"]["train_subset"]
        if task == "spectrogram_classification":
            return self.classification(bool(cfg["task"].get("multi_label")), subset)
        if task == "audio_finetuning":
            return self.corpus  # train_10m / train_1h with letters
        if cfg["task"].get("captions"):
            return self.captioned(subset)
        return self.renamed(subset)

    def renamed(self, subset: str) -> Path:
        out = self.root / "data" / subset
        if not out.exists():
            out.mkdir(parents=True)
            shutil.copy(self.corpus / "pretrain.tsv", out / f"{subset}.tsv")
        return out

    def captioned(self, subset: str) -> Path:
        out = self.root / "captioned" / subset
        if not out.exists():
            import caption_embeddings
            import demo_captions

            out.mkdir(parents=True)
            for suffix in (".tsv", ".wrd"):
                shutil.copy(self.corpus / f"pretrain{suffix}", out / f"{subset}{suffix}")
            with quiet():
                demo_captions.main(["--manifests", str(out), "--splits", subset])
                caption_embeddings.main(["--data", str(out), "--split", subset, "--encoder", "bow", "--bow-dim", "64"])
        return out

    def classification(self, multi_label: bool, subset: str) -> Path:
        out = self.root / ("multi_label" if multi_label else "single_label")
        if not out.exists():
            out.mkdir(parents=True)
            shutil.copy(self.corpus / "pretrain.tsv", out / f"{subset}.tsv")
            clips = len((self.corpus / "pretrain.tsv").read_text().splitlines()) - 1
            labels = [f"c{i % 3},c{(i + 1) % 5}" if multi_label else f"c{i % 3}" for i in range(clips)]
            (out / f"{subset}.label").write_text("".join(f"{label}\n" for label in labels))
        return out

    def teacher(self, kind: str) -> Path:
        if kind not in self._teachers:
            from make_random_teacher import main as make_random_teacher

            path = self.root / "teachers" / f"{kind}.pt"
            path.parent.mkdir(exist_ok=True)
            with quiet():
                make_random_teacher(["--kind", kind, "--out", str(path), *TINY_TEACHER])
            self._teachers[kind] = path
        return self._teachers[kind]


def pretrained_model(cfg: dict) -> Optional[str]:
    """The model whose checkpoint a fine-tuning recipe starts from: EAT for the spectrogram classifier, EH-MAM
    for CTC on normalised audio (what data2vec 2.0 / EH-MAM read), fairseq's wav2vec 2.0 on raw audio."""
    model = cfg["model"]["_name"]
    if model == "spectrogram_classifier":
        return "eat"
    if model == "wav2vec_ctc":
        return "data2vec_multi_eh_mam" if cfg["task"].get("normalize") else "wav2vec2"
    return None


def size_overrides(cfg: dict, data: CheckData, updates: int) -> List[str]:
    model, task = cfg["model"]["_name"], cfg["task"]["_name"]
    if model not in SIZES:
        raise KeyError(f"recipe_check has no size overrides for model {model!r}: add them to SIZES")
    out = {f"model.{key}": value for key, value in SIZES[model].items()}
    out.update(EAT_SIZES if model == "eat" else TASK_SIZES[task])
    if cfg["task"].get("enable_padding"):  # whole utterances, padded: batches count them uncropped
        out["dataset.max_tokens"] = PADDED_MAX_TOKENS
    if "reuse_attention" in cfg["model"]:  # the first layers' pattern, e.g. [False, True] of [False, True] * 6
        layers = SIZES[model]["encoder_layers"]
        out["model.reuse_attention"] = str(eval(cfg["model"]["reuse_attention"])[:layers])
    if model == "armhubert":
        out["model.teacher_path"] = data.teacher(cfg["model"].get("teacher_type", "hubert"))
    if model == "spectrogram_classifier":
        out["model.pretrained_path"] = data.checkpoints[pretrained_model(cfg)]
    if model == "wav2vec_ctc":
        out["model.w2v_path"] = data.checkpoints[pretrained_model(cfg)]
    # steps: the number of updates, and every warm-up or schedule length within it
    out["optimization.max_update"] = updates
    scheduler = cfg.get("lr_scheduler")
    if isinstance(scheduler, dict):
        if "warmup_updates" in scheduler:
            out["lr_scheduler.warmup_updates"] = 1
        if "total_num_update" in scheduler:
            out["lr_scheduler.total_num_update"] = updates
    for group, group_cfg in cfg.get("optimizer", {}).get("groups", {}).items():
        if "warmup_updates" in (group_cfg.get("lr_scheduler") or {}):
            out[f"optimizer.groups.{group}.lr_scheduler.warmup_updates"] = 1
    return [f"++{key}={quoted(value)}" for key, value in out.items()]


def quoted(value) -> str:
    """A hydra override value: strings such as ``[(16, 10, 5)] * 2`` quoted, not parsed as lists."""
    return f"'{value}'" if isinstance(value, str) else str(value)


PRECISION_FLAGS = ("common.fp16", "common.bf16", "common.amp", "common.memory_efficient_fp16",
                   "common.memory_efficient_bf16")


def precision_of(cfg: dict) -> str:
    common = cfg.get("common", {})
    return next((flag.split(".")[1] for flag in PRECISION_FLAGS if common.get(flag.split(".")[1])), "fp32")


class Run:
    """What one training run showed: the loss of every update and the optimizer fairseq built."""

    def __init__(self):
        self.losses: List[float] = []
        self.optimizer = ""
        self.loss_scale: Optional[float] = None
        self.skipped = 0


@contextmanager
def observed(run: Run):
    """Records each update's loss and the optimizer; under amp, gives fairseq's AMPOptimizer a CPU GradScaler
    (fairseq's ``torch.cuda.amp.GradScaler`` is disabled on CPU, so it would neither scale nor unscale)."""
    import torch
    from fairseq.optim.amp_optimizer import AMPOptimizer
    from fairseq.trainer import Trainer

    fairseq_train_step = Trainer.train_step

    def train_step(trainer, samples, raise_oom=False):
        optimizer = trainer.optimizer
        if isinstance(optimizer, AMPOptimizer) and not optimizer.scaler.is_enabled():
            optimizer._grad_scaler = torch.amp.GradScaler("cpu", init_scale=trainer.cfg.common.fp16_init_scale)
        run.optimizer = " + ".join(type(o).__name__ for o in (optimizer, getattr(optimizer, "fp32_optimizer", None))
                                   if o is not None)
        output = fairseq_train_step(trainer, samples, raise_oom)
        if output is None:  # fp16: the scaled gradients overflowed, the scale halves and the update is skipped
            run.skipped += 1
        else:
            run.losses.append(float(output["loss"]))
        scaler = getattr(optimizer, "scaler", None)
        run.loss_scale = float(scaler.get_scale() if hasattr(scaler, "get_scale") else getattr(scaler, "loss_scale", 0))
        return output

    Trainer.train_step = train_step
    cuda_device, to_cuda = torch.cuda.current_device, torch.Tensor.cuda
    if not torch.cuda.is_available():
        # fairseq's CUDA-only lines, on CPU: its flattened fp16 master copy is keyed by
        # ``torch.cuda.current_device()`` and matched with each parameter's ``device.index`` (None on CPU), and
        # an fp16 update whose scaled gradients overflow is skipped with a zero norm made by ``.cuda()``
        torch.cuda.current_device = lambda: None
        torch.Tensor.cuda = lambda tensor, *args, **kwargs: tensor
    try:
        yield
    finally:
        Trainer.train_step = fairseq_train_step
        torch.cuda.current_device, torch.Tensor.cuda = cuda_device, to_cuda


def train(config: Path, overrides: List[str], run_dir: Path) -> Run:
    """One run of ``config`` through fairseq's hydra entry (``fairseq_cli.hydra_train._hydra_main``)."""
    from fairseq.dataclass.initialize import hydra_init
    from fairseq_cli.hydra_train import _hydra_main
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    hydra_init(config.stem)  # fairseq's config schema under the recipe's name, as fairseq-hydra-train registers it
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config.parent), version_base="1.1"):
        cfg = compose(config_name=config.stem, overrides=[
            f"common.user_dir={REPO / 'maskssl_fairseq'}", "common.log_interval=1", "++common.reset_logging=false",
            f"checkpoint.save_dir={run_dir}", "++dataset.num_workers=0", "++dataset.disable_validation=true",
            "++distributed_training.distributed_world_size=1", *overrides,
        ])
    run = Run()
    with observed(run), quiet():
        _hydra_main(cfg)  # (fairseq prints a fine-tuned model's encoder)
    return run


def relative_gap(a: List[float], b: List[float]) -> float:
    return max(abs(x - y) / max(abs(y), 1e-8) for x, y in zip(a, b))


def check(config: Path, data: CheckData, updates: int, tolerance: float) -> dict:
    cfg = read_yaml(config)
    name = str(config.relative_to(EXAMPLES).with_suffix(""))
    data_dir = data.for_recipe(cfg)
    overrides = [f"task.data={data_dir}", *size_overrides(cfg, data, updates)]
    run_dir = data.root / "runs" / name
    model = cfg["model"]["_name"]
    produces = model in ("eat", "data2vec_multi_eh_mam") and model not in data.checkpoints
    started, cpu = time.time(), time.process_time()
    as_written = train(config, overrides + ([] if produces else ["checkpoint.no_save=true"]), run_dir)
    if produces:
        data.checkpoints[model] = run_dir / "checkpoint_last.pt"
    result = {"recipe": name, "precision": precision_of(cfg), "optimizer": as_written.optimizer,
              "losses": as_written.losses, "loss_scale": as_written.loss_scale, "skipped": as_written.skipped}
    result["trains"] = len(as_written.losses) == updates and all(map(math.isfinite, as_written.losses))
    if result["precision"] != "fp32":
        off = [f"++{flag}=false" for flag in PRECISION_FLAGS]
        fp32 = train(config, overrides + off + ["checkpoint.no_save=true"], run_dir / "fp32").losses
        bf16 = train(config, overrides + off + ["++common.bf16=true", "checkpoint.no_save=true"], run_dir / "bf16").losses
        result.update(fp32=fp32, bf16=bf16, bf16_gap=relative_gap(bf16, fp32))
        result["bf16_ok"] = len(bf16) == len(fp32) == updates and result["bf16_gap"] <= tolerance
    result["seconds"], result["cpu_seconds"] = time.time() - started, time.process_time() - cpu
    return result


def line(result: dict, tolerance: float) -> str:
    losses = " ".join(f"{x:.4f}" for x in result["losses"])
    text = (f"{result['recipe']:<28} {result['precision']:<5} {result['optimizer']:<40} "
            f"{'trains' if result['trains'] else 'FAILS'} {len(result['losses'])} updates, loss {losses}")
    if result["skipped"]:
        text += f" after {result['skipped']} overflow skips"
    if result["loss_scale"]:
        text += f" (loss scale {result['loss_scale']:g})"
    if "bf16_gap" in result:
        verdict = "within" if result["bf16_ok"] else "NOT within"
        text += (f"; bf16 vs fp32 update 1: {result['bf16'][0]:.4f} / {result['fp32'][0]:.4f}, largest gap "
                 f"{100 * result['bf16_gap']:.2f}% ({verdict} {100 * tolerance:g}%)")
    return text + f" [{result['seconds']:.1f} s, CPU {result['cpu_seconds']:.1f} s]"


def make_corpus(root: Path) -> Path:
    """A small espeak-ng demo corpus (``manifests/demo_corpus.py``: 8 utterances a split)."""
    cmd = [sys.executable, str(REPO / "manifests" / "demo_corpus.py"), "--out", str(root / "demo"), "--seed", "7",
           *DEMO_MINUTES]
    made = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if made.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{made.stdout}")
    return root / "demo" / "manifests"


def main(argv=None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="demo corpus manifests (manifests/demo_corpus.py); made if absent")
    parser.add_argument("--only", help="recipes whose path under examples/ contains one of these (comma-separated), "
                                       "e.g. eat or m2d/m2d_dwm,armhubert/armhubert.yaml")
    parser.add_argument("--updates", type=int, default=UPDATES)
    parser.add_argument("--bf16-tolerance", type=float, default=BF16_TOLERANCE,
                        help="largest relative gap of the bf16 losses to the fp32 ones")
    parser.add_argument("--verbose", action="store_true", help="keep fairseq's log")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(min(torch.get_num_threads(), 2))
    global VERBOSE
    VERBOSE = args.verbose
    if not args.verbose:
        logging.disable(logging.WARNING)
        warnings.filterwarnings("ignore")
    results = []
    with tempfile.TemporaryDirectory(prefix="recipe_check_") as tmp:
        root = Path(tmp)
        data = CheckData(args.data or make_corpus(root), root)
        selected = producer_first(recipes(args.only))
        needs = {pretrained_model(read_yaml(p)) for p in selected} - {None}
        models = {read_yaml(p)["model"]["_name"] for p in selected}
        if "wav2vec2" in needs:
            data.checkpoints["wav2vec2"] = wav2vec2_checkpoint(data)
        for name, model in (("eat/eat_base_as2m", "eat"), ("eh_mam/base_librispeech", "data2vec_multi_eh_mam")):
            if model in needs and model not in models:
                selected.insert(0, EXAMPLES / f"{name}.yaml")  # the pretraining run the fine-tuning needs
        for config in selected:
            result = check(config, data, args.updates, args.bf16_tolerance)
            results.append(result)
            print(line(result, args.bf16_tolerance), flush=True)
    logging.disable(logging.NOTSET)
    failed = [r["recipe"] for r in results if not r["trains"] or not r.get("bf16_ok", True)]
    print(f"{len(results) - len(failed)} of {len(results)} recipes pass" + (f"; failed: {', '.join(failed)}" if failed else ""))
    if failed:
        raise SystemExit(1)
    return results


def wav2vec2_checkpoint(data: CheckData) -> Path:
    """fairseq's own wav2vec 2.0 (``examples/wav2vec2/tiny.yaml``, narrower), one update: what
    ``examples/finetune`` (raw audio, ``task.normalize: false``) fine-tunes."""
    run_dir = data.root / "runs" / "wav2vec2"
    train(EXAMPLES / "wav2vec2" / "tiny.yaml", [
        f"task.data={data.renamed('pretrain')}", "optimization.max_update=1", "model.encoder_layers=1",
        "model.encoder_embed_dim=256", "model.encoder_ffn_embed_dim=256",
        f"model.conv_feature_layers={quoted('[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2')}", "model.conv_pos=16",
        "task.max_sample_size=48000", "dataset.max_tokens=100000",
    ], run_dir)
    return run_dir / "checkpoint_last.pt"


if __name__ == "__main__":
    main()
