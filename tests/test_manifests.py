"""The manifest tools on small LibriSpeech and LibriLight trees of real FLAC files, run as the user runs them."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile

MANIFESTS = Path(__file__).resolve().parents[1] / "manifests"
RATE = 16000


def run_tool(script, *args):
    return subprocess.run(
        [sys.executable, str(MANIFESTS / script), *map(str, args)], capture_output=True, text=True, timeout=60
    )


def write_flac(path, num_samples, rate=RATE, channels=1):
    path.parent.mkdir(parents=True, exist_ok=True)
    shape = (num_samples, channels) if channels > 1 else (num_samples,)
    audio = np.random.default_rng(num_samples).uniform(-0.5, 0.5, shape)
    soundfile.write(str(path), audio, rate, format="FLAC")


def write_chapter(directory, speaker, chapter, sentences, first_size=800):
    """``<directory>/<speaker>/<chapter>/`` with one FLAC per sentence (sizes 800, 900, ...) and the transcript."""
    folder = directory / str(speaker) / str(chapter)
    lines = []
    for index, sentence in enumerate(sentences):
        utterance = f"{speaker}-{chapter}-{index:04d}"
        write_flac(folder / f"{utterance}.flac", first_size + 100 * index)
        lines.append(f"{utterance} {sentence}\n")
    (folder / f"{speaker}-{chapter}.trans.txt").write_text("".join(lines))


def read_lines(path):
    return path.read_text().splitlines()


def test_librispeech_writes_sorted_manifests_labels_and_dictionary(tmp_path):
    corpus, out = tmp_path / "LibriSpeech", tmp_path / "out"
    write_chapter(corpus / "train_1h", 19, 198, ["HELLO WORLD", "A CAT"])
    write_chapter(corpus / "train_1h", 103, 1240, ["it's   ME"])
    write_chapter(corpus / "dev", 7, 1, ["OK"])

    result = run_tool("librispeech.py", "--root", corpus, "--splits", "train_1h,dev,all=train_1h+dev", "--out", out)

    assert result.returncode == 0, result.stderr
    assert read_lines(out / "train_1h.tsv") == [
        str((corpus / "train_1h").resolve()),
        "103/1240/103-1240-0000.flac\t800",
        "19/198/19-198-0000.flac\t800",
        "19/198/19-198-0001.flac\t900",
    ]
    assert read_lines(out / "train_1h.wrd") == ["IT'S ME", "HELLO WORLD", "A CAT"]
    assert read_lines(out / "train_1h.ltr") == ["I T ' S | M E |", "H E L L O | W O R L D |", "A | C A T |"]
    assert read_lines(out / "dev.ltr") == ["O K |"]
    assert read_lines(out / "all.tsv")[0] == str(corpus.resolve())
    assert read_lines(out / "all.tsv")[1:] == ["dev/7/1/7-1-0000.flac\t800"] + [
        f"train_1h/{line}" for line in read_lines(out / "train_1h.tsv")[1:]
    ]
    assert read_lines(out / "all.ltr") == read_lines(out / "dev.ltr") + read_lines(out / "train_1h.ltr")
    dictionary = [line.split(" ") for line in read_lines(out / "dict.ltr.txt")]
    # 6 words in train_1h and 1 in dev, more than any letter; "all" repeats them, but they count once
    assert dictionary[0] == ["|", "7"]
    assert dict(dictionary) == {
        "|": "7",
        "L": "3",
        "O": "3",
        "A": "2",
        "E": "2",
        "T": "2",
        "C": "1",
        "D": "1",
        "H": "1",
        "I": "1",
        "K": "1",
        "M": "1",
        "R": "1",
        "S": "1",
        "W": "1",
        "'": "1",
    }
    counts = [int(count) for _, count in dictionary]
    assert counts == sorted(counts, reverse=True)
    for split in ("train_1h", "dev", "all"):
        check = run_tool("validate.py", out / f"{split}.tsv", "--labels", "ltr")
        assert check.returncode == 0, check.stderr
        assert check.stdout.count("\n") == 1 and "utterances" in check.stdout and "hours" in check.stdout


def test_librispeech_unlabeled_split_needs_no_transcripts(tmp_path):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    write_flac(corpus / "pretrain" / "1" / "2" / "1-2-0000.flac", 1000)
    write_chapter(corpus / "dev", 7, 1, ["OK"])

    result = run_tool(
        "librispeech.py", "--root", corpus, "--splits", "pretrain,dev", "--unlabeled", "pretrain", "--out", out
    )

    assert result.returncode == 0, result.stderr
    assert sorted(path.name for path in out.iterdir()) == [
        "dev.ltr",
        "dev.tsv",
        "dev.wrd",
        "dict.ltr.txt",
        "pretrain.tsv",
    ]
    assert read_lines(out / "pretrain.tsv")[1:] == ["1/2/1-2-0000.flac\t1000"]


def test_librispeech_names_file_and_line_of_layout_errors_and_writes_nothing(tmp_path):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    write_chapter(corpus / "dev", 7, 1, ["ONE", "TWO"])
    write_flac(corpus / "dev" / "7" / "1" / "7-1-0005.flac", 500)  # audio without a transcript line
    transcript = corpus / "dev" / "7" / "1" / "7-1.trans.txt"
    transcript.write_text(transcript.read_text() + "7-1-0009 NO AUDIO\n")  # a transcript line without audio

    result = run_tool("librispeech.py", "--root", corpus, "--splits", "dev", "--out", out)

    assert result.returncode != 0
    assert f"{transcript.resolve()}:3:" in result.stderr and "7-1-0009" in result.stderr
    assert f"{(corpus / 'dev' / '7' / '1' / '7-1-0005.flac').resolve()}: no transcript" in result.stderr
    assert not out.exists() or not list(out.iterdir())


def test_no_tool_overwrites_without_force(tmp_path):
    corpus, out = tmp_path / "corpus", tmp_path / "out"
    write_chapter(corpus / "dev", 7, 1, ["ONE"])
    out.mkdir()
    (out / "dev.ltr").write_text("keep me\n")

    refused = run_tool("librispeech.py", "--root", corpus, "--splits", "dev", "--out", out)

    assert refused.returncode != 0
    assert str(out / "dev.ltr") in refused.stderr and "--force" in refused.stderr
    assert sorted(path.name for path in out.iterdir()) == ["dev.ltr"]
    assert (out / "dev.ltr").read_text() == "keep me\n"

    forced = run_tool("librispeech.py", "--root", corpus, "--splits", "dev", "--out", out, "--force")

    assert forced.returncode == 0, forced.stderr
    assert read_lines(out / "dev.ltr") == ["O N E |"]
    assert not list(out.glob(".*.tmp"))


def test_librilight_writes_nested_splits_relative_to_the_finetuning_root(tmp_path):
    root, out = tmp_path / "librispeech_finetuning", tmp_path / "out"
    for fold in range(6):
        for subset in ("clean", "other"):
            write_chapter(root / "1h" / str(fold) / subset, 10 + fold, 1 if subset == "clean" else 2, ["AB"])
    write_chapter(root / "9h" / "clean", 30, 3, ["AB", "AB"])
    write_chapter(root / "9h" / "other", 40, 4, ["AB"])

    result = run_tool("librilight.py", "--root", root, "--out", out)

    assert result.returncode == 0, result.stderr
    train_10m = read_lines(out / "train_10m.tsv")
    assert train_10m == [
        str(root.resolve()),
        "1h/0/clean/10/1/10-1-0000.flac\t800",
        "1h/0/other/10/2/10-2-0000.flac\t800",
    ]
    assert len(read_lines(out / "train_1h.tsv")) == 1 + 12
    train_10h = read_lines(out / "train_10h.tsv")
    assert len(train_10h) == 1 + 12 + 3 and train_10h[-1] == "9h/other/40/4/40-4-0000.flac\t800"
    assert read_lines(out / "train_10h.ltr") == ["A B |"] * 15
    # each distinct utterance counts once, although train_10m and train_1h are inside train_10h
    assert read_lines(out / "dict.ltr.txt") == ["A 15", "B 15", "| 15"]
    for split in ("train_10m", "train_1h", "train_10h"):
        assert run_tool("validate.py", out / f"{split}.tsv", "--labels", "ltr").returncode == 0

    refused = run_tool("librilight.py", "--root", root, "--out", out)
    assert refused.returncode != 0 and "--force" in refused.stderr
    assert run_tool("librilight.py", "--root", root, "--out", out, "--force").returncode == 0


UTTERANCES = 12  # u00.flac ... u11.flac: tsv lines 2-13, label lines 1-12


def good_manifest(directory):
    """``data.tsv`` with 12 utterances of 1600 samples, ``data.ltr`` and ``dict.ltr.txt``."""
    names = [f"u{index:02d}.flac" for index in range(UTTERANCES)]
    for name in names:
        write_flac(directory / "audio" / name, 1600)
    (directory / "data.tsv").write_text(f"{directory / 'audio'}\n" + "".join(f"{name}\t1600\n" for name in names))
    (directory / "data.ltr").write_text("A |\n" * UTTERANCES)
    (directory / "dict.ltr.txt").write_text(f"| {UTTERANCES}\nA {UTTERANCES}\nB 0\n")
    return directory / "data.tsv"


def audio(directory, index):
    return directory / "audio" / f"u{index:02d}.flac"


def replace_line(path, number, line):
    """Replaces line ``number`` (1-based) of a text file, or deletes it when ``line`` is None."""
    lines = read_lines(path)
    lines[number - 1 : number] = [] if line is None else [line]
    path.write_text("".join(f"{line}\n" for line in lines))


# kind of bad input: (how to break the good manifest, file, line, what the message says), each on its own line
BAD_INPUTS = {
    "missing file": (lambda d: audio(d, 0).unlink(), "data.tsv", 2, "no such file"),
    "wrong sample count": (lambda d: replace_line(d / "data.tsv", 3, "u01.flac\t1601"), "data.tsv", 3, "1600 samples"),
    "wrong sample rate": (lambda d: write_flac(audio(d, 2), 1600, rate=8000), "data.tsv", 4, "8000 Hz"),
    "stereo": (lambda d: write_flac(audio(d, 3), 1600, channels=2), "data.tsv", 5, "2 channels"),
    "empty file": (lambda d: audio(d, 4).write_bytes(b""), "data.tsv", 6, "empty file"),
    "no samples": (
        lambda d: soundfile.write(str(audio(d, 5)), np.zeros(0), RATE, format="WAV"),
        "data.tsv",
        7,
        "0 samples",
    ),
    "unreadable audio": (lambda d: audio(d, 6).write_bytes(b"garbage" * 100), "data.tsv", 8, "unreadable"),
    "truncated audio": (
        lambda d: audio(d, 7).write_bytes(audio(d, 7).read_bytes()[:-1500]),
        "data.tsv",
        9,
        "truncated",
    ),
    "malformed line": (lambda d: replace_line(d / "data.tsv", 10, "u08.flac 1600"), "data.tsv", 10, "expected"),
    "non-integer count": (lambda d: replace_line(d / "data.tsv", 11, "u09.flac\t1.6e3"), "data.tsv", 11, "expected"),
    "unknown symbol": (lambda d: replace_line(d / "data.ltr", 2, "É |"), "data.ltr", 2, "É"),
    "label count mismatch": (lambda d: replace_line(d / "data.ltr", 12, None), "data.ltr", 12, "11 label lines"),
    "malformed dictionary": (lambda d: replace_line(d / "dict.ltr.txt", 3, "B"), "dict.ltr.txt", 3, "<count>"),
}


@pytest.fixture(scope="module")
def every_problem(tmp_path_factory):
    """The validator's stderr lines on one manifest broken in all the ways of BAD_INPUTS at once."""
    directory = tmp_path_factory.mktemp("bad")
    tsv = good_manifest(directory)
    for corrupt, *_ in BAD_INPUTS.values():
        corrupt(directory)

    result = run_tool("validate.py", tsv, "--labels", "ltr")

    assert result.returncode != 0 and result.stdout == ""
    return directory, result.stderr.splitlines()


@pytest.mark.parametrize("kind", BAD_INPUTS)
def test_validate_names_file_and_line_of_each_kind_of_bad_input(every_problem, kind):
    directory, problems = every_problem
    _, file, line, what = BAD_INPUTS[kind]
    here = [problem for problem in problems if problem.startswith(f"{directory / file}:{line}:")]
    assert len(here) == 1 and what in here[0], "\n".join(problems)


def test_validate_reports_every_problem_and_nothing_else(every_problem):
    directory, problems = every_problem
    assert problems[-1] == f"{directory / 'data.tsv'}: {len(BAD_INPUTS)} problem(s)"
    assert len(problems) == len(BAD_INPUTS) + 1, "\n".join(problems)


def test_validate_accepts_a_good_manifest(tmp_path):
    result = run_tool("validate.py", good_manifest(tmp_path), "--labels", "ltr")

    assert result.returncode == 0, result.stderr
    dictionary = tmp_path / "dict.ltr.txt"
    assert (
        result.stdout
        == f"{tmp_path / 'data.tsv'}: 12 utterances, 0.00 hours, ltr labels checked against {dictionary}\n"
    )


def test_validate_names_a_missing_audio_root(tmp_path):
    tsv = good_manifest(tmp_path)
    replace_line(tsv, 1, str(tmp_path / "nowhere"))

    result = run_tool("validate.py", tsv)

    assert result.returncode != 0
    assert result.stderr.startswith(f"{tsv}:1: ") and "nowhere" in result.stderr


def test_validate_takes_the_dictionary_given(tmp_path):
    tsv = good_manifest(tmp_path)
    replace_line(tmp_path / "data.ltr", 3, "C |")
    assert f"{tmp_path / 'data.ltr'}:3: " in run_tool("validate.py", tsv, "--labels", "ltr").stderr
    (tmp_path / "letters.txt").write_text("| 1\nA 1\nC 1\n")

    result = run_tool("validate.py", tsv, "--labels", "ltr", "--dict", tmp_path / "letters.txt")

    assert result.returncode == 0, result.stderr


def test_validate_accepts_other_sample_rates_when_told(tmp_path):
    write_flac(tmp_path / "a.flac", 800, rate=8000)
    (tmp_path / "data.tsv").write_text(f"{tmp_path}\na.flac\t800\n")

    assert run_tool("validate.py", tmp_path / "data.tsv").returncode != 0
    result = run_tool("validate.py", tmp_path / "data.tsv", "--sample-rate", "8000")
    assert result.returncode == 0, result.stderr
    assert "1 utterances" in result.stdout


@pytest.mark.parametrize("script", ["librispeech.py", "librilight.py", "validate.py"])
def test_help(script):
    result = run_tool(script, "--help")
    assert result.returncode == 0 and "usage:" in result.stdout and "fairseq" in result.stdout
