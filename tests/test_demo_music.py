"""The music tasks and the general-audio pretraining mix of the masking table (examples/m2d/demo_music.py,
manifests/combine.py, examples/m2d/masking_table_report.py), rendered for real with fluidsynth."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from helpers import REPO, run_checked

sys.path.insert(0, str(REPO / "examples" / "m2d"))
import demo_music  # noqa: E402
import masking_table_report  # noqa: E402


def make(task: str, out: Path, *args: str) -> Path:
    run_checked([sys.executable, REPO / "examples" / "m2d" / "demo_music.py", task, "--out", out, *args])
    return out


def rows(tsv: Path) -> list:
    return [line.split("\t")[0] for line in tsv.read_text().splitlines()[1:]]


@pytest.fixture(scope="module")
def instrument(tmp_path_factory) -> Path:
    return make("instrument", tmp_path_factory.mktemp("instrument"), "--clips", "4", "2", "2")


def test_soundfont_key_ranges_are_read_from_the_file():
    playable = demo_music.playable_notes()
    # measured by rendering: FluidR3's contrabass is silent above note 57, its baritone sax above 72
    assert max(playable[43]) == 57 and 55 in playable[43]
    assert max(playable[67]) == 72
    assert set(range(21, 109)) <= playable[0]  # the grand piano's 88 keys


def test_instrument_task_labels_families_and_never_shares_a_program_note_pair(instrument):
    pairs = {}
    for split in demo_music.SPLITS:
        labels = (instrument / f"{split}.label").read_text().split()
        assert sorted(set(labels)) == sorted(demo_music.FAMILIES) and len(labels) == 11 * {"train": 4}.get(split, 2)
        for name, label in zip(rows(instrument / f"{split}.tsv"), labels):
            family, _, program, note = Path(name).stem.rsplit("_", 3)
            assert family == label and int(program[1:]) in demo_music.FAMILIES[label]
            pairs.setdefault((program, note), set()).add(split)
    assert all(len(splits) == 1 for splits in pairs.values())


def test_every_clip_sounds_and_nothing_rings_into_the_next(instrument):
    for path in rows(instrument / "test.tsv"):
        audio, rate = sf.read(instrument / "audio" / path, dtype="float32")
        assert rate == 16000 and len(audio) == 32000
        assert np.abs(audio).max() > 1e-3, path  # a note the soundfont cannot play would be silence
        assert np.abs(audio[:40]).max() < 1e-2, path  # the previous clip's release ended in the gap


def test_same_seed_same_clips(instrument, tmp_path):
    again = make("instrument", tmp_path / "again", "--clips", "4", "2", "2")
    assert rows(again / "valid.tsv") == rows(instrument / "valid.tsv")
    first = rows(instrument / "valid.tsv")[0]
    np.testing.assert_array_equal(sf.read(again / "audio" / first)[0], sf.read(instrument / "audio" / first)[0])


def test_pitch_task_splits_have_disjoint_programs(tmp_path):
    pitch = make("pitch", tmp_path / "pitch", "--clips", "1", "1", "1")
    programs = {}
    for split in demo_music.SPLITS:
        labels = (pitch / f"{split}.label").read_text().split()
        assert labels == [str(note) for note in demo_music.PITCHES]
        programs[split] = {Path(name).stem.rsplit("_p", 1)[1] for name in rows(pitch / f"{split}.tsv")}
    assert not programs["train"] & programs["test"] and not programs["train"] & programs["valid"]


def test_pretraining_music_uses_no_evaluation_program_and_mixes_with_speech(instrument, tmp_path):
    music = make("pretrain", tmp_path / "music", "--minutes", "0.2")
    programs = {int(label) for label in (music / "pretrain.label").read_text().split()}
    assert programs and not programs & demo_music.EVALUATION_PROGRAMS
    mixed = tmp_path / "mix" / "pretrain.tsv"
    run_checked([sys.executable, REPO / "manifests" / "combine.py", instrument / "train.tsv", music / "pretrain.tsv",
                 "--out", mixed])
    root = Path(mixed.read_text().splitlines()[0])
    listed = [root / row for row in rows(mixed)]
    originals = [instrument / "audio" / row for row in rows(instrument / "train.tsv")] + \
                [music / "audio" / row for row in rows(music / "pretrain.tsv")]
    assert [p.resolve() for p in listed] == [p.resolve() for p in originals]
    with pytest.raises(AssertionError, match="exists; pass --force"):
        run_checked([sys.executable, REPO / "manifests" / "combine.py", music / "pretrain.tsv", "--out", mixed])


def test_report_gives_mean_std_and_points_against_random(tmp_path):
    (tmp_path / "linear").mkdir()
    accuracy = {"random": (0.80, 0.60), "ibm": (0.70, 0.64), "dwm": (0.79, 0.62)}  # speakers, instrument
    for masking, (speakers, instrument_accuracy) in accuracy.items():
        for seed, shift in ((1, -0.01), (2, 0.01)):
            for task, value in (("speakers", speakers), ("instrument", instrument_accuracy)):
                runs = [{"test_accuracy": value + shift}] * 3
                (tmp_path / "linear" / f"msm_mae_{masking}_{seed}.{task}.json").write_text(json.dumps({"runs": runs}))
    table = masking_table_report.main([str(tmp_path)])
    assert "| MSM-MAE | random | 80.0 ± 1.0 | 60.0 ± 1.0 | 70.0 |" in table
    assert "| | vs. random | -10.0 | +4.0 | -3.0 |" in table  # IBM
    assert "| | vs. random | -1.0 | +2.0 | +0.5 |" in table  # DWM
    assert "| | paper's vs. random | -8.3 | -0.4 | |" in table  # MSM-MAE's IBM in Table I: VC1, NSynth
    assert "| MSM-MAE | ibm | 69.0 / 71.0 | 63.0 / 65.0 |" in table  # each pretraining's mean, seed 1 / seed 2
    assert (tmp_path / "table.png").stat().st_size > 0
