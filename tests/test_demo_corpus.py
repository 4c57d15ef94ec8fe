"""The spoken demo corpus: real espeak-ng speech, deterministic, valid manifests, never overwritten silently."""

import sys
from pathlib import Path

import pytest
import soundfile as sf

from helpers import REPO, run_checked

sys.path.insert(0, str(REPO / "manifests"))
from demo_corpus import heldout_speakers  # noqa: E402
from demo_text import SentenceGenerator, vocabulary  # noqa: E402

TINY = ["--pretrain-minutes", "0.1", "--train-10m-minutes", "0.1", "--train-1h-minutes", "0.1",
        "--dev-minutes", "0.1", "--test-minutes", "0.1"]


def make_corpus(out: Path, *extra: str) -> str:
    return run_checked([sys.executable, REPO / "manifests" / "demo_corpus.py", "--out", out, *TINY, *extra])


def test_generator_vocabulary_and_determinism():
    assert len(vocabulary()) >= 1000
    first, again, other = SentenceGenerator(3), SentenceGenerator(3), SentenceGenerator(4)
    sentences = [first.sentence() for _ in range(200)]
    assert sentences == [again.sentence() for _ in range(200)]
    assert sentences != [other.sentence() for _ in range(200)]
    assert set(" ".join(sentences).split()) <= set(vocabulary())
    assert len(set(" ".join(sentences).split())) > 300


def test_demo_corpus_is_16k_mono_speech_with_matching_labels(demo_corpus):
    for split in ("pretrain", "train_10m", "train_1h", "dev", "test"):
        lines = (demo_corpus / f"{split}.tsv").read_text().splitlines()
        root, rows = Path(lines[0]), [line.split("\t") for line in lines[1:]]
        words = (demo_corpus / f"{split}.wrd").read_text().splitlines()
        assert len(rows) == len(words) > 0
        info = sf.info(root / rows[0][0])
        assert (info.samplerate, info.channels, info.format) == (16000, 1, "FLAC")
        assert info.frames == int(rows[0][1]) and 0.5 < info.duration < 15
        audio, _ = sf.read(root / rows[0][0])
        assert abs(audio).max() > 0.05  # speech, not silence
    letters = (demo_corpus / "dict.ltr.txt").read_text().split()[::2]
    assert "|" in letters and "E" in letters


def test_same_seed_same_corpus_and_no_silent_overwrite(tmp_path):
    make_corpus(tmp_path / "a", "--seed", "5")
    make_corpus(tmp_path / "b", "--seed", "5")
    for name in ("train_1h.tsv", "train_1h.wrd", "test.ltr"):
        a = (tmp_path / "a" / "manifests" / name).read_text().splitlines()
        b = (tmp_path / "b" / "manifests" / name).read_text().splitlines()
        assert a[name.endswith(".tsv"):] == b[name.endswith(".tsv"):]  # the tsv's first line is its own root
    first = sorted((tmp_path / "a" / "LibriSpeech" / "test").rglob("*.flac"))[0]
    twin = tmp_path / "b" / first.relative_to(tmp_path / "a")
    assert (sf.read(first)[0] == sf.read(twin)[0]).all()

    with pytest.raises(AssertionError, match="exists; pass --force"):
        make_corpus(tmp_path / "a", "--seed", "6")
    make_corpus(tmp_path / "a", "--seed", "6", "--force")
    assert (tmp_path / "a" / "manifests" / "train_1h.wrd").read_text() != \
        (tmp_path / "b" / "manifests" / "train_1h.wrd").read_text()


def test_heldout_speakers_and_sentences_only_in_dev_and_test(tmp_path):
    make_corpus(tmp_path, "--heldout-speakers", "4", "--dev-minutes", "0.3", "--test-minutes", "0.3")
    manifests = tmp_path / "manifests"

    def speakers(split):
        return {Path(row.split("\t")[0]).name.split("-")[0] for row in (manifests / f"{split}.tsv").read_text().splitlines()[1:]}

    def sentences(split):
        return set((manifests / f"{split}.wrd").read_text().splitlines())

    training = set().union(*(speakers(s) for s in ("pretrain", "train_10m", "train_1h")))
    evaluation = speakers("dev") | speakers("test")
    assert evaluation and not evaluation & training
    assert evaluation <= {str(100 + i) for i in heldout_speakers(4)}
    seen = set().union(*(sentences(s) for s in ("pretrain", "train_10m", "train_1h")))
    assert not (sentences("dev") | sentences("test")) & seen

    with pytest.raises(AssertionError, match="--heldout-speakers must be in"):
        make_corpus(tmp_path / "bad", "--heldout-speakers", "30")
