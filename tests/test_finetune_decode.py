"""CTC fine-tuning through fairseq-hydra-train with the plugin loaded, resuming, and decoding to a WER."""

import json
import math
import re
import sys
from pathlib import Path

import pytest

from helpers import REPO, VENV_BIN, fairseq_hydra_train, logged, run_checked, series

FAST = ["dataset.max_tokens=120000", "dataset.validate_interval_updates=1000", "checkpoint.save_interval_updates=2"]


@pytest.fixture(scope="module")
def pretrained(demo_corpus, tmp_path_factory) -> Path:
    """A tiny fairseq wav2vec 2.0 checkpoint after two updates (the fine-tuning path only needs its shape)."""
    run_dir = tmp_path_factory.mktemp("w2v")
    fairseq_hydra_train(
        REPO / "examples" / "wav2vec2", "tiny", f"task.data={demo_corpus}", "optimization.max_update=2", *FAST,
        run_dir=run_dir,
    )
    return run_dir / "checkpoints" / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def finetuned(demo_corpus, pretrained, tmp_path_factory):
    """Fine-tunes 4 updates, then resumes the same run to 6 (the checkpoint holds a fairseq Dictionary)."""
    run_dir = tmp_path_factory.mktemp("ft")
    args = (REPO / "examples" / "finetune", "tiny", f"task.data={demo_corpus}", f"model.w2v_path={pretrained}",
            "model.freeze_finetune_updates=2", "dataset.validate_interval_updates=4", *FAST[:1], *FAST[2:])
    first = fairseq_hydra_train(*args, "optimization.max_update=4", run_dir=run_dir)
    resumed = fairseq_hydra_train(*args, "optimization.max_update=6", run_dir=run_dir)
    return run_dir / "checkpoints", first, resumed


def test_finetuning_logs_ctc_loss_and_validation_wer(finetuned):
    _, first, _ = finetuned
    losses = series(first, "loss")
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    valid = logged(first, "dev")
    assert valid and 0 <= float(valid[-1]["dev_wer"]) <= 1000


def test_finetuning_resumes_from_its_last_checkpoint(finetuned):
    _, _, resumed = finetuned
    assert re.search(r"Loaded checkpoint .*checkpoint_last\.pt \(epoch \d+ @ 4 updates\)", resumed)
    assert [int(r["num_updates"]) for r in logged(resumed)] == [5, 6]


def test_greedy_decoding_writes_hypotheses_and_wer(finetuned, demo_corpus, tmp_path):
    checkpoints, _, _ = finetuned
    out = tmp_path / "decode"
    cmd = [sys.executable, REPO / "run" / "decode.py", "--checkpoint", checkpoints / "checkpoint_last.pt",
           "--manifest", demo_corpus / "test.tsv", "--out", out]
    printed = run_checked(cmd)
    assert re.search(r"greedy on test\.tsv: WER \d+\.\d+%  CER \d+\.\d+%", printed)
    utterances = len((demo_corpus / "test.tsv").read_text().splitlines()) - 1
    assert len((out / "hyp.wrd").read_text().splitlines()) == utterances
    assert (out / "ref.wrd").read_text() == (demo_corpus / "test.wrd").read_text()
    result = json.loads((out / "wer.json").read_text())
    assert result["decoder"] == "greedy" and result["utterances"] == utterances and result["wer"] >= 0

    # an existing output is never replaced without --force
    with pytest.raises(AssertionError, match="pass --force"):
        run_checked(cmd)


def test_lexicon_and_kenlm_beam_search_tuned_on_dev(finetuned, demo_corpus, tmp_path):
    checkpoints, _, _ = finetuned
    word_files = [demo_corpus / f"{split}.wrd" for split in ("train_1h", "test")]
    lexicon, lm = tmp_path / "lexicon.txt", tmp_path / "lm.arpa"
    run_checked([sys.executable, REPO / "manifests" / "lexicon.py", "--words", *word_files, "--out", lexicon])
    entries = [line.split("\t") for line in lexicon.read_text().splitlines()]
    assert all(spelling == " ".join(word) + " |" for word, spelling in entries)  # letter units, word boundary
    assert {word for word, _ in entries} == set(" ".join(f.read_text() for f in word_files).split())
    run_checked([sys.executable, REPO / "manifests" / "ngram_lm.py", "--text", demo_corpus / "train_1h.wrd",
                 "--order", "3", "--out", lm])
    out = tmp_path / "decode"
    printed = run_checked([sys.executable, REPO / "run" / "decode.py", "--checkpoint",
                           checkpoints / "checkpoint_last.pt", "--manifest", demo_corpus / "test.tsv",
                           "--lexicon", lexicon, "--lm", lm, "--beam-size", "8", "--lm-weight", "0.5", "2",
                           "--word-score", "-1", "1", "--tune-manifest", demo_corpus / "dev.tsv", "--out", out])
    grid = json.loads((out / "grid.json").read_text())
    assert grid["tuned_on"].endswith("dev.tsv") and len(grid["grid"]) == 4
    best = min(grid["grid"], key=lambda point: point["wer"])
    result = json.loads((out / "wer.json").read_text())
    assert (result["lm_weight"], result["word_score"]) == (best["lm_weight"], best["word_score"])
    assert f"lexicon+kenlm (lm_weight {best['lm_weight']:g}, word_score {best['word_score']:g}) on test.tsv" in printed
    vocabulary = {line.split("\t")[0] for line in lexicon.read_text().splitlines()}
    hypotheses = (out / "hyp.wrd").read_text().split()
    assert set(hypotheses) <= vocabulary  # the beam search only spells lexicon words


@pytest.mark.parametrize("config", ["base_10m", "base_1h"])
def test_librilight_recipes_compose_with_the_documented_overrides(config):
    printed = run_checked([
        VENV_BIN / "fairseq-hydra-train", "--config-dir", REPO / "examples" / "finetune",
        "--config-name", config, f"common.user_dir={REPO / 'maskssl_fairseq'}", "task.data=/data/librilight",
        "model.w2v_path=/ckpt/pretrained.pt", "--cfg", "job",
    ])
    assert f"train_subset: train_{config.split('_')[1]}" in printed
    assert "lr:\n  - 5.0e-05" in printed and "freeze_finetune_updates: 10000" in printed
