"""Shared fixtures: a small spoken corpus made once per test session with the real demo-corpus tool."""

import sys
from pathlib import Path

import pytest

from helpers import REPO, fairseq_hydra_train, run_checked

DEMO_MINUTES = {  # small enough for a fast suite, large enough for a few real batches
    "--pretrain-minutes": 2.0,
    "--train-10m-minutes": 1.0,
    "--train-1h-minutes": 1.5,
    "--dev-minutes": 0.5,
    "--test-minutes": 0.5,
}


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory) -> Path:
    """Manifest directory of real espeak-ng speech: pretrain, train_10m, train_1h, dev and test, with labels."""
    out = tmp_path_factory.mktemp("demo")
    sizes = [str(x) for item in DEMO_MINUTES.items() for x in item]
    run_checked([sys.executable, REPO / "manifests" / "demo_corpus.py", "--out", out, "--seed", "7", *sizes])
    return out / "manifests"


@pytest.fixture(scope="session")
def tiny_hubert_teacher(demo_corpus, tmp_path_factory) -> Path:
    """A fairseq HuBERT checkpoint (fairseq's ``hubert`` model and task, a few updates on MFCC k-means labels)."""
    sys.path.insert(0, str(REPO / "examples" / "armhubert"))
    from mfcc_labels import write_labels

    root = tmp_path_factory.mktemp("armhubert_teacher")
    write_labels(demo_corpus, ["pretrain"], out=root / "labels", clusters=16, iterations=5)
    fairseq_hydra_train(
        REPO / "examples" / "armhubert", "tiny_teacher", f"task.data={demo_corpus}",
        f"task.label_dir={root / 'labels'}", "optimization.max_update=3", run_dir=root,
    )
    return root / "checkpoints" / "checkpoint_last.pt"


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict:
    """Untrained tiny checkpoints of every model (kind -> path), as fairseq's trainer saves them."""
    from tiny_checkpoints import TINY, build

    root = tmp_path_factory.mktemp("tiny_checkpoints")
    return {kind: build(kind, root / f"{kind}.pt") for kind in TINY}
