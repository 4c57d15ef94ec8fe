"""ARMHuBERT teachers as the released code runs them: HuBERT's own frame padding, eval mode, the masked view;
the WavLM teacher of ARMwavLM-S in the authors', torchaudio's and HuggingFace's layouts."""

import pytest
import torch
from fairseq.models.hubert.hubert import HubertConfig, HubertModel
from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig
from omegaconf import OmegaConf

from helpers import REPO
from maskssl_fairseq.models.armhubert import ArmHubertConfig, ArmHubertModel
from maskssl_fairseq.modules.cnn_frontend import frame_padding_mask
from maskssl_fairseq.modules.hubert_teacher import HubertTeacher

CONFIGS = REPO / "examples" / "armhubert"
TINY_CONV = "[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2"


def tiny_hubert(seed=0) -> HubertModel:
    torch.manual_seed(seed)
    cfg = HubertConfig(label_rate=50.0, conv_feature_layers=TINY_CONV, encoder_layers=2, encoder_embed_dim=64,
                       encoder_ffn_embed_dim=128, encoder_attention_heads=4, conv_pos=16, conv_pos_groups=4)
    model = HubertModel(cfg, HubertPretrainingConfig(data="unused", label_rate=50.0), [None])
    model.mask_emb.data.normal_()  # a trained mask embedding is not the zero vector
    return model


def padded_batch(lengths, total, seed=0):
    generator = torch.Generator().manual_seed(seed)
    source = torch.randn(len(lengths), total, generator=generator)
    padding = torch.stack([torch.arange(total) >= n for n in lengths])
    return source.masked_fill(padding, 0.0), padding


def hooked_layer_outputs(model: HubertModel, source, padding):
    """What the released TeacherWrapper distils: forward hooks on every encoder layer of fairseq's own forward."""
    seen = []
    hooks = [layer.register_forward_hook(lambda m, args, out: seen.append(out[0].transpose(0, 1)))
             for layer in model.encoder.layers]
    with torch.no_grad():
        model.extract_features(source, padding_mask=padding, mask=False)
    for hook in hooks:
        hook.remove()
    return seen


def test_hubert_teacher_pads_frames_with_hubert_s_own_rule_and_matches_its_forward():
    model = tiny_hubert()
    teacher = HubertTeacher(model)
    source, padding = padded_batch([32000, 16000, 24000], 32000)
    frames = teacher.project(source).size(1)
    assert frames == 99
    teacher_padding = teacher.frame_padding(padding, frames)
    assert (~teacher_padding).sum(1).tolist() == [99, 50, 75]  # HuBERT's forward_padding_mask
    student_rule = frame_padding_mask(padding, frames, eval(TINY_CONV))
    assert (~student_rule).sum(1).tolist() == [99, 49, 74]  # the conv-length rule keeps one frame fewer

    clean, masked = teacher.layer_outputs(source, padding)
    assert masked is None
    reference = hooked_layer_outputs(model, source, padding)
    assert len(clean) == len(reference) == 2
    for ours, theirs in zip(clean, reference):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_masked_view_replaces_the_projected_frames_by_the_teacher_mask_embedding():
    model = tiny_hubert()
    teacher = HubertTeacher(model)
    source, padding = padded_batch([32000, 16000], 32000)
    mask = torch.zeros(2, 99, dtype=torch.bool)
    mask[:, 10:30] = True
    clean, masked = teacher.layer_outputs(source, padding, mask)
    features = model.post_extract_proj(model.layer_norm(model.forward_features(source).transpose(1, 2)))
    features[mask] = model.mask_emb
    with torch.no_grad():
        _, results = model.encoder.extract_features(features, padding_mask=teacher.frame_padding(padding, 99))
    for ours, theirs in zip(masked, results):  # the teacher's pass is batched with the clean view: float noise
        torch.testing.assert_close(ours, theirs[0].transpose(0, 1))
    for ours_clean, ours_masked in zip(clean, masked):
        assert not torch.allclose(ours_clean[:, 10:30], ours_masked[:, 10:30])


def test_teacher_stays_in_eval_mode_through_the_students_train_calls():
    teacher = HubertTeacher(tiny_hubert())
    student = build_student("tiny")
    object.__setattr__(student, "teacher", teacher)
    student.train()
    assert not any(module.training for module in teacher.modules())
    source, padding = padded_batch([16000, 12000], 16000)
    first = teacher.layer_outputs(source, padding)[0]
    second = teacher.layer_outputs(source, padding)[0]  # dropout would make two passes differ
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def build_student(name: str, **overrides) -> ArmHubertModel:
    model_cfg = OmegaConf.load(CONFIGS / f"{name}.yaml").model
    del model_cfg["_name"]
    model_cfg.teacher_path = None
    for key, value in overrides.items():
        model_cfg[key] = value
    return ArmHubertModel.build_model(OmegaConf.merge(OmegaConf.structured(ArmHubertConfig), model_cfg))


def test_distillation_targets_come_from_the_teachers_padding_and_the_shared_mask():
    teacher = HubertTeacher(tiny_hubert())
    student = build_student("tiny", teacher_embed_dim=64)
    object.__setattr__(student, "teacher", teacher)
    student.train()
    source, padding = padded_batch([32000, 16000, 24000], 32000)
    out = student(source, padding)
    mask = out["mask"]
    teacher_padding = teacher.frame_padding(padding, 99)
    assert not (mask & teacher_padding).any()  # the mask is drawn over the teacher's valid frames
    clean, masked = teacher.layer_outputs(source, padding, mask)
    for ours, theirs in zip(out["targets"] + out["masked_targets"], clean + masked):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_a_teacher_of_the_wrong_kind_is_a_clear_error(tmp_path):
    path = tmp_path / "not_a_model.pt"
    torch.save({"weights": torch.zeros(3)}, path)
    student = build_student("tiny", teacher_path=str(path))
    with pytest.raises(ValueError, match="model.teacher_path=.*neither a fairseq HuBERT"):
        student.load_teacher()
