"""Exact resume after ``kill -9``: crops from seed, epoch and index; checkpoints that a kill cannot corrupt."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import maskssl_fairseq  # noqa: F401  (installs the seeded crops and the atomic checkpoint copy)
from fairseq.file_io import PathManager
from fairseq.tasks.audio_pretraining import AudioPretrainingConfig, AudioPretrainingTask
from helpers import PLUGIN_DIR, REPO, VENV_BIN, logged, run_checked
from maskssl_fairseq.data.seeded_crops import crop_offset

EH_MAM = REPO / "examples" / "eh_mam"


def crops(dataset, ids):
    batch = dataset.collater([dataset[i] for i in ids])
    return {int(i): source for i, source in zip(batch["id"], batch["net_input"]["source"])}


def test_crops_are_a_function_of_seed_epoch_and_index(demo_corpus):
    config = AudioPretrainingConfig(data=str(demo_corpus), max_sample_size=12000, min_sample_size=0, seed=3, tpu=False)
    task = AudioPretrainingTask.setup_task(OmegaConf.structured(config))
    task.load_dataset("pretrain")
    dataset = task.datasets["pretrain"]
    assert dataset.crop_seed == 3
    dataset.set_epoch(2)
    first = crops(dataset, [0, 1, 2])
    np.random.seed(99)  # fairseq's own crop would follow numpy's global state
    np.random.rand(17)
    again = crops(dataset, [2, 0, 1])  # another order, as another rank's or a resumed run's collater sees it
    for i in first:
        assert torch.equal(first[i], again[i]), i
        whole = dataset[i]["source"]
        start = crop_offset(3, 2, i, len(whole) - 12000)
        assert torch.equal(first[i], whole[start:start + 12000]), i  # fairseq's crop: a window of the utterance
    dataset.set_epoch(3)
    assert any(not torch.equal(first[i], source) for i, source in crops(dataset, [0, 1, 2]).items())


COPY_FOREVER = """
import shutil
import sys
if sys.argv[1] == "plugin":
    import maskssl_fairseq
    from fairseq.file_io import PathManager
    def copy(source, target):
        PathManager.copy(source, target, overwrite=True)
else:
    copy = shutil.copyfile  # what fairseq's PathManager.copy does without the plugin
print("copying", flush=True)
while True:
    for source in sys.argv[2:4]:
        copy(source, sys.argv[4])
"""


def kill_while_copying(mode: str, small: Path, large: Path, last: Path) -> dict:
    """Copies ``small`` and ``large`` over ``last`` in turn until SIGKILL; returns what ``last`` then loads."""
    proc = subprocess.Popen([sys.executable, "-c", COPY_FOREVER, mode, small, large, last], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "copying"
    time.sleep(0.5)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return torch.load(last, weights_only=True)


def test_checkpoint_copy_survives_kill_9(tmp_path):
    """fairseq saves the first checkpoint name atomically and *copies* it to the others (checkpoint_last.pt);
    killed mid-copy, its shutil copy leaves a truncated file; the plugin's copy renames a finished one."""
    small, large, last = tmp_path / "small.pt", tmp_path / "large.pt", tmp_path / "checkpoint_last.pt"
    torch.save({"update": 1}, small)
    torch.save({"update": 2, "weights": torch.randn(12_000_000)}, large)  # 48 MB: copying takes a while
    for attempt in range(2):
        assert kill_while_copying("plugin", small, large, last)["update"] in (1, 2)  # loads: never truncated
    truncated = 0
    for attempt in range(3):
        try:
            kill_while_copying("shutil", small, large, last)
        except Exception:
            truncated += 1
    assert truncated >= 1, "the reference copy was never caught mid-write: the test cannot tell the two apart"
    assert PathManager.copy(str(small), str(tmp_path / "copy.pt"), overwrite=True)  # fairseq asserts the result
    assert torch.load(tmp_path / "copy.pt", weights_only=True) == {"update": 1}


RANDOM_CROPS = [
    "dataset.max_tokens=96000",
    "task.max_sample_size=24000",  # 1.5 s windows of longer utterances
    "model.feature_encoder_spec='[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2'",
    "lr_scheduler.warmup_updates=2",
]
# every run: 5 updates with a checkpoint at 2, killed once update 3 is logged, resumed to 5
SCHEDULE = ["optimization.max_update=5", "checkpoint.save_interval_updates=2"]
KILL_AT, SAVED_AT, LAST = 3, 2, 5
M2D = REPO / "examples" / "m2d"

# method: (config dir, config, overrides, logged values that must repeat exactly after the resume: training
# records, or "<valid subset>/<key>" for validation records)
RUNS = {
    "eh_mam": (EH_MAM, "tiny", RANDOM_CROPS,
               ("loss", "loss_regression", "loss_ranking", "masked_pct", "ranking_accuracy", "gnorm")),
    # random spectrogram crops, DWM's per-clip masks and an EMA target encoder in the model's own state
    "m2d_dwm": (M2D, "tiny_dwm", [], ("loss", "hint_ratio", "gnorm")),
    "msm_mae": (M2D, "tiny_msm_mae", [], ("loss", "hint_ratio", "gnorm")),
    # 16 inverse-block-masked clones per clip, a full EMA teacher, the utterance and frame terms
    "eat": (REPO / "examples" / "eat", "tiny", ["task.norm_sample_size=40"],
            ("loss", "loss_frame", "loss_utterance", "gnorm")),
    # a frozen HuBERT teacher, the student's distillation masks
    "armhubert": (REPO / "examples" / "armhubert", "tiny", ["model.teacher_path={teacher}"],
                  ("loss", "masked_loss", "unmasked_loss", "gnorm")),
    # fairseq's wav2vec_ctc on an EH-MAM checkpoint: its time and channel masks, validation at each checkpoint
    "ctc": (REPO / "examples" / "finetune", "tiny",
            ["model.w2v_path={pretrained}", "task.normalize=true", "model.freeze_finetune_updates=1", "dataset.validate_interval_updates=2",
             "dataset.max_tokens=96000"],
            ("loss", "gnorm", "dev/loss", "dev/wer")),
}


@pytest.fixture(scope="module")
def eh_mam_checkpoint(demo_corpus, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("eh_mam_pretrained")
    run_checked(train_command("eh_mam", demo_corpus, run_dir, {}) + ["optimization.max_update=3"])
    return run_dir / "checkpoints" / "checkpoint_last.pt"


def train_command(method, demo_corpus, run_dir, paths):
    config_dir, config, overrides, _ = RUNS[method]
    return [
        VENV_BIN / "fairseq-hydra-train", "--config-dir", config_dir, "--config-name", config,
        f"common.user_dir={PLUGIN_DIR}", "common.log_format=json", "common.log_interval=1", f"task.data={demo_corpus}",
        f"hydra.run.dir={run_dir}", f"checkpoint.save_dir={run_dir / 'checkpoints'}", *SCHEDULE,
        *(override.format(**paths) for override in overrides),
    ]


def model_state(run_dir):
    return torch.load(run_dir / "checkpoints" / "checkpoint_last.pt", map_location="cpu", weights_only=False)["model"]


def kill_9_after_update(cmd, update: int) -> List[str]:
    """Runs ``cmd`` until it logs ``update``, then SIGKILLs it; returns what it printed."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    proc = subprocess.Popen([str(c) for c in cmd], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if f'"num_updates": "{update}"' in line:
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "".join(seen[-30:])
    return seen


@pytest.mark.parametrize("method", sorted(RUNS))
def test_kill_9_between_checkpoints_then_resume_exactly(method, demo_corpus, tmp_path, request):
    paths = {}
    if method == "armhubert":
        paths["teacher"] = request.getfixturevalue("tiny_hubert_teacher")
    if method == "ctc":
        paths["pretrained"] = request.getfixturevalue("eh_mam_checkpoint")
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    reference_log = run_checked(train_command(method, demo_corpus, straight, paths))
    assert [int(r["num_updates"]) for r in logged(reference_log)] == list(range(1, LAST + 1))

    seen = kill_9_after_update(train_command(method, demo_corpus, interrupted, paths), KILL_AT)
    assert any("Saved checkpoint" in line and f"@ {SAVED_AT} updates" in line for line in seen), "".join(seen[-30:])
    assert not any(f"@ {SAVED_AT + 2} updates" in line for line in seen)
    saved = torch.load(interrupted / "checkpoints" / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert saved["optimizer_history"][-1]["num_updates"] == SAVED_AT
    if "teacher_updates" in saved["model"]:  # the EMA step of update SAVED_AT is taken when the next one begins
        assert saved["model"]["teacher_updates"].item() == SAVED_AT - 1

    resumed_log = run_checked(train_command(method, demo_corpus, interrupted, paths))
    resumed = logged(resumed_log)
    assert [int(r["num_updates"]) for r in resumed] == list(range(SAVED_AT + 1, LAST + 1))
    for key in RUNS[method][3]:
        subset, _, name = key.rpartition("/")
        section, prefix = (subset, f"{subset}_") if subset else ("train_inner", "")  # fairseq: dev_loss, ...
        after_the_checkpoint = [r[prefix + name] for r in logged(resumed_log, section)]
        expected = [r[prefix + name] for r in logged(reference_log, section)
                    if int(r[prefix + "num_updates"]) > SAVED_AT]
        assert after_the_checkpoint and after_the_checkpoint == expected, key
    final, expected = model_state(interrupted), model_state(straight)
    assert final.keys() == expected.keys()
    for key, value in expected.items():
        if key == "_ema":
            assert all(torch.equal(final[key][name], tensor) for name, tensor in value.items()), "EMA teacher"
        else:
            assert torch.equal(final[key], value), key


def test_fairseqs_own_wav2vec2_masks_follow_torchs_seed():
    """fairseq's Wav2Vec2Model masks without a seed (OS entropy); with the plugin, from torch's seeded RNG."""
    from fairseq.models.wav2vec.wav2vec2 import Wav2Vec2Config, Wav2Vec2Model

    model = Wav2Vec2Model(Wav2Vec2Config(encoder_layers=1, encoder_embed_dim=32, encoder_ffn_embed_dim=64,
                                         encoder_attention_heads=2, mask_prob=0.65, mask_length=10,
                                         mask_channel_prob=0.25, mask_channel_length=8, conv_pos=16))
    features, padding = torch.randn(4, 200, 32), torch.zeros(4, 200, dtype=torch.bool)
    padding[3, 150:] = True

    def masks(seed):
        torch.manual_seed(seed)
        masked, time_mask = model.apply_mask(features.clone(), padding)
        return masked, time_mask

    (first, time_mask), (again, _), (other, _) = masks(1), masks(1), masks(2)
    assert torch.equal(first, again) and not torch.equal(first, other)
    shares = time_mask.float().mean(1)
    assert ((shares > 0.3) & (shares < 0.7)).all(), shares  # fairseq's statistics: about half the frames
    assert not time_mask[3, 150:].any()  # padding is never masked
