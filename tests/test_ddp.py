"""Launching as users do: a relative user dir and data path, and two CPU processes equal to one."""

import json
import os
import re
import socket
import sys

import pytest
import torch

from fairseq import optim
from fairseq.models import BaseFairseqModel
from fairseq.tasks import FairseqTask
from omegaconf import OmegaConf

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


def seed_of_a_batch(task: FairseqTask, update_seed: int) -> int:
    """The torch seed a batch's forward draws with when fairseq's trainer seeded its update with ``update_seed``."""
    model = BaseFairseqModel()
    model.weight = torch.nn.Parameter(torch.zeros(1))
    seeds = []

    def criterion(model, sample):
        seeds.append(torch.initial_seed())
        return model.weight.sum(), 1, {}

    sgd = optim.build_optimizer(OmegaConf.create({"_name": "sgd", "lr": [0.1], "momentum": 0.0, "weight_decay": 0.0}), [model.weight])
    torch.manual_seed(update_seed)  # fairseq's trainer: common.seed + num_updates, at the start of each update
    task.train_step({}, model, criterion, sgd, update_num=0)
    return seeds[0]


def test_a_run_after_another_in_the_same_process_keeps_fairseqs_first_seed():
    ended = FairseqTask(None)
    assert seed_of_a_batch(ended, 1) == 1  # e.g. MSM-MAE (common.seed 0) ends on the update seeded 0 + 1
    started = FairseqTask(None)  # EAT fine-tuning (common.seed 1) starts in the same process: seeded 1 + 0
    assert seed_of_a_batch(started, 1) == 1  # its first batch, not a second micro-batch of the last run's update
    assert seed_of_a_batch(started, 1) == micro_batch_seed(1, 1)  # the same update's second micro-batch


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


# fairseq's own launch with distributed_no_spawn=false: call_main's spawn branch, with one worker per rank
# instead of its min(CUDA devices, world size), which is no worker at all on a machine without GPUs
SPAWN_ONE_WORKER_PER_RANK = """
import sys
import torch
from fairseq.distributed import utils as distributed_utils
from fairseq_cli import hydra_train

def call_main(cfg, main, **kwargs):
    assert not cfg.distributed_training.distributed_no_spawn
    kwargs["start_rank"] = cfg.distributed_training.distributed_rank
    cfg.distributed_training.distributed_rank = None
    torch.multiprocessing.spawn(distributed_utils.distributed_main, args=(main, cfg, kwargs),
                                nprocs=cfg.distributed_training.distributed_world_size, join=True)

distributed_utils.call_main = call_main
sys.argv[0] = "fairseq-hydra-train"
hydra_train.cli_main()
assert "maskssl_fairseq" not in sys.modules, "the launcher imported the plugin: the workers could inherit it"
"""


def test_spawned_workers_import_the_plugin_from_a_relative_user_dir(demo_corpus, tmp_path):
    """The "multi-GPU training fails with --user-dir" report: fairseq imports the user dir inside each spawned
    worker (a fresh interpreter, cwd the launch directory), never in the launcher."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = run_checked([
        sys.executable, "-c", SPAWN_ONE_WORKER_PER_RANK, "--config-dir", "examples/eh_mam", "--config-name", "tiny",
        "common.user_dir=maskssl_fairseq", f"task.data={os.path.relpath(demo_corpus, REPO)}",
        "optimization.max_update=2", "common.log_interval=1", f"hydra.run.dir={tmp_path / 'run'}",
        "distributed_training.distributed_world_size=2", "distributed_training.distributed_backend=gloo",
        f"distributed_training.distributed_init_method=tcp://127.0.0.1:{port}",
        "distributed_training.distributed_no_spawn=false", *SHORT,
    ], cwd=REPO)
    assert "distributed init (rank 0)" in log and "distributed init (rank 1)" in log, log[-3000:]
    assert "training on 2 devices" in log
    assert [int(r["num_updates"]) for r in logged(log)] == [1, 2]
    assert (tmp_path / "run" / "checkpoints" / "checkpoint_last.pt").is_file()


def _check_identical_then_drifting_teachers(rank: int, port: int, results) -> None:
    import torch.distributed as dist

    from maskssl_fairseq.distributed import check_identical_across_ranks

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    for update, drift in ((2, 0.0), (4, 1e-6)):
        teacher = [torch.ones(3, 4), torch.arange(5.0) + rank * drift]
        try:
            check_identical_across_ranks(teacher, "the EMA teacher", update)
            results.put((rank, update, None))
        except RuntimeError as error:
            results.put((rank, update, str(error)))
    dist.destroy_process_group()


def test_teachers_that_drift_apart_across_ranks_stop_the_run():
    context = torch.multiprocessing.get_context("spawn")  # never fork a process that imported torch
    queue = context.Queue()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    workers = [context.Process(target=_check_identical_then_drifting_teachers, args=(r, port, queue)) for r in range(2)]
    for worker in workers:
        worker.start()
    results = {(rank, update): error for rank, update, error in (queue.get(timeout=120) for _ in range(4))}
    for worker in workers:
        worker.join(timeout=60)
    assert results[0, 2] is None and results[1, 2] is None  # identical teachers pass
    assert all(re.match(r"the EMA teacher differs across the 2 ranks at update 4 \(largest difference", results[r, 4])
               for r in range(2)), results



def measured_norm_stats(data: str) -> tuple:
    """M2D's log-mel statistics of 40 demo clips (2 batches of 32) and what the task logged about them."""
    import logging

    from maskssl_fairseq.models.m2d import M2DConfig, M2DModel
    from maskssl_fairseq.tasks.spectrogram_pretraining import SpectrogramPretrainingConfig, SpectrogramPretrainingTask

    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger("maskssl_fairseq.tasks.spectrogram_pretraining").addHandler(handler)
    logging.getLogger("maskssl_fairseq.tasks.spectrogram_pretraining").setLevel(logging.INFO)
    task = SpectrogramPretrainingTask(SpectrogramPretrainingConfig(data=data, crop_frames=208, norm_sample_size=40,
                                                                   train_subset="pretrain", seed=1))
    model = M2DModel(M2DConfig(sample_rate=16000, hop_length=160, input_frames=208, encoder_embed_dim=32, encoder_layers=1, encoder_attention_heads=2,
                               predictor_embed_dim=32, predictor_layers=1, predictor_attention_heads=2,
                               max_update=10, ema_anneal_end_step=10))
    return task.measure_norm_stats(model.frontend), records


def _norm_stats_rank(rank: int, port: int, data: str, results) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    results.put((rank, *measured_norm_stats(data)))
    dist.destroy_process_group()


def test_ranks_share_the_norm_statistics_clips_and_agree_with_one_process_to_the_bit(demo_corpus):
    """M2D measures its input statistics at start (5000 clips at paper scale): each rank reads its share."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks: a reduction's order (and so its last bit) depends on the threads
    try:
        one, _ = measured_norm_stats(str(demo_corpus))
    finally:
        torch.set_num_threads(threads)
    context = torch.multiprocessing.get_context("spawn")
    queue = context.Queue()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    workers = [context.Process(target=_norm_stats_rank, args=(r, port, str(demo_corpus), queue)) for r in range(2)]
    for worker in workers:
        worker.start()
    results = {rank: (stats, log) for rank, stats, log in (queue.get(timeout=120) for _ in range(2))}
    for worker in workers:
        worker.join(timeout=60)
    for rank in range(2):
        stats, log = results[rank]
        assert stats == one  # the same float64 sums, added in the same order
        assert log[-1].endswith(f"from 40 clips of {demo_corpus / 'pretrain.tsv'}, 1 of their 2 batches read by this rank")
