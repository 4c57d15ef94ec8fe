"""Bad input stops the real entry points with one line naming the file and line, or the config field, and
leaves every file as it was.

Manifest problems run ``manifests/validate.py`` (a second each); config problems run ``fairseq-hydra-train``,
which reads the config and builds the model before any data is loaded, so each stops within seconds.
"""

import hashlib
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Dict

import numpy as np
import pytest
import soundfile
import torch

from helpers import PLUGIN_DIR, REPO, VENV_BIN, fairseq_hydra_train, logged

UTTERANCES = 3


@pytest.fixture
def corpus(demo_corpus, tmp_path) -> Path:
    """A valid manifest ``base.tsv`` of three real utterances with ``.ltr`` labels and the dictionary."""
    lines = (demo_corpus / "pretrain.tsv").read_text().splitlines()
    labels = (demo_corpus / "pretrain.ltr").read_text().splitlines()
    root = Path(lines[0])
    audio = tmp_path / "audio"
    rows = []
    for line in lines[1:UTTERANCES + 1]:
        relative = line.split("\t")[0]
        (audio / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(root / relative, audio / relative)
        rows.append(line)
    data = tmp_path / "manifests"
    data.mkdir()
    (data / "base.tsv").write_text("\n".join([str(audio), *rows]) + "\n")
    (data / "base.ltr").write_text("\n".join(labels[:UTTERANCES]) + "\n")
    shutil.copy(demo_corpus / "dict.ltr.txt", data / "dict.ltr.txt")
    return data


def rows(data: Path):
    lines = (data / "base.tsv").read_text().splitlines()
    return Path(lines[0]), [line.split("\t") for line in lines[1:]]


def write_rows(data: Path, root, table) -> None:
    (data / "base.tsv").write_text("\n".join([str(root), *("\t".join(r) for r in table)]) + "\n")


def rewrite_audio(data: Path, transform: Callable) -> None:
    root, table = rows(data)
    wave, rate = soundfile.read(root / table[1][0], dtype="float32")
    transform(root / table[1][0], wave, rate)


def write_nonfinite(path: Path, wave: np.ndarray, rate: int) -> None:
    """The same utterance as a float WAV (under its .flac name) with a NaN and an inf sample."""
    wave = wave.copy()
    wave[100], wave[200] = np.nan, np.inf
    soundfile.write(path, wave, rate, format="WAV", subtype="FLOAT")


def prepend_bom(path: Path) -> None:
    path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())


def set_count(data: Path, count: str) -> None:
    root, table = rows(data)
    table[1][1] = count
    write_rows(data, root, table)


def edit_labels(data: Path, edit: Callable) -> None:
    (data / "base.ltr").write_bytes(edit((data / "base.ltr").read_bytes()))


# case: (how to break the corpus, the expected line, as a regex, that names the file and line)
MANIFEST_CASES: Dict[str, tuple] = {
    "missing_audio": (lambda d: rewrite_audio(d, lambda path, w, r: path.unlink()), r"base\.tsv:3: .*flac: no such file"),
    "empty_audio": (lambda d: rewrite_audio(d, lambda path, w, r: path.write_bytes(b"")),
                    r"base\.tsv:3: .*flac: empty file \(0 bytes\)"),
    "corrupt_audio": (lambda d: rewrite_audio(d, lambda path, w, r: path.write_bytes(np.random.default_rng(0).bytes(4000))),
                      r"base\.tsv:3: .*flac: unreadable audio"),
    "truncated_audio": (lambda d: rewrite_audio(d, lambda path, w, r: path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2])),
                        r"base\.tsv:3: .*flac: (truncated or corrupt audio|has \d+ samples)"),
    "wrong_sample_rate": (lambda d: rewrite_audio(d, lambda path, w, r: soundfile.write(path, w, 8000)),
                          r"base\.tsv:3: .*flac: sample rate 8000 Hz, expected 16000 Hz"),
    "stereo": (lambda d: rewrite_audio(d, lambda path, w, r: soundfile.write(path, np.stack([w, w], 1), r)),
               r"base\.tsv:3: .*flac: 2 channels, expected mono"),
    "zero_samples_stated": (lambda d: set_count(d, "0"), r"base\.tsv:3: the stated number of samples of .*flac is 0"),
    "wrong_sample_count": (lambda d: set_count(d, "1234"), r"base\.tsv:3: .*flac: has \d+ samples, the manifest says 1234"),
    "malformed_row": (lambda d: set_count(d, "12.5"), r"base\.tsv:3: expected 'relative/path<TAB>num_samples'"),
    "empty_manifest": (lambda d: write_rows(d, rows(d)[0], []), r"base\.tsv:1: no utterances"),
    "missing_audio_root": (lambda d: write_rows(d, "/nonexistent/audio", rows(d)[1]),
                           r"base\.tsv:1: the first line must be an existing audio root directory"),
    "duplicate_rows": (lambda d: write_rows(d, rows(d)[0], rows(d)[1] + rows(d)[1][:1]),
                       r"base\.tsv:5: .*flac is listed again \(first at line 2\)"),
    "label_count": (lambda d: edit_labels(d, lambda text: b"\n".join(text.splitlines()[:2]) + b"\n"),
                    r"base\.ltr:3: 2 label lines for 3 utterances"),
    "unknown_symbols": (lambda d: edit_labels(d, lambda text: text.replace(b"A", b"@", 1)),
                        r"base\.ltr:1: symbols not in .*dict\.ltr\.txt: @"),
    "non_utf8_labels": (lambda d: edit_labels(d, lambda text: text.replace(b"\n", b"\n\xff", 1)),
                        r"base\.ltr:2: not UTF-8 \(byte 0xff"),
    "missing_dictionary": (lambda d: (d / "dict.ltr.txt").unlink(), r"dict\.ltr\.txt: no such file"),
    "nan_samples": (lambda d: rewrite_audio(d, write_nonfinite), r"base\.tsv:3: .*flac: 2 samples are NaN or inf \(first at sample 100\)"),
    "bom_in_manifest": (lambda d: prepend_bom(d / "base.tsv"), r"base\.tsv:1: starts with a UTF-8 byte-order mark \(BOM\)"),
    "bom_in_labels": (lambda d: prepend_bom(d / "base.ltr"), r"base\.ltr:1: starts with a UTF-8 byte-order mark \(BOM\), .*sed -i"),
    "duplicated_dictionary_symbol": (lambda d: (d / "dict.ltr.txt").write_text((d / "dict.ltr.txt").read_text() + "E 1\n"),
                                     r"dict\.ltr\.txt:\d+: the symbol 'E' is listed again \(first at line \d+\)"),
    "trailing_blank_label_line": (lambda d: edit_labels(d, lambda text: text + b"\n"),
                                  r"base\.ltr:4: a blank line after the last label; delete it"),
    "empty_label_line": (lambda d: edit_labels(d, lambda text: b"\n".join([text.splitlines()[0], b"", *text.splitlines()[2:]]) + b"\n"),
                         r"base\.ltr:2: empty label"),
}


def snapshot(folder: Path) -> Dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def run(cmd, cwd=REPO) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=300)


@pytest.mark.parametrize("case", sorted(MANIFEST_CASES))
def test_manifest_problem_is_one_line_naming_file_and_line(case, corpus):
    breaks, expected = MANIFEST_CASES[case]
    breaks(corpus)
    before = snapshot(corpus.parent)
    proc = run([sys.executable, REPO / "manifests" / "validate.py", corpus / "base.tsv", "--labels", "ltr"])
    assert proc.returncode == 1, proc.stdout
    assert "Traceback" not in proc.stdout, proc.stdout
    assert any(re.search(expected, line) for line in proc.stdout.splitlines()), proc.stdout
    assert snapshot(corpus.parent) == before


def test_missing_manifest_is_named(tmp_path):
    proc = run([sys.executable, REPO / "manifests" / "validate.py", tmp_path / "nope.tsv"])
    assert proc.returncode == 1 and proc.stdout.strip() == f"{tmp_path / 'nope.tsv'}: no such file"


def hydra_error(proc: subprocess.CompletedProcess) -> str:
    """The error hydra prints right above its ``HYDRA_FULL_ERROR`` footer: our one line, or omegaconf's
    message with its ``full_key`` and ``object_type`` lines."""
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    footers = [i for i, line in enumerate(lines) if "HYDRA_FULL_ERROR" in line]
    assert proc.returncode != 0 and footers, proc.stdout[-3000:]
    end = footers[-1]
    start = end - 1
    while start > 0 and lines[start].startswith("    "):  # omegaconf's indented full_key / object_type lines
        start -= 1
    return " ".join(line.strip() for line in lines[start:end])


# case: (config dir, config, overrides, the expected exception line as a regex naming the config field)
CONFIG_CASES = {
    "missing_split": ("eh_mam", "tiny", ["dataset.train_subset=no_such_split"], r"no_such_split\.tsv"),
    "hard_fraction_outside_0_1": ("eh_mam", "tiny", ["model.hard_fraction_end=1.5"],
                                  r"model\.hard_fraction_start and model\.hard_fraction_end must be in \[0, 1\]"),
    "mask_prob_outside_0_1": ("eh_mam", "tiny", ["model.mask_prob=1.5"], r"model\.mask_prob must be in \[0, 1\], got 1\.5"),
    "clone_batch_below_1": ("eh_mam", "tiny", ["model.clone_batch=0"], r"model\.clone_batch must be at least 1"),
    "unknown_masking": ("m2d", "tiny_random", ["model.masking=zigzag"], r"'zigzag', expected one of \[random, ibm, dwm, sgim\] full_key: masking"),
    "mask_ratio_outside_0_1": ("m2d", "tiny_random", ["model.mask_ratio=1.2"], r"model\.mask_ratio must be in \(0, 1\)"),
    "missing_w2v_path": ("finetune", "tiny", ["model.w2v_path=/nonexistent/pretrained.pt"],
                         r"/nonexistent/pretrained\.pt"),
    "truncated_w2v_path": ("finetune", "tiny", ["model.w2v_path={tmp}/truncated.pt"],
                           r"RuntimeError: .*/truncated\.pt: not a readable checkpoint \(truncated"),
    "w2v_path_not_a_checkpoint": ("finetune", "tiny", ["model.w2v_path={tmp}/notes.pt"],
                                  r"RuntimeError: .*/notes\.pt: not a readable checkpoint"),
    "span_longer_than_utterance": ("eh_mam", "tiny", ["model.mask_length=100000"],
                                   r"model\.mask_length=100000 frames is longer than an utterance of this batch"),
    "patch_size_not_dividing_spectrogram": ("m2d", "tiny_random", ["++model.patch_size=12"],
                                            r"model\.patch_size=12 does not cut the model\.n_mels=80 x"),
    "missing_teacher_path": ("armhubert", "tiny", ["model.teacher_path=/nonexistent/teacher.pt"],
                             r"model\.teacher_path: no teacher checkpoint at /nonexistent/teacher\.pt"),
    "truncated_teacher_path": ("armhubert", "tiny", ["model.teacher_path={tmp}/truncated.pt"],
                               r"model\.teacher_path=.*/truncated\.pt: not a readable checkpoint \(truncated"),
    "teacher_of_another_kind": ("armhubert", "tiny", ["model.teacher_path={tmp}/whole.pt"],
                                r"model\.teacher_path=.*/whole\.pt: neither a fairseq HuBERT checkpoint"),
    "pretraining_kind_expected_m2d_given": ("finetune", "tiny", ["model.w2v_path={tmp}/m2d.pt"],
                                            r"model\.w2v_path=.*/m2d\.pt holds a 'm2d' model; expected a speech "
                                            r"pretraining checkpoint \(.*data2vec_multi_eh_mam.*\)"),
    "hubert_where_wavlm_expected": ("armhubert", "tiny", ["model.teacher_path={tmp}/hubert.pt", "++model.teacher_type=wavlm"],
                                    r"model\.teacher_type=wavlm but model\.teacher_path=.*/hubert\.pt holds a hubert model"),
}


def saved_by_fairseq(path: Path, model_cfg: dict) -> None:
    """A checkpoint of the given ``cfg.model`` with what fairseq's loader reads besides (no weights)."""
    torch.save({"cfg": {"model": model_cfg, "task": {"_name": "spectrogram_pretraining"}}, "model": {},
                "optimizer_history": [{"criterion_name": "model", "optimizer_name": "Adam", "lr_scheduler_state": {},
                                       "num_updates": 0}], "extra_state": {}}, path)


def test_ctc_checkpoint_as_w2v_path_names_the_kinds(tmp_path):
    """fairseq's wav2vec_ctc encoder, as fine-tuning builds it (the m2d case above runs fairseq-hydra-train)."""
    from fairseq.models.wav2vec.wav2vec2_asr import Wav2Vec2CtcConfig, Wav2VecEncoder

    import maskssl_fairseq  # noqa: F401  (the plugin, as common.user_dir loads it)

    saved_by_fairseq(tmp_path / "ctc.pt", {"_name": "wav2vec_ctc", "w2v_path": "/runs/pretrain/checkpoint_last.pt"})
    with pytest.raises(ValueError, match=r"model\.w2v_path=.*/ctc\.pt holds a 'wav2vec_ctc' model \(a fine-tuned "
                                         r"model; it was fine-tuned from /runs/pretrain/checkpoint_last\.pt\); "
                                         r"expected a speech pretraining checkpoint \(.*data2vec_multi_eh_mam"):
        Wav2VecEncoder(Wav2Vec2CtcConfig(w2v_path=str(tmp_path / "ctc.pt")), output_size=10)


def test_speech_checkpoint_as_pretrained_path_names_the_kinds(tmp_path):
    from maskssl_fairseq.models.audio_classifier import load_pretrained

    saved_by_fairseq(tmp_path / "eh_mam.pt", {"_name": "data2vec_multi_eh_mam"})
    with pytest.raises(ValueError, match=r"model\.pretrained_path=.*/eh_mam\.pt holds a 'data2vec_multi_eh_mam' "
                                         r"model; expected a spectrogram pretraining checkpoint \(eat, m2d"):
        load_pretrained(str(tmp_path / "eh_mam.pt"))
    sys.path.insert(0, str(REPO / "run"))
    import linear_eval  # its --checkpoint is read the same way

    with pytest.raises(ValueError, match=r"--checkpoint=.*/eh_mam\.pt holds a 'data2vec_multi_eh_mam' model"):
        linear_eval.load_encoder(tmp_path / "eh_mam.pt", random_init=False, device=torch.device("cpu"))


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_config_problem_is_the_last_error_and_names_the_field(case, demo_corpus, tmp_path):
    folder, name, overrides, expected = CONFIG_CASES[case]
    torch.save({"model": {"w": torch.randn(100_000)}}, tmp_path / "whole.pt")
    (tmp_path / "truncated.pt").write_bytes((tmp_path / "whole.pt").read_bytes()[:200_000])  # a copy cut short
    (tmp_path / "notes.pt").write_text("not a checkpoint\n")
    torch.save({"cfg": {"model": {"_name": "hubert"}}, "model": {}}, tmp_path / "hubert.pt")  # what identifies a HuBERT
    saved_by_fairseq(tmp_path / "m2d.pt", {"_name": "m2d"})
    overrides = [override.format(tmp=tmp_path) for override in overrides]
    run_dir = tmp_path / "run"
    proc = run([VENV_BIN / "fairseq-hydra-train", "--config-dir", REPO / "examples" / folder, "--config-name", name,
                f"common.user_dir={PLUGIN_DIR}", f"task.data={demo_corpus}", f"hydra.run.dir={run_dir}",
                "optimization.max_update=1", *overrides])
    line = hydra_error(proc)
    assert re.search(expected, line), line
    # stopped before the first update: no training checkpoint (fairseq's trainer dumps crash.pt when a step raises)
    assert not [p for p in run_dir.glob("**/*.pt") if p.name != "crash.pt"]


def lexicon_with(data: Path, extra: str) -> Path:
    lexicon = data / "lexicon.txt"
    lexicon.write_text("JAR\tJ A R |\n" + extra)
    return lexicon


# case: (extra decode.py arguments given the corpus, how to break it, the expected line as a regex)
DECODE_CASES = {
    "lexicon_letters_outside_dictionary": (lambda d: ["--lexicon", lexicon_with(d, "NAÏVE\tN A Ï V E |\n")], None,
                                           r"lexicon\.txt:2: 'NAÏVE': letters not in .*dict\.ltr\.txt: Ï$"),
    "missing_lm": (lambda d: ["--lexicon", lexicon_with(d, ""), "--lm", d / "missing.arpa"], None,
                   r"^--lm .*missing\.arpa: no such file$"),
    "missing_audio_file": (lambda d: [], lambda d: rewrite_audio(d, lambda path, w, r: path.unlink()),
                           r"base\.tsv:3: .*flac: no such file$"),
    "no_transcripts": (lambda d: [], lambda d: (d / "base.ltr").unlink(),
                       r"base\.tsv: no base\.wrd or base\.ltr next to it to score against$"),
}


@pytest.mark.parametrize("case", sorted(DECODE_CASES))
def test_decode_problem_is_one_line_before_the_model_loads(case, corpus, tmp_path):
    arguments, breaks, expected = DECODE_CASES[case]
    if breaks:
        breaks(corpus)
    extra = arguments(corpus)
    before = snapshot(corpus.parent)
    proc = run([sys.executable, REPO / "run" / "decode.py", "--checkpoint", tmp_path / "never_loaded.pt",
                "--manifest", corpus / "base.tsv", "--out", tmp_path / "decoded", "--device", "cpu", *extra])
    assert proc.returncode != 0 and "Traceback" not in proc.stdout, proc.stdout[-3000:]
    assert re.search(expected, proc.stdout.strip().splitlines()[-1]), proc.stdout[-1000:]
    assert snapshot(corpus.parent) == before and not (tmp_path / "decoded").exists()


def test_nan_audio_stops_training_naming_file_and_line(corpus, tmp_path):
    """fairseq's own audio dataset (EH-MAM, wav2vec 2.0, CTC fine-tuning) refuses the NaN / inf of a float WAV."""
    rewrite_audio(corpus, write_nonfinite)
    proc = run([VENV_BIN / "fairseq-hydra-train", "--config-dir", REPO / "examples" / "eh_mam", "--config-name", "tiny",
                f"common.user_dir={PLUGIN_DIR}", f"task.data={corpus}", f"hydra.run.dir={tmp_path / 'run'}",
                "dataset.train_subset=base", "optimization.max_update=1"])
    assert re.search(r"ValueError: .*base\.tsv:3: .*flac: 2 samples are NaN or inf \(first at sample 100\)",
                     hydra_error(proc)), proc.stdout[-3000:]


def test_nan_audio_stops_spectrogram_loading(corpus):
    from maskssl_fairseq.tasks.spectrogram_pretraining import WaveformCropDataset

    rewrite_audio(corpus, write_nonfinite)
    dataset = WaveformCropDataset(corpus / "base.tsv", 16000, 10 * 16000, seed=1, random_crop=False, shuffle=False)
    with pytest.raises(ValueError, match=r"base\.tsv:3: .*flac: 2 samples are NaN or inf"):
        dataset[1]


def test_spectrogram_training_batches_say_what_they_leave_out(corpus, caplog):
    """fairseq drops a last batch whose size is no multiple of dataset.required_batch_size_multiple (8 by
    default): in training that is logged, and a split that makes no batch says what to change."""
    from maskssl_fairseq.tasks.spectrogram_pretraining import WaveformCropDataset

    def training_batches(size):
        dataset = WaveformCropDataset(corpus / "base.tsv", 16000, 16000, seed=1, random_crop=True, shuffle=False)
        return dataset.batch_by_size(dataset.ordered_indices(), max_sentences=size, required_batch_size_multiple=size)

    assert [len(batch) for batch in training_batches(2)] == [2]  # the third clip left out ...
    assert "1 of 3 clips left out of this epoch's training batches" in caplog.text  # ... and said so
    with pytest.raises(ValueError, match=r"base\.tsv: its 3 clips make no training batch of dataset\.batch_size=8 .*"
                                         r"set dataset\.required_batch_size_multiple=1"):
        training_batches(8)


def test_small_validation_split_is_evaluated_whole(demo_corpus, tmp_path):
    """EAT pretraining with a 3-clip validation split and batches of 4: one validation batch of 3 clips (fairseq
    would drop it, as not a multiple of dataset.required_batch_size_multiple=8; so it drops the last batch of
    any task's validation, e.g. 2 of the 16 dev utterances in examples/finetune/tiny.yaml)."""
    data = tmp_path / "data"
    data.mkdir()
    for split, source, clips in (("train", "pretrain", 12), ("valid", "dev", 3)):
        lines = (demo_corpus / f"{source}.tsv").read_text().splitlines()
        (data / f"{split}.tsv").write_text("\n".join(lines[:clips + 1]) + "\n")
    log = fairseq_hydra_train(REPO / "examples" / "eat", "tiny", f"task.data={data}", "dataset.train_subset=train",
                              "dataset.valid_subset=valid", "optimization.max_update=1", "task.norm_sample_size=4",
                              run_dir=tmp_path / "run")
    assert [int(record["valid_nsentences"]) for record in logged(log, "valid")] == [3]


def test_tri_stage_with_too_few_updates_says_what_to_change():
    """fairseq's tri_stage schedule (the CTC fine-tuning configs) divides by its decay phase: int(3 x 0.3) = 0."""
    from fairseq.optim.lr_scheduler.tri_stage_lr_scheduler import TriStageLRSchedule, TriStageLRScheduleConfig
    from omegaconf import OmegaConf

    import maskssl_fairseq  # noqa: F401  (the plugin, as common.user_dir loads it)

    yaml = OmegaConf.load(REPO / "examples" / "finetune" / "tiny.yaml")
    cfg = OmegaConf.merge(OmegaConf.structured(TriStageLRScheduleConfig), yaml.lr_scheduler,
                          {"max_update": 3, "lr": [1e-3]})
    with pytest.raises(ValueError, match=r"optimization\.max_update=3 leaves its decay phase int\(3 x 0\.3\) = 0 "
                                         r"updates .*set optimization\.max_update to at least 4"):
        TriStageLRSchedule(cfg, optimizer=None)  # refused before the optimizer is used


# case: (how to break the fine-tuning inputs, the expected error as a regex naming the file and line)
FINETUNING_CASES = {
    "bom_in_labels": (lambda d: prepend_bom(d / "base.ltr"), r"base\.ltr:1: starts with a UTF-8 byte-order mark"),
    "bom_in_manifest": (lambda d: prepend_bom(d / "base.tsv"), r"base\.tsv:1: starts with a UTF-8 byte-order mark"),
    "trailing_blank_label_line": (lambda d: edit_labels(d, lambda text: text + b"\n"),
                                  r"base\.ltr:4: a blank line after the last label; delete it"),
    "label_count": (lambda d: edit_labels(d, lambda text: b"\n".join(text.splitlines()[:2]) + b"\n"),
                    r"base\.ltr:3: 2 label lines for the 3 utterances of .*base\.tsv"),
    "duplicated_dictionary_symbol": (lambda d: (d / "dict.ltr.txt").write_text((d / "dict.ltr.txt").read_text() + "E 1\n"),
                                     r"dict\.ltr\.txt:\d+: the symbol 'E' is listed again"),
}


@pytest.mark.parametrize("case", sorted(FINETUNING_CASES))
def test_finetuning_inputs_are_named_by_fairseqs_task(case, corpus):
    """fairseq's own audio_finetuning task (CTC fine-tuning) as fairseq-hydra-train sets it up and loads a split."""
    from fairseq import tasks
    from fairseq.tasks.audio_finetuning import AudioFinetuningConfig
    from omegaconf import OmegaConf

    import maskssl_fairseq  # noqa: F401  (the plugin, as common.user_dir loads it)

    breaks, expected = FINETUNING_CASES[case]
    breaks(corpus)
    yaml = OmegaConf.load(REPO / "examples" / "finetune" / "tiny.yaml").task
    cfg = OmegaConf.merge(OmegaConf.structured(AudioFinetuningConfig), yaml, {"data": str(corpus), "seed": 1, "tpu": False})
    with pytest.raises(ValueError, match=expected):
        tasks.setup_task(cfg).load_dataset("base")


@pytest.fixture
def extract(tmp_path):
    """``run/extract_features.py``'s main, in process, on a tiny random HuBERT."""
    sys.path.insert(0, str(REPO / "examples" / "armhubert"))
    sys.path.insert(0, str(REPO / "run"))
    from extract_features import main
    from make_random_teacher import main as make_random_teacher

    checkpoint = tmp_path / "hubert.pt"
    make_random_teacher(["--kind", "hubert", "--out", str(checkpoint), "--layers", "1", "--dim", "32", "--ffn", "64",
                         "--heads", "2", "--conv-dim", "16", "--conv-pos", "16", "--conv-pos-groups", "4"])
    return lambda *arguments: main(["--checkpoint", str(checkpoint), "--layer", "1", "--device", "cpu", *map(str, arguments)])


def test_extract_features_force_clears_its_own_outputs_only(corpus, extract, tmp_path):
    out = tmp_path / "features"
    extract("--manifest", corpus / "base.tsv", "--out", out)
    (out / "000013.npy").write_bytes(b"stale")  # a larger earlier run's
    (out / "notes.txt").write_text("mine\n")  # not the tool's
    root, table = rows(corpus)
    write_rows(corpus, root, table[:2])
    extract("--manifest", corpus / "base.tsv", "--out", out, "--force")
    assert sorted(p.name for p in out.iterdir()) == ["000000.npy", "000001.npy", "index.tsv", "notes.txt", "timing.json"]
    assert len((out / "index.tsv").read_text().splitlines()) == 3


def test_extract_features_refuses_nan_audio_naming_file_and_line(corpus, extract, tmp_path):
    rewrite_audio(corpus, write_nonfinite)
    with pytest.raises(SystemExit, match=r"base\.tsv:3: .*flac: 2 samples are NaN or inf"):
        extract("--manifest", corpus / "base.tsv", "--out", tmp_path / "features")


def test_speech_validation_keeps_every_utterance(demo_corpus):
    """fairseq's Trainer.get_valid_iterator on fairseq's audio_finetuning task, as examples/finetune/tiny.yaml
    sets it up: without the plugin 2 of the 16 dev utterances fall in a dropped last batch."""
    from types import SimpleNamespace

    from fairseq import tasks
    from fairseq.tasks.audio_finetuning import AudioFinetuningConfig
    from fairseq.trainer import Trainer
    from omegaconf import OmegaConf

    import maskssl_fairseq  # noqa: F401  (the plugin, as common.user_dir loads it)

    yaml = OmegaConf.load(REPO / "examples" / "finetune" / "tiny.yaml")
    cfg = OmegaConf.merge(OmegaConf.structured(AudioFinetuningConfig), yaml.task,
                          {"data": str(demo_corpus), "seed": 1, "tpu": False})
    task = tasks.setup_task(cfg)
    task.load_dataset("dev")
    dataset_cfg = {"max_tokens_valid": yaml.dataset.max_tokens, "batch_size_valid": None, "num_workers": 0,
                   "skip_invalid_size_inputs_valid_test": True, "required_batch_size_multiple": 8,
                   "data_buffer_size": 10}
    trainer = SimpleNamespace(  # what get_valid_iterator reads of a Trainer
        cfg=OmegaConf.create({"dataset": dataset_cfg, "common": {"seed": 1}}), task=task,
        model=SimpleNamespace(max_positions=lambda: None), data_parallel_world_size=1, data_parallel_rank=0,
        reset_dummy_batch=lambda batch: None)
    batches = Trainer.get_valid_iterator(trainer, "dev").frozen_batches
    assert sorted(i for batch in batches for i in batch) == list(range(len(task.dataset("dev")))) == list(range(16))
    assert trainer.cfg.dataset.required_batch_size_multiple == 8  # training's batches are fairseq's
