"""What a cluster job meets, through the real ``fairseq-hydra-train``: preemption signals, a second run on the
same ``save_dir``, a stale lock, a full disk and a torn ``checkpoint_last.pt``.

One tiny EH-MAM schedule (8 updates of 0.1 s, an interval checkpoint every 2) is trained once straight
through; a chain of interrupted runs on one folder meets every fault in turn and must reproduce its logged
values and final weights exactly. Four training processes and one refused at its start, about 30 s of CPU.
"""

import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, List, Optional

import pytest
import torch

from helpers import PLUGIN_DIR, REPO, VENV_BIN, logged, run_checked
from maskssl_fairseq.checkpoint_safety import LOCK_NAME, unreadable_reason
from maskssl_fairseq.preemption import PREEMPTED_EXIT_STATUS, STOP_SIGNALS, StopRequest
from test_resume import EH_MAM, RANDOM_CROPS

LAST = 8
CHECKED = ("loss", "loss_regression", "loss_ranking", "masked_pct", "ranking_accuracy", "gnorm")


def train_command(demo_corpus: Path, run_dir: Path, *overrides: str, save_dir: Path = None,
                  max_update: int = LAST) -> List[str]:
    return [
        VENV_BIN / "fairseq-hydra-train", "--config-dir", EH_MAM, "--config-name", "tiny",
        f"common.user_dir={PLUGIN_DIR}", "common.log_format=json", "common.log_interval=1", f"task.data={demo_corpus}",
        f"hydra.run.dir={run_dir}", f"checkpoint.save_dir={save_dir or run_dir / 'checkpoints'}", *RANDOM_CROPS,
        f"optimization.max_update={max_update}", "checkpoint.save_interval_updates=2", *overrides,
    ]


def launch(cmd, preexec_fn: Optional[Callable] = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.Popen([str(c) for c in cmd], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, preexec_fn=preexec_fn)


def read_until(proc: subprocess.Popen, seen: List[str], marker: str) -> None:
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            return
    raise AssertionError(f"ended (rc {proc.wait()}) before logging {marker!r}:\n{''.join(seen[-30:])}")


@contextlib.contextmanager
def killed_on_failure(proc: subprocess.Popen):
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def finish(proc: subprocess.Popen, seen: List[str]) -> str:
    seen.extend(proc.stdout)
    proc.wait()
    return "".join(seen)


def signalled_run(cmd, signum: int, marker: str, preexec_fn: Optional[Callable] = None,
                  status: int = PREEMPTED_EXIT_STATUS, meanwhile: Optional[Callable] = None) -> str:
    """Runs ``cmd``, sends ``signum`` once it logs ``marker``; returns the whole log.

    ``meanwhile(proc)`` runs while the training process is held there (SIGSTOP)."""
    proc, seen = launch(cmd, preexec_fn), []
    with killed_on_failure(proc):
        read_until(proc, seen, marker)
        if meanwhile is not None:
            proc.send_signal(signal.SIGSTOP)
            meanwhile(proc)
            proc.send_signal(signal.SIGCONT)
        proc.send_signal(signum)
        log = finish(proc, seen)
    assert proc.returncode == status, log[-4000:]
    return log


def updates(log: str) -> List[int]:
    return [int(record["num_updates"]) for record in logged(log)]


def stopped_at(log: str, name: str) -> int:
    line = next(line for line in log.splitlines() if f"stopped by {name} after update" in line)
    return int(line.split("after update ")[1].split(":")[0])


def checkpoint_updates(path: Path) -> int:
    return torch.load(path, map_location="cpu", weights_only=False)["optimizer_history"][-1]["num_updates"]


def assert_continues_reference(log: str, reference: dict, first: int, last: int) -> None:
    assert updates(log) == list(range(first, last + 1)), updates(log)
    for record in logged(log):
        expected = reference[int(record["num_updates"])]
        assert {key: record[key] for key in CHECKED} == {key: expected[key] for key in CHECKED}, record["num_updates"]


@pytest.fixture(scope="module")
def reference(demo_corpus, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("straight")
    log = run_checked(train_command(demo_corpus, run_dir))
    records = {int(record["num_updates"]): record for record in logged(log)}
    assert sorted(records) == list(range(1, LAST + 1))
    assert not (run_dir / "checkpoints" / LOCK_NAME).exists()  # released at exit
    state = torch.load(run_dir / "checkpoints" / "checkpoint_last.pt", map_location="cpu", weights_only=False)["model"]
    return records, state


def a_dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_preempted_refused_full_disk_and_torn_checkpoint_runs_end_as_the_straight_one(reference, demo_corpus, tmp_path):
    records, final_state = reference
    cmd, folder = train_command(demo_corpus, tmp_path), tmp_path / "checkpoints"

    # held (SIGSTOP) while a second run on its folder refuses to start, naming it; then SIGTERM (Slurm
    # preemption): the update under way finishes, checkpoint_last.pt holds it, exit 75
    def second_run(first: subprocess.Popen) -> None:
        other = train_command(demo_corpus, tmp_path / "elsewhere", save_dir=folder)
        second = subprocess.run([str(c) for c in other], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, timeout=300)
        assert second.returncode != 0
        assert (f"checkpoint.save_dir={folder} is in use by another training run (host {socket.gethostname()} "
                f"pid {first.pid}") in second.stdout, second.stdout[-3000:]
        assert "num. shared model params" not in second.stdout  # refused before building a model

    log = signalled_run(cmd, signal.SIGTERM, '"num_updates": "2"', meanwhile=second_run)
    first_stop = stopped_at(log, "SIGTERM")
    assert "received SIGTERM" in log and updates(log)[-1] == first_stop < LAST
    assert checkpoint_updates(folder / "checkpoint_last.pt") == first_stop
    assert not (folder / LOCK_NAME).exists()

    # the restart finds a lock left by a dead process (taken over, the pid named), gets a Ctrl-C as it starts
    # training, resumes bit for bit from the SIGTERM update for one update, and its checkpoint write meets a full
    # disk (RLIMIT_FSIZE: EFBIG past 2 MiB, as a full disk stops a write midway)
    dead = a_dead_pid()
    (folder / LOCK_NAME).write_text(f'{{"host": "{socket.gethostname()}", "pid": {dead}, "started": "earlier"}}\n')

    def small_files():
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    log = signalled_run(cmd, signal.SIGINT, "Start iterating over samples", preexec_fn=small_files, status=1)
    assert f"taking over the stale lock {folder / LOCK_NAME} of host {socket.gethostname()} pid {dead}" in log
    assert "received SIGINT" in log and "stopped by" not in log
    assert f".pt in {folder} (" in log and " MiB free): File too large" in log
    assert_continues_reference(log, records, first_stop + 1, first_stop + 1)
    assert not list(folder.glob("*.tmp")), list(folder.iterdir())
    assert checkpoint_updates(folder / "checkpoint_last.pt") == first_stop  # intact
    assert not (folder / LOCK_NAME).exists()

    # a torn checkpoint_last.pt: the newest readable interval checkpoint takes over, with both named; the saves
    # after the full disk work
    last = folder / "checkpoint_last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    interval = max(folder.glob("checkpoint_1_*.pt"), key=lambda path: path.stat().st_mtime)
    fallback_updates = checkpoint_updates(interval)
    log = run_checked(cmd)
    assert f"{last} does not load (" in log and f"resuming from {interval}," in log
    assert_continues_reference(log, records, fallback_updates + 1, LAST)
    state = torch.load(last, map_location="cpu", weights_only=False)["model"]
    assert state.keys() == final_state.keys()
    for key, value in final_state.items():  # the weights, and the EMA teacher's (a dict of tensors)
        pairs = [(state[key][name], tensor) for name, tensor in value.items()] if isinstance(value, dict) \
            else [(state[key], value)]
        assert all(torch.equal(mine, theirs) for mine, theirs in pairs), key
    assert not list(folder.glob("*.tmp")) and not (folder / LOCK_NAME).exists()


def test_a_second_ctrl_c_exits_at_once():
    """The handler a training run installs: the first Ctrl-C asks for the stop, the second raises at once."""
    request, previous = StopRequest(), {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    try:
        request.install()
        os.kill(os.getpid(), signal.SIGINT)
        assert request.signal_name == "SIGINT"
        with pytest.raises(KeyboardInterrupt, match="second SIGINT: stopped without saving"):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler runs first
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_a_torn_or_damaged_checkpoint_is_told_from_a_whole_one_without_loading_it(tmp_path):
    whole = tmp_path / "checkpoint_last.pt"
    torch.save({"model": {"w": torch.arange(100_000, dtype=torch.float32)}}, whole)
    data = whole.read_bytes()
    assert unreadable_reason(str(whole)) is None
    torn, flipped = tmp_path / "torn.pt", tmp_path / "flipped.pt"
    torn.write_bytes(data[: len(data) // 2])
    middle = len(data) // 2  # inside the tensor's bytes: the file still opens, one CRC fails
    flipped.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:])
    assert "BadZipFile" in unreadable_reason(str(torn))
    assert "fails its CRC" in unreadable_reason(str(flipped))
    with pytest.raises(Exception):
        torch.load(torn, weights_only=True)
