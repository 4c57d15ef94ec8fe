"""Audio classification fine-tuning of spectrogram checkpoints (EAT, M2D) through the real
``fairseq-hydra-train``: training, validation (accuracy, mAP), best checkpoint, resuming, scoring with
``run/classify.py``, and errors on bad label files."""

import shutil
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from sklearn.metrics import average_precision_score

from helpers import REPO, fairseq_hydra_train, logged, run_checked, series

from maskssl_fairseq.criterions.audio_classification import mean_average_precision
from maskssl_fairseq.models.audio_classifier import SpectrogramClassifierConfig, SpectrogramClassifierModel
from maskssl_fairseq.tasks.audio_classification import SpectrogramClassificationConfig, SpectrogramClassificationTask

CONFIGS = REPO / "examples" / "eat"
sys.path.insert(0, str(REPO / "examples" / "m2d"))
from demo_tasks import label_of  # noqa: E402


@pytest.fixture(scope="module")
def eat_checkpoint(demo_corpus, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("eat_pretrain")
    fairseq_hydra_train(CONFIGS, "tiny", f"task.data={demo_corpus}", "task.norm_sample_size=40",
                        "optimization.max_update=4", "dataset.disable_validation=true", run_dir=run_dir)
    return run_dir / "checkpoints" / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def voice_task(demo_corpus, tmp_path_factory) -> Path:
    """The demo corpus's accent task (5 classes) and, in ``multi/``, voice and variant as two labels per clip."""
    out = tmp_path_factory.mktemp("voice")
    run_checked([sys.executable, REPO / "examples" / "m2d" / "demo_tasks.py", "voice", "--manifests", demo_corpus,
                 "--out", out])
    multi = out / "multi"
    multi.mkdir()
    for split in ("train", "valid", "test"):
        shutil.copyfile(out / f"{split}.tsv", multi / f"{split}.tsv")
        paths = [line.split("\t")[0] for line in (out / f"{split}.tsv").read_text().splitlines()[1:]]
        (multi / f"{split}.label").write_text("".join(
            f"{label_of(p, 'voice', split)},{label_of(p, 'variant', split)}\n" for p in paths))
    return out


def finetune(data: Path, checkpoint: Path, run_dir: Path, *overrides: str) -> str:
    return fairseq_hydra_train(CONFIGS, "finetune_tiny", f"task.data={data}", f"model.pretrained_path={checkpoint}",
                               *overrides, run_dir=run_dir)


def classify(capsys, *args) -> str:
    """``run/classify.py``'s command line, run in this process."""
    sys.path.insert(0, str(REPO / "run"))
    import classify as script

    capsys.readouterr()
    script.main([str(a) for a in args])
    return capsys.readouterr().out


def test_eat_finetunes_validates_and_keeps_the_best(eat_checkpoint, voice_task, tmp_path, capsys):
    log = finetune(voice_task, eat_checkpoint, tmp_path, "optimization.max_update=8")
    assert (voice_task / "labels.txt").read_text().split() == sorted(set((voice_task / "train.label").read_text().split()))
    valid = logged(log, "valid")
    assert len(valid) == 2 and all(0.0 <= float(r["valid_accuracy"]) <= 1.0 for r in valid)
    best = max(float(r["valid_accuracy"]) for r in valid)
    assert float(valid[-1]["valid_best_accuracy"]) == best
    checkpoints = tmp_path / "checkpoints"
    assert (checkpoints / "checkpoint_best.pt").is_file()
    assert torch.load(checkpoints / "checkpoint_best.pt", weights_only=False)["extra_state"]["best"] == best

    # run/classify.py recomputes the last validation's accuracy from the checkpoint alone
    last_accuracy = float(valid[-1]["valid_accuracy"])
    printed = classify(capsys, "--checkpoint", checkpoints / "checkpoint_last.pt", "--manifest", voice_task / "valid.tsv")
    assert f"16 clips, accuracy {last_accuracy:.4f}" in printed, printed
    audio_root = Path((voice_task / "valid.tsv").read_text().splitlines()[0])
    first = (voice_task / "valid.tsv").read_text().splitlines()[1].split("\t")[0]
    top = classify(capsys, "--checkpoint", checkpoints / "checkpoint_last.pt", "--audio", audio_root / first, "--top-k", "3")
    rows = [line.split("\t") for line in top.strip().splitlines()[-3:]]
    labels = set((voice_task / "labels.txt").read_text().split())
    assert all(label in labels for _, label in rows) and [float(p) for p, _ in rows] == sorted((float(p) for p, _ in rows), reverse=True)

    # a fine-tuned checkpoint, or none, where a pretraining one is expected: the error names the field
    for pretrained, expected in ((checkpoints / "checkpoint_best.pt", "holds a 'spectrogram_classifier' model (a "
                                  "fine-tuned model; it was fine-tuned from "),
                                 (tmp_path / "missing.pt", f"model.pretrained_path: no checkpoint at {tmp_path / 'missing.pt'}")):
        with pytest.raises(AssertionError) as failed:
            finetune(voice_task, pretrained, tmp_path / "wrong_kind", "optimization.max_update=1")
        assert expected in str(failed.value) and "model.pretrained_path" in str(failed.value)
    assert not list((tmp_path / "wrong_kind").glob("**/checkpoint*.pt"))


def test_multi_label_finetuning_logs_map(eat_checkpoint, voice_task, tmp_path, capsys):
    settings = ("task.multi_label=true", "checkpoint.best_checkpoint_metric=mAP", "criterion.label_smoothing=0.0")
    log = finetune(voice_task / "multi", eat_checkpoint, tmp_path, *settings, "optimization.max_update=4")
    assert len((voice_task / "multi" / "labels.txt").read_text().split()) == 11  # 5 accents + 6 variants
    valid = logged(log, "valid")
    assert valid and all(0.0 < float(r["valid_mAP"]) <= 1.0 for r in valid) and "valid_accuracy" not in valid[0]

    # the same command with more updates resumes from checkpoint_last.pt (update 4, then 5 and 6), its saved
    # mAP meter included
    resumed = finetune(voice_task / "multi", eat_checkpoint, tmp_path, *settings, "optimization.max_update=6")
    assert "Loaded checkpoint" in resumed and "@ 4 updates" in resumed
    assert series(resumed, "num_updates") == [5.0, 6.0]
    valid = logged(resumed, "valid")
    printed = classify(capsys, "--checkpoint", tmp_path / "checkpoints" / "checkpoint_last.pt", "--manifest",
                       voice_task / "multi" / "valid.tsv")
    assert f"mAP {float(valid[-1]['valid_mAP']):.4f}" in printed, printed


def test_mean_average_precision_matches_sklearn():
    generator = torch.Generator().manual_seed(0)
    scores = torch.rand(50, 6, generator=generator)
    targets = (torch.rand(50, 6, generator=generator) < 0.3).float()
    targets[:, 5] = 0  # a class without positives is left out, as AudioSet evaluations do
    reference = average_precision_score(targets[:, :5].numpy(), scores[:, :5].numpy(), average="macro")
    assert mean_average_precision(scores, targets) == pytest.approx(reference, abs=1e-9)


def test_m2d_checkpoint_gets_mean_pooling_and_layer_decay(demo_corpus, tmp_path):
    fairseq_hydra_train(REPO / "examples" / "m2d", "tiny_random", f"task.data={demo_corpus}", "task.norm_sample_size=40",
                        "optimization.max_update=1", "dataset.disable_validation=true", run_dir=tmp_path)
    cfg = OmegaConf.structured(SpectrogramClassifierConfig)
    cfg.pretrained_path, cfg.labels, cfg.layer_decay = str(tmp_path / "checkpoints" / "checkpoint_last.pt"), ["a", "b", "c"], 0.5
    model = SpectrogramClassifierModel.build_model(cfg)
    assert model.pooling == "mean" and cfg.pretrained_args["_name"] == "m2d"
    assert not any(name.startswith(("target_", "predictor")) for name, _ in model.named_parameters())
    saved = torch.load(cfg.pretrained_path, weights_only=False)["model"]
    assert torch.equal(model.encoder.blocks[0].mlp.fc1.weight, saved["encoder.blocks.0.mlp.fc1.weight"])
    assert torch.equal(model.frontend.norm_stats, saved["frontend.norm_stats"])
    depth = len(model.encoder.blocks)  # 2: patch embedding 0.5^3, block 0 0.5^2, block 1 0.5, head 1
    scales = {name: p.optim_overrides["optimizer"]["lr_scale"] for name, p in model.named_parameters()}
    assert scales["encoder.patch_embed.weight"] == 0.5 ** (depth + 1)
    assert scales["encoder.blocks.0.attn.qkv.weight"] == 0.5 ** depth
    assert scales["head.weight"] == 1.0 and model.head.bias.param_group == "no_decay"
    logits = model.eval()(torch.randn(2, 16000) * 0.1)["logits"]
    assert logits.shape == (2, 3) and torch.isfinite(logits).all()
    # the from-scratch baseline: the same architecture and front-end statistics, fresh weights
    cfg.random_init, cfg.pretrained_args = True, None
    scratch = SpectrogramClassifierModel.build_model(cfg)
    assert torch.equal(scratch.frontend.norm_stats, saved["frontend.norm_stats"])
    assert not torch.equal(scratch.encoder.blocks[0].mlp.fc1.weight, saved["encoder.blocks.0.mlp.fc1.weight"])


def write_task(data: Path, labels: list, clips: int = 3) -> None:
    (data / "train.tsv").write_text(f"{data}\n" + "".join(f"a{i}.wav\t16000\n" for i in range(clips)))
    (data / "train.label").write_text("".join(f"{label}\n" for label in labels))


@pytest.mark.parametrize("labels, multi_label, message", [
    (["cat", "dog"], False, "train.label:2: 2 label lines for the 3 clips"),
    (["cat", "", "dog"], False, "train.label:2: empty label"),
    (["cat", "dog,cat", "dog"], False, "train.label:2: several labels"),
    (["cat", "dog,", "dog"], True, "train.label:2: empty label"),
    (["cat", "dog", "bird"], False, "train.label:3: unknown label 'bird'"),
])
def test_bad_label_files_name_the_file_and_line(tmp_path, labels, multi_label, message):
    write_task(tmp_path, labels)
    (tmp_path / "labels.txt").write_text("cat\ndog\n")
    cfg = SpectrogramClassificationConfig(data=str(tmp_path), multi_label=multi_label, train_subset="train", seed=1)
    with pytest.raises((ValueError, FileNotFoundError)) as error:
        SpectrogramClassificationTask.setup_task(cfg).load_dataset("train")
    assert message in str(error.value) and str(tmp_path / "train.label") in str(error.value)
    assert "\n" not in str(error.value)
