"""ARMHuBERT distillation end to end: a tiny HuBERT that fairseq itself trains, distilled through
``fairseq-hydra-train`` into a reuse student, which then fine-tunes with fairseq's stock ``wav2vec_ctc``."""

import math

import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

from helpers import REPO, fairseq_hydra_train, series
from maskssl_fairseq.criterions.armhubert_distillation import (
    ArmHubertDistillationConfig,
    ArmHubertDistillationCriterion,
)
from maskssl_fairseq.models.armhubert import ArmHubertConfig, ArmHubertModel
from maskssl_fairseq.modules.hubert_teacher import HubertTeacher

from maskssl_fairseq.data.manifests import audio_files

CONFIGS = REPO / "examples" / "armhubert"


def load_checkpoint(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture(scope="session")
def distilled(demo_corpus, tiny_hubert_teacher, tmp_path_factory):
    """(log, checkpoint dir) of the tiny.yaml distillation run; the teacher file must come out unchanged."""
    root = tmp_path_factory.mktemp("armhubert_student")
    teacher_bytes = tiny_hubert_teacher.read_bytes()
    log = fairseq_hydra_train(
        CONFIGS, "tiny", f"task.data={demo_corpus}", f"model.teacher_path={tiny_hubert_teacher}", run_dir=root
    )
    assert tiny_hubert_teacher.read_bytes() == teacher_bytes
    return log, root / "checkpoints"


def test_distillation_loss_falls(distilled):
    log, _ = distilled
    loss = series(log, "loss")
    assert len(loss) == 12
    assert sum(loss[-3:]) / 3 < 0.9 * sum(loss[:3]) / 3, loss
    masked, unmasked = series(log, "masked_loss"), series(log, "unmasked_loss")
    for total, m, u in zip(loss, masked, unmasked):
        assert m > 0 and u > 0 and math.isclose(total, m + u, rel_tol=2e-3, abs_tol=2e-4)
    # mask_prob 0.8 of the shortest utterance in the batch, so of all frames at most 0.8
    fractions = series(log, "masked_fraction")
    assert all(0 < f <= 0.8 for f in fractions) and max(fractions) > 0.75
    # evaluation masks nothing: every frame regresses the teacher on the clean input
    assert series(log, "dev_masked_loss", "dev") == [0.0] and series(log, "dev_loss", "dev")[0] > 0


def test_checkpoints_hold_the_student_only(distilled, tiny_hubert_teacher):
    _, checkpoints = distilled
    state = load_checkpoint(checkpoints / "checkpoint_last.pt")
    cfg = OmegaConf.create(state["cfg"]["model"])
    assert cfg.teacher_path == str(tiny_hubert_teacher)
    student = ArmHubertModel.build_model(OmegaConf.merge(OmegaConf.structured(ArmHubertConfig), cfg))
    assert set(state["model"]) == set(student.state_dict())
    assert not any("teacher" in key for key in state["model"])
    student.load_state_dict(state["model"], strict=True)


def test_teacher_stays_frozen_in_eval_mode_and_unchanged(demo_corpus, tiny_hubert_teacher):
    model_cfg = OmegaConf.load(CONFIGS / "tiny.yaml").model
    del model_cfg["_name"]
    model_cfg.teacher_path = str(tiny_hubert_teacher)
    model = ArmHubertModel.build_model(OmegaConf.merge(OmegaConf.structured(ArmHubertConfig), model_cfg))
    criterion = ArmHubertDistillationCriterion(ArmHubertDistillationConfig(), task=None)
    files = [path for path, _ in audio_files(demo_corpus / "pretrain.tsv")[:2]]
    waves = [torch.from_numpy(sf.read(str(f), dtype="float32")[0]) for f in files]
    length = max(len(w) for w in waves)
    source = torch.stack([torch.nn.functional.pad(w, (0, length - len(w))) for w in waves])
    padding = torch.stack([torch.arange(length) >= len(w) for w in waves])
    sample = {"net_input": {"source": source, "padding_mask": padding}}

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(2):
        loss, _, _ = criterion(model, sample)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    teacher = model.teacher
    assert isinstance(teacher, HubertTeacher) and not teacher.training
    assert not any(m.training for m in teacher.modules())  # fairseq's model.train() does not reach it
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    assert teacher.model.encoder.layerdrop == 0 and teacher.model.encoder.required_seq_len_multiple == 1
    assert not {id(p) for p in teacher.parameters()} & {id(p) for p in model.parameters()}
    reference = HubertTeacher.from_checkpoint(str(tiny_hubert_teacher)).state_dict()
    for key, value in teacher.state_dict().items():
        torch.testing.assert_close(value, reference[key], rtol=0, atol=0)


def test_student_fine_tunes_with_wav2vec_ctc_without_the_teacher_file(distilled, demo_corpus, tmp_path):
    _, checkpoints = distilled
    state = load_checkpoint(checkpoints / "checkpoint_last.pt")
    state["cfg"]["model"]["teacher_path"] = str(tmp_path / "no-such-teacher.pt")  # fine-tuning never opens it
    pretrained = tmp_path / "student.pt"
    torch.save(state, pretrained)
    log = fairseq_hydra_train(
        CONFIGS, "tiny_ctc", f"task.data={demo_corpus}", f"model.w2v_path={pretrained}",
        "dataset.disable_validation=true", "checkpoint.best_checkpoint_metric=loss", run_dir=tmp_path / "ctc",
    )
    losses = series(log, "loss")
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    tuned = load_checkpoint(tmp_path / "ctc" / "checkpoints" / "checkpoint_last.pt")["model"]
    assert not any(".heads." in key for key in tuned)  # remove_pretraining_modules dropped the distillation heads
    assert any(key.startswith("w2v_encoder.w2v_model.encoder.layers.1.self_attn.v_proj") for key in tuned)
