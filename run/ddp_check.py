"""Trains a config with one process and with two CPU processes at the same global batch and compares them.

    python run/ddp_check.py --config-dir examples/eh_mam --config-name tiny [--updates 5] \\
        common.user_dir=maskssl_fairseq task.data=<manifests> [overrides ...]

One process runs ``update_freq = 2 u`` micro-batches per update, two processes (gloo, ``tcp://127.0.0.1``, one
process per rank) run ``u`` each, where ``u`` is the config's ``optimization.update_freq``: fairseq hands
micro-batch ``i`` of rank ``r`` the batch that the single process sees at position ``2 i + r``, and the plugin
seeds each position alike (``maskssl_fairseq/distributed.py``), so both layouts mask the same utterances
alike. Prints the differences of every logged value per update and of the final parameters (EMA teachers
included); exits 1 when the first update's loss differs by more than ``--loss-rtol`` (relative) or a
parameter by more than ``--param-atol``, with the last line a JSON summary. Models with an EMA teacher also
compare it across the two ranks themselves (updates 1, 2, 4, ...; a difference stops the run).
"""

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

import torch
from omegaconf import OmegaConf

VENV_BIN = Path(sys.executable).parent
TRAIN_INNER = "][train_inner][INFO] - {"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def config_update_freq(config_dir: str, config_name: str, overrides: List[str]) -> int:
    for override in overrides:
        key, _, value = override.lstrip("+").partition("=")
        if key == "optimization.update_freq":
            return int(str(value).strip("[]").split(",")[0])
    path = Path(config_dir) / f"{config_name}.yaml"
    if not path.is_file():
        sys.exit(f"ddp_check: --config-dir/--config-name: no config {path}")
    freq = OmegaConf.select(OmegaConf.load(path), "optimization.update_freq", default=[1])
    return int(freq[0] if OmegaConf.is_list(freq) or isinstance(freq, list) else freq)


def train_inner(log: str) -> List[dict]:
    return [json.loads("{" + line.split(TRAIN_INNER, 1)[1]) for line in log.splitlines() if TRAIN_INNER in line]


def launch(args, run_dir: Path, update_freq: int, rank: int = None, world: int = 1, port: int = 0) -> subprocess.Popen:
    cmd = [
        str(VENV_BIN / "fairseq-hydra-train"), "--config-dir", args.config_dir, "--config-name", args.config_name,
        *args.overrides,
        f"optimization.max_update={args.updates}", f"optimization.update_freq=[{update_freq}]",
        "common.cpu=true", "common.log_format=json", "common.log_interval=1", "dataset.disable_validation=true",
        "checkpoint.save_interval_updates=0", "checkpoint.no_epoch_checkpoints=true",
        f"checkpoint.save_dir={run_dir / 'checkpoints'}", f"hydra.run.dir={run_dir if rank is None else run_dir / f'rank{rank}'}",
    ]
    if rank is not None:
        cmd += [
            f"distributed_training.distributed_world_size={world}", f"distributed_training.distributed_rank={rank}",
            f"distributed_training.distributed_init_method=tcp://127.0.0.1:{port}",
            "distributed_training.distributed_backend=gloo", "distributed_training.distributed_no_spawn=true",
            "distributed_training.device_id=0",
        ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def finish(procs: List[subprocess.Popen], timeout: int) -> List[str]:
    logs = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for other in procs:
                other.kill()
            sys.exit(f"ddp_check: a run took longer than {timeout} s")
        if proc.returncode != 0:
            for other in procs:
                other.kill()
            sys.exit(f"ddp_check: {' '.join(proc.args)} exited {proc.returncode}:\n{out[-4000:]}")
        logs.append(out)
    return logs


def final_parameters(run_dir: Path) -> Dict[str, torch.Tensor]:
    state = torch.load(run_dir / "checkpoints" / "checkpoint_last.pt", map_location="cpu", weights_only=False)["model"]
    flat = {}
    for name, value in state.items():
        if isinstance(value, dict):  # the EMA teacher's fp32 parameters
            flat.update({f"{name}.{key}": tensor for key, tensor in value.items()})
        elif torch.is_tensor(value) and value.is_floating_point():
            flat[name] = value
    return flat


def compare(single_log: str, multi_log: str, single_dir: Path, multi_dir: Path) -> dict:
    single, multi = train_inner(single_log), train_inner(multi_log)
    if not single or len(single) != len(multi):
        sys.exit(f"ddp_check: logged {len(single)} updates with one process and {len(multi)} with two")
    logged = {}
    for key in single[0]:
        if key in ("epoch", "num_updates", "wps", "ups", "wpb", "bsz", "train_wall", "gb_free", "wall", "lr"):
            continue
        pairs = [(float(a[key]), float(b[key])) for a, b in zip(single, multi) if key in a and key in b]
        logged[key] = max(abs(a - b) for a, b in pairs)
    first_loss = (float(single[0]["loss"]), float(multi[0]["loss"]))
    loss_rdiff = abs(first_loss[0] - first_loss[1]) / max(abs(first_loss[0]), 1e-12)
    a, b = final_parameters(single_dir), final_parameters(multi_dir)
    if a.keys() != b.keys():
        sys.exit(f"ddp_check: the checkpoints hold different parameters: {sorted(a.keys() ^ b.keys())[:5]}")
    param_diff = {name: float((a[name].double() - b[name].double()).abs().max()) if a[name].numel() else 0.0
                  for name in a}
    worst = max(param_diff, key=param_diff.get)
    # the plugin compares the EMA teachers of all ranks at updates 1, 2, 4, ... and stops the run if they differ
    rank_checks = [int(u) for u in re.findall(r"identical on all 2 ranks at update (\d+)", multi_log)]
    return {"updates": len(single), "first_loss": first_loss, "first_loss_rdiff": loss_rdiff,
            "teacher_identical_on_every_rank_at": rank_checks,
            "logged_max_abs_diff": logged, "param_max_abs_diff": param_diff[worst], "worst_param": worst,
            "losses_1": [float(r["loss"]) for r in single], "losses_2": [float(r["loss"]) for r in multi]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-dir", required=True)
    parser.add_argument("--config-name", required=True)
    parser.add_argument("--updates", type=int, default=5)
    parser.add_argument("--loss-rtol", type=float, default=1e-5, help="first update's loss, relative")
    parser.add_argument("--param-atol", type=float, default=1e-4, help="final parameters, absolute")
    parser.add_argument("--out", type=Path, help="keep the runs here (default: a temporary directory)")
    parser.add_argument("--timeout", type=int, default=600)
    parser.add_argument("overrides", nargs="*", help="hydra overrides, e.g. common.user_dir=... task.data=...")
    args = parser.parse_args()
    if args.updates < 1:
        parser.error("--updates must be at least 1")
    freq = config_update_freq(args.config_dir, args.config_name, args.overrides)
    args.overrides = [o for o in args.overrides if not o.lstrip("+").startswith("optimization.update_freq=")]

    with tempfile.TemporaryDirectory() as tmp:
        out = args.out or Path(tmp)
        if args.out and any(args.out.glob("*/checkpoints/checkpoint_last.pt")):
            sys.exit(f"ddp_check: --out {args.out} holds earlier runs; remove them or pick another directory")
        single_dir, multi_dir = out / "one_process", out / "two_processes"
        port = free_port()
        # the three processes share the machine: the single run first, then the two ranks together
        (single_log,) = finish([launch(args, single_dir, 2 * freq)], args.timeout)
        multi_logs = finish([launch(args, multi_dir, freq, rank, 2, port) for rank in range(2)], args.timeout)
        result = compare(single_log, multi_logs[0], single_dir, multi_dir)

    print(f"{result['updates']} updates, update_freq {2 * freq} x 1 process vs {freq} x 2 processes")
    print(f"first loss: {result['first_loss'][0]!r} vs {result['first_loss'][1]!r} "
          f"(relative difference {result['first_loss_rdiff']:.3g}, tolerance {args.loss_rtol:g})")
    for key, diff in result["logged_max_abs_diff"].items():
        print(f"  logged {key}: max |difference| {diff:.3g}")
    print(f"final parameters: max |difference| {result['param_max_abs_diff']:.3g} in {result['worst_param']} "
          f"(tolerance {args.param_atol:g})")
    if result["teacher_identical_on_every_rank_at"]:
        print(f"EMA teacher identical on both ranks at updates {result['teacher_identical_on_every_rank_at']}")
    passed = result["first_loss_rdiff"] <= args.loss_rtol and result["param_max_abs_diff"] <= args.param_atol
    result["passed"] = passed
    print(json.dumps(result))
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
