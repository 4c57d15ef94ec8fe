"""Running the real ``fairseq-hydra-train`` from tests and reading what it logged."""

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

REPO = Path(__file__).resolve().parents[1]
PLUGIN_DIR = REPO / "maskssl_fairseq"
VENV_BIN = Path(sys.executable).parent


def run_checked(cmd: List[str], *, cwd: Path = REPO, timeout: int = 600, env: Dict[str, str] = None) -> str:
    """Runs ``cmd``; on failure the assertion shows the command and the end of its output."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    full_env.update(env or {})
    proc = subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, timeout=timeout,
    )
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n{proc.stdout[-6000:]}"
    return proc.stdout


def fairseq_hydra_train(config_dir: Path, config_name: str, *overrides: str, run_dir: Path, timeout: int = 600) -> str:
    """Trains through the ``fairseq-hydra-train`` entry point with the plugin loaded; returns its log.

    ``run_dir`` holds hydra's outputs; checkpoints go to ``run_dir/checkpoints`` unless overridden.
    """
    cmd = [
        VENV_BIN / "fairseq-hydra-train",
        "--config-dir", config_dir,
        "--config-name", config_name,
        f"common.user_dir={PLUGIN_DIR}",
        "common.log_format=json",
        "common.log_interval=1",
        f"checkpoint.save_dir={run_dir / 'checkpoints'}",
        f"hydra.run.dir={run_dir}",
        *overrides,
    ]
    return run_checked(cmd, timeout=timeout)


def logged(log: str, section: str = "train_inner") -> List[dict]:
    """The json records fairseq logged under ``section`` (``train_inner``, ``train``, or a valid subset name).

    Under hydra a record reads ``[<time>][<section>][INFO] - {...}``.
    """
    marker = f"][{section}][INFO] - {{"
    return [json.loads("{" + line.split(marker, 1)[1]) for line in log.splitlines() if marker in line]


def series(log: str, key: str, section: str = "train_inner") -> List[float]:
    """One logged value over training, e.g. ``series(log, "loss")``."""
    return [float(r[key]) for r in logged(log, section) if key in r]
