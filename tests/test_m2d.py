"""M2D / MSM-MAE through the real ``fairseq-hydra-train`` on the spoken demo corpus, and linear evaluation."""

import sys
from pathlib import Path

import pytest
import torch

from helpers import REPO, fairseq_hydra_train, logged, series

CONFIGS = REPO / "examples" / "m2d"
FAST = ("task.norm_sample_size=40", "optimization.max_update=10")


def train(demo_corpus: Path, config: str, run_dir: Path, *overrides: str) -> str:
    return fairseq_hydra_train(CONFIGS, config, f"task.data={demo_corpus}", *FAST, *overrides, run_dir=run_dir)


def assert_loss_falls(log: str) -> list:
    losses = series(log, "loss")
    assert len(losses) == 10, log[-3000:]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    return losses


@pytest.fixture(scope="module")
def random_run(demo_corpus, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("m2d_random")
    return train(demo_corpus, "tiny_random", run_dir), run_dir / "checkpoints" / "checkpoint_last.pt"


def test_m2d_random_masking_trains(random_run):
    log, checkpoint = random_run
    assert_loss_falls(log)
    ema = series(log, "ema_decay")
    assert ema[0] == pytest.approx(0.99) and ema[-1] > ema[0]  # the momentum rises over training
    assert "hint_ratio" not in logged(log)[0]  # only DWM has one
    assert logged(log, "dev") and checkpoint.is_file()


@pytest.mark.parametrize("config", ["tiny_ibm", "tiny_dwm", "tiny_msm_mae"])
def test_other_strategies_and_msm_mae_train(demo_corpus, tmp_path, config):
    log = train(demo_corpus, config, tmp_path, "checkpoint.no_save=true", "dataset.disable_validation=true")
    assert_loss_falls(log)
    if config in ("tiny_dwm", "tiny_msm_mae"):
        hints = series(log, "hint_ratio")
        # 1 - (updates / 10)^2: random masking at first, mostly dispersion-weighted at the end
        assert hints[0] == 1.0 and hints[-1] == pytest.approx(1 - 0.9 ** 2, abs=1e-3)
        assert hints == sorted(hints, reverse=True)


def test_ema_target_is_excluded_from_the_optimizer(random_run):
    _, checkpoint = random_run
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    sys.path.insert(0, str(REPO / "run"))
    from linear_eval import load_encoder

    model = load_encoder(checkpoint, random_init=False, device=torch.device("cpu"))
    target = {n for n, _ in model.named_parameters() if n.startswith("target_")}
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert target and not target & set(trainable)
    # the optimizer state holds exactly the online parameters, split into decayed and no-decay groups
    groups = state["last_optimizer_state"]
    optimized = sorted(tuple(s["exp_avg"].shape) for g in groups.values() for s in g["state"].values())
    assert optimized == sorted(tuple(p.shape) for p in trainable.values())
    no_decay = sum(1 for n, p in trainable.items() if p.ndim <= 1 or n.endswith(".bias"))
    assert len(groups["no_decay"]["state"]) == no_decay
    # the target did follow the online encoder: EMA moved it away from its own initialisation
    online, followed = model.encoder.blocks[0].mlp.fc1.weight, model.target_blocks[0].mlp.fc1.weight
    fresh = type(model).build_model(model.cfg).target_blocks[0].mlp.fc1.weight
    assert (followed - fresh).abs().max() > 0 and not torch.equal(online, followed)


def test_ema_step_is_the_momentum_update(random_run):
    sys.path.insert(0, str(REPO / "run"))
    from linear_eval import load_encoder

    model = load_encoder(random_run[1], random_init=True, device=torch.device("cpu"))
    before = model.target_norm.weight.clone()
    online = model.encoder.norm.weight.detach() + 1.0
    model.encoder.norm.weight.data.copy_(online)
    model.ema_step(0.9)
    assert torch.allclose(model.target_norm.weight, 0.9 * before + 0.1 * online)
    assert model.ema_decay_at(0) == pytest.approx(0.99) and model.ema_decay_at(9) == pytest.approx(0.999)


def test_every_strategy_runs_in_the_model(random_run):
    sys.path.insert(0, str(REPO / "run"))
    from linear_eval import load_encoder

    model = load_encoder(random_run[1], random_init=False, device=torch.device("cpu")).train()
    waveform = torch.randn(3, 207 * 160)
    for strategy in ("random", "ibm", "dwm", "sgim"):
        model.cfg.masking = strategy
        output = model(waveform)
        assert output["sample_size"] == 3 * 46  # 65 patches, 19 visible at 0.7
        assert torch.isfinite(output["losses"]["m2d"])


def test_frame_and_clip_features(random_run):
    sys.path.insert(0, str(REPO / "run"))
    from linear_eval import load_encoder

    model = load_encoder(random_run[1], random_init=False, device=torch.device("cpu"))
    features = model.extract_features(torch.randn(2, 16000 * 5))  # 5 s: 501 frames, 31 patches of 16 and 5 frames
    # 208-frame pieces: 13 + 13 + 6 time steps (the last partial patch padded, as M2D's runtime does), each 5
    # frequency patches x 64 dims
    assert features["frames"].shape == (2, 32, 5 * 64)
    assert torch.allclose(features["clip"], features["frames"].mean(dim=1))
    short = model.extract_features(torch.randn(1, 800))  # 6 frames: padded to one patch
    assert short["frames"].shape == (1, 1, 320)


def test_linear_evaluation_prints_an_accuracy(random_run, demo_corpus, tmp_path, capsys):
    # in-process (the tools' main functions) to spare two fairseq start-ups
    sys.path.insert(0, str(REPO / "run"))
    sys.path.insert(0, str(CONFIGS))
    import demo_tasks
    import linear_eval

    labeled = tmp_path / "variants"
    demo_tasks.main(["variant", "--manifests", str(demo_corpus), "--out", str(labeled)])
    splits = [f"--{split}={labeled / f'{split}.tsv'}" for split in ("train", "valid", "test")]
    result = linear_eval.main(["--checkpoint", str(random_run[1]), *splits, "--lr", "1e-3", "--max-epochs", "30",
                               "--runs", "2", "--random-init"])
    accuracies = [run["test_accuracy"] for run in result["runs"]]
    assert len(accuracies) == 2 and result["test_accuracy"] == pytest.approx(sum(accuracies) / 2)
    assert result["test_accuracy_std"] == pytest.approx(abs(accuracies[0] - accuracies[1]) / 2)
    for run in result["runs"]:
        assert 0.0 <= run["test_accuracy"] <= 1.0 and 1 <= run["best_epoch"] <= 30
        assert run["feature_dim"] == 5 * 64 and run["classes"] == 6
    assert (f"test accuracy: {100 * result['test_accuracy']:.2f} +- {100 * result['test_accuracy_std']:.2f}% (2 runs)"
            in capsys.readouterr().out)

    (labeled / "valid.label").write_text("m1\n")
    with pytest.raises(ValueError, match=r"valid.label:2: 1 labels for \d+ utterances"):
        linear_eval.main(["--checkpoint", str(random_run[1]), *splits])
    (labeled / "test.label").unlink()
    with pytest.raises(FileNotFoundError, match=r"test.label: no such label file"):
        linear_eval.read_labeled_manifest(labeled / "test.tsv")


def test_random_init_runs_draw_their_own_encoders(random_run):
    sys.path.insert(0, str(REPO / "run"))
    from linear_eval import load_encoder

    def first_weight(seed):
        torch.manual_seed(seed)
        return load_encoder(random_run[1], random_init=True, device=torch.device("cpu")).encoder.blocks[0].mlp.fc1.weight

    assert torch.equal(first_weight(0), first_weight(0)) and not torch.equal(first_weight(0), first_weight(1))


def test_keyword_task_has_disjoint_speakers(tmp_path):
    sys.path.insert(0, str(CONFIGS))
    import demo_tasks
    from maskssl_fairseq.data.manifests import audio_files

    out = tmp_path / "keywords"
    demo_tasks.main(["keywords", "--out", str(out), "--clips-per-word", "2", "1", "1"])
    speakers = {}
    for split, per_word in (("train", 2), ("valid", 1), ("test", 1)):
        labels = (out / f"{split}.label").read_text().splitlines()
        assert sorted(labels) == sorted(demo_tasks.SPEECH_COMMANDS * per_word)
        entries = audio_files(out / f"{split}.tsv")
        assert len(entries) == len(labels) and all(path.is_file() and frames > 1000 for path, frames in entries)
        assert all(path.parent.name == label for (path, _), label in zip(entries, labels))
        speakers[split] = {path.stem.rsplit("_", 1)[0] for path, _ in entries}
    assert not speakers["train"] & speakers["valid"] and not speakers["train"] & speakers["test"]
    assert not speakers["valid"] & speakers["test"]
    with pytest.raises(SystemExit):  # an existing task is never overwritten without --force
        demo_tasks.main(["keywords", "--out", str(out)])

    demo_tasks.main(["phrases", "--out", str(tmp_path / "phrases"), "--phrases", "3", "4", "--words-per-phrase", "3"])
    for split, count in (("train", 3), ("test", 4)):
        texts = (tmp_path / "phrases" / f"{split}.wrd").read_text().splitlines()
        entries = audio_files(tmp_path / "phrases" / f"{split}.tsv")
        assert len(texts) == len(entries) == count
        assert all(len(set(t.split())) == 3 and set(t.split()) <= set(demo_tasks.SPEECH_COMMANDS) for t in texts)
        assert {path.stem.rsplit("_", 1)[0] for path, _ in entries} <= speakers[split]  # the keyword task's
        assert all(frames > 3 * 4000 for _, frames in entries)  # three words take more than 0.75 s
    word_sets = {split: {frozenset(t.split()) for t in (tmp_path / "phrases" / f"{split}.wrd").read_text().splitlines()}
                 for split in ("train", "test")}
    assert not word_sets["train"] & word_sets["test"]  # test phrases are new combinations


def test_bad_manifest_line_is_named(tmp_path):
    from maskssl_fairseq.data.manifests import ManifestFormatError, read_manifest

    tsv = tmp_path / "train.tsv"
    tsv.write_text(f"{tmp_path}\na.flac\t16000\nb.flac 16000\n")
    with pytest.raises(ManifestFormatError, match=r"train.tsv:3: expected"):
        read_manifest(tsv)


def test_front_end_refuses_to_run_without_statistics():
    from maskssl_fairseq.modules.log_mel import LogMelSpectrogram

    frontend = LogMelSpectrogram()
    with pytest.raises(RuntimeError, match="normalisation statistics are not set"):
        frontend(torch.zeros(1, 16000))
    frontend.set_norm_stats(-7.1, 4.2)
    assert frontend(torch.zeros(1, 16000)).shape == (1, 80, 101)


def test_mask_picture_is_drawn(demo_corpus, tmp_path):
    sys.path.insert(0, str(REPO / "run"))
    import visualize_masks

    root = Path((demo_corpus / "test.tsv").read_text().splitlines()[0])
    audio = root / (demo_corpus / "test.tsv").read_text().splitlines()[1].split("\t")[0]
    picture = tmp_path / "masks.png"
    visualize_masks.main(["--audio", str(audio), "--out", str(picture)])
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):  # never overwrites without --force
        visualize_masks.main(["--audio", str(audio), "--out", str(picture)])
