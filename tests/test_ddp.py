"""Launching as users do: a relative user dir and data path, and two CPU processes equal to one."""

import json
import os
import re
import socket
import sys

import pytest
import torch

from helpers import REPO, VENV_BIN, logged, run_checked
from maskssl_fairseq.distributed import micro_batch_seed

EH_MAM = REPO / "examples" / "eh_mam"
SHORT = ["dataset.max_tokens=96000", "task.max_sample_size=24000"]


def test_relative_user_dir_and_data_with_a_run_dir_elsewhere(demo_corpus, tmp_path):
    """``common.user_dir=maskssl_fairseq`` from the repository root, as the README's users type it, while
    hydra writes its run dir somewhere else; checkpoints still land in the run dir."""
    data = os.path.relpath(demo_corpus, REPO)
    log = run_checked([
        VENV_BIN / "fairseq-hydra-train", "--config-dir", "examples/eh_mam", "--config-name", "tiny",
        "common.user_dir=maskssl_fairseq", f"task.data={data}", "optimization.max_update=1", "common.log_interval=1",
        f"hydra.run.dir={tmp_path / 'run'}", *SHORT,
    ], cwd=REPO)
    assert logged(log, "train_inner") or logged(log, "train"), log[-2000:]
    assert (tmp_path / "run" / "checkpoints" / "checkpoint_last.pt").is_file()
    assert not (REPO / "checkpoints").exists()


def test_micro_batch_seeds_keep_fairseqs_first_and_differ_after():
    assert micro_batch_seed(1234, 0) == 1234  # single-process runs with update_freq=1 keep fairseq's stream
    seeds = {micro_batch_seed(update_seed, position) for update_seed in (1, 2, 3) for position in range(1, 5)}
    assert len(seeds) == 12 and not seeds & {1, 2, 3}
    torch.manual_seed(micro_batch_seed(7, 3))  # a valid torch seed


def test_two_cpu_processes_train_eh_mam_as_one(demo_corpus, tmp_path):
    """pytorch_ddp on gloo (the plugin's CPU wrapping), 2 ranks x update_freq 1 against 1 process x 2."""
    out = run_checked([
        sys.executable, REPO / "run" / "ddp_check.py", "--config-dir", EH_MAM, "--config-name", "tiny",
        "--updates", "2", "--out", tmp_path, "common.user_dir=maskssl_fairseq",
        f"task.data={os.path.relpath(demo_corpus, REPO)}", *SHORT,
    ], cwd=REPO)
    result = json.loads(out.strip().splitlines()[-1])
    assert result["passed"] and result["updates"] == 2
    # the teacher steps when update k + 1 begins (fairseq's set_num_updates), so 2 updates check it once
    assert result["teacher_identical_on_every_rank_at"] == [1]
    assert result["first_loss_rdiff"] <= 1e-5 and result["param_max_abs_diff"] <= 1e-4
    # per-utterance values are averaged over ranks, not summed: equal to one process, and still shares
    for key in ("masked_pct", "ranking_accuracy", "hard_fraction", "target_var"):
        assert result["logged_max_abs_diff"][key] <= 1e-3, key
    ranks = [(tmp_path / "two_processes" / f"rank{r}" / "hydra_train.log").read_text() for r in range(2)]
    assert "distributed init (rank 1)" in ranks[1] and "training on 2 devices" in ranks[0]
    shares = [float(record["masked_pct"]) for record in logged(ranks[0])]
    assert shares and all(0.3 < share < 0.7 for share in shares), shares


def _check_with_rank_dependent_teacher(rank: int, port: int, differ: bool, errors) -> None:
    import torch.distributed as dist

    from maskssl_fairseq.distributed import check_identical_across_ranks

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    teacher = [torch.ones(3, 4), torch.arange(5.0) + (rank * 1e-6 if differ else 0.0)]
    try:
        check_identical_across_ranks(teacher, "the EMA teacher", 4)
        errors.put((rank, None))
    except RuntimeError as error:
        errors.put((rank, str(error)))
    dist.destroy_process_group()


@pytest.mark.parametrize("differ", [False, True])
def test_teachers_that_drift_apart_across_ranks_stop_the_run(differ):
    context = torch.multiprocessing.get_context("spawn")  # never fork a process that imported torch
    errors = context.Queue()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    workers = [context.Process(target=_check_with_rank_dependent_teacher, args=(r, port, differ, errors)) for r in range(2)]
    for worker in workers:
        worker.start()
    results = dict(errors.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
    if differ:
        assert all(re.match(r"the EMA teacher differs across the 2 ranks at update 4 \(largest difference", results[r])
                   for r in range(2)), results
    else:
        assert results == {0: None, 1: None}
