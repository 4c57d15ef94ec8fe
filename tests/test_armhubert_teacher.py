"""ARMHuBERT teachers as the released code runs them: HuBERT's own frame padding, eval mode, the masked view;
the WavLM teacher of ARMwavLM-S in the authors', torchaudio's and HuggingFace's layouts."""

import sys

import pytest
import torch
from fairseq.models.hubert.hubert import HubertConfig, HubertModel
from fairseq.tasks.hubert_pretraining import HubertPretrainingConfig
from omegaconf import OmegaConf

from helpers import REPO, fairseq_hydra_train, series
from maskssl_fairseq.models.armhubert import ArmHubertConfig, ArmHubertModel, load_teacher
from maskssl_fairseq.modules.cnn_frontend import frame_padding_mask
from maskssl_fairseq.modules.hubert_teacher import HubertTeacher
from maskssl_fairseq.modules.wavlm_teacher import WavLMTeacher

CONFIGS = REPO / "examples" / "armhubert"
sys.path.insert(0, str(CONFIGS))
from make_random_teacher import main as make_random_teacher  # noqa: E402
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


@pytest.mark.parametrize("mask_style", ["exact", "fairseq"])
def test_distillation_targets_come_from_the_teachers_padding_and_the_shared_mask(mask_style):
    teacher = HubertTeacher(tiny_hubert())
    student = build_student("tiny", teacher_embed_dim=64, mask_style=mask_style)
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


# ------------------------------------------------------------------------------------------------ WavLM teacher
TINY_TEACHER = ["--layers", "2", "--dim", "64", "--ffn", "128", "--heads", "4", "--conv-dim", "32", "--conv-pos", "16",
                "--conv-pos-groups", "4"]
# names of the original authors' WavLM-Base.pt (microsoft/unilm wavlm/WavLM.py), as the research notes list them
UNILM_NAMES = ["feature_extractor.conv_layers.0.0.weight", "feature_extractor.conv_layers.0.2.weight",
               "feature_extractor.conv_layers.6.0.weight", "layer_norm.weight", "post_extract_proj.weight",
               "encoder.pos_conv.0.weight_g", "encoder.pos_conv.0.weight_v", "encoder.layer_norm.bias",
               "encoder.layers.0.self_attn.q_proj.weight", "encoder.layers.1.self_attn.v_proj.bias",
               "encoder.layers.0.self_attn.relative_attention_bias.weight", "encoder.layers.1.self_attn.grep_a",
               "encoder.layers.1.self_attn.grep_linear.weight", "encoder.layers.0.self_attn_layer_norm.weight",
               "encoder.layers.1.fc1.weight", "encoder.layers.1.final_layer_norm.bias", "mask_emb"]


@pytest.fixture(scope="module")
def wavlm_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("wavlm")
    make_random_teacher(["--kind", "wavlm", "--out", str(root / "authors.pt"), *TINY_TEACHER])
    make_random_teacher(["--kind", "wavlm", "--layout", "torchaudio", "--out", str(root / "torchaudio.pt"),
                         *TINY_TEACHER])
    return root / "authors.pt", root / "torchaudio.pt"


def test_wavlm_in_the_authors_and_torchaudios_layouts_loads_and_matches_torchaudios_forward(wavlm_files):
    authors, torchaudio_file = wavlm_files
    saved = torch.load(authors, weights_only=False)
    assert set(saved) == {"cfg", "model"} and set(UNILM_NAMES) <= set(saved["model"])
    assert "encoder.layers.1.self_attn.relative_attention_bias.weight" not in saved["model"]  # layer 1 only
    teachers = [load_teacher(str(authors)), load_teacher(str(torchaudio_file), "wavlm")]
    assert all(isinstance(t, WavLMTeacher) and t.num_layers == 2 and t.embed_dim == 64 for t in teachers)
    torch.testing.assert_close(teachers[0].mask_emb, saved["model"]["mask_emb"], rtol=0, atol=0)

    source, padding = padded_batch([32000, 16000, 24000], 32000)
    assert (~teachers[0].frame_padding(padding, 99)).sum(1).tolist() == [99, 50, 75]  # unilm's rule, as HuBERT's
    mask = torch.zeros(3, 99, dtype=torch.bool)
    mask[:, 20:40] = True
    first, second = (t.layer_outputs(source, padding, mask) for t in teachers)
    for ours, theirs in zip(first[0] + first[1], second[0] + second[1]):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    # without padding, the clean view is torchaudio's own forward
    with torch.no_grad():
        reference, _ = teachers[0].model.extract_features(source[:1])
    for ours, theirs in zip(teachers[0].layer_outputs(source[:1])[0], reference):
        torch.testing.assert_close(ours, theirs)
    for clean, masked in zip(*first):
        assert not torch.allclose(clean[:, 20:40], masked[:, 20:40])


def test_wavlm_from_a_huggingface_directory(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.WavLMConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=128, conv_dim=(32,) * 7, num_conv_pos_embeddings=16,
                                      num_conv_pos_embedding_groups=4, hidden_dropout=0.0, attention_dropout=0.0,
                                      activation_dropout=0.0, feat_proj_dropout=0.0, layerdrop=0.0)
    original = transformers.WavLMModel(config).eval()
    original.save_pretrained(tmp_path / "hf")
    teacher = load_teacher(str(tmp_path / "hf"))
    source = torch.randn(1, 16000)
    with torch.no_grad():
        hidden = original(source, output_hidden_states=True).hidden_states[1:]
    for ours, theirs in zip(teacher.layer_outputs(source)[0], hidden):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)


def test_armwavlm_student_trains_one_update_with_a_random_wavlm_teacher(demo_corpus, wavlm_files, tmp_path):
    authors, _ = wavlm_files
    log = fairseq_hydra_train(
        CONFIGS, "tiny", f"task.data={demo_corpus}", f"model.teacher_path={authors}", "++model.teacher_type=wavlm",
        "++model.mask_style=fairseq",
        "optimization.max_update=1", "dataset.disable_validation=true", run_dir=tmp_path,
    )
    assert "loaded the WavLMTeacher" in log
    fraction = series(log, "masked_fraction")
    assert len(fraction) == 1 and 0.2 < fraction[0] < 0.75  # the released mask covers well under mask_prob 0.8
    state = torch.load(tmp_path / "checkpoints" / "checkpoint_last.pt", map_location="cpu", weights_only=False)
    assert state["optimizer_history"][-1]["num_updates"] == 1
    student = build_student("tiny")
    assert set(state["model"]) == set(student.state_dict())  # the teacher never enters the checkpoint
    assert not any("teacher" in key or "rel_attn" in key for key in state["model"])


def test_armwavlm_configs_build_the_paper_s_22_39_m_student():
    for name in ("armwavlm_s", "armwavlm_s_100h"):
        model = build_student(name)
        assert model.cfg.teacher_type == "wavlm"
        assert round(sum(p.numel() for p in model.parameters()) / 1e6, 2) == 22.39


def mask_statistics(mask: torch.Tensor):
    """(masked share, mean length of a masked run in frames) of a ``[B, T]`` mask."""
    starts = mask.clone()
    starts[:, 1:] &= ~mask[:, :-1]
    return mask.float().mean().item(), mask.sum().item() / max(starts.sum().item(), 1)


@pytest.mark.parametrize(
    "mask_prob, seconds, share, run",  # the "official" column: the released code's masks, B = 18
    [(0.8, 2, 0.48, 2.8), (0.8, 12, 0.67, 4.5), (0.4, 2, 0.18, 1.9), (0.4, 12, 0.31, 3.6)],
)
def test_released_mask_style_has_the_released_statistics(mask_prob, seconds, share, run):
    student = build_student("armhubert", mask_prob=mask_prob)
    assert student.cfg.mask_style == "fairseq"  # the paper configs mask as the released code does
    frames = (seconds * 16000 - 400) // 320 + 1
    torch.manual_seed(0)
    stats = [mask_statistics(student.distillation_mask((18, frames), None, torch.device("cpu"))) for _ in range(40)]
    measured_share = sum(s for s, _ in stats) / len(stats)
    measured_run = sum(r for _, r in stats) / len(stats)
    assert abs(measured_share - share) < 0.03, (measured_share, share)
    assert abs(measured_run - run) < 0.3, (measured_run, run)
    exact = build_student("armhubert", mask_prob=mask_prob, mask_style="exact")
    exact_share, exact_run = mask_statistics(exact.distillation_mask((18, frames), None, torch.device("cpu")))
    assert abs(exact_share - mask_prob) < 0.01 and exact_run > 1.5 * run  # today's exact span mask, for contrast
