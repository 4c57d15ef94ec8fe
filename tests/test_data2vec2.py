"""The data2vec 2.0 audio backbone on small inputs: shapes, padding, masked-frame removal, targets, EMA."""

import pytest
import torch
import torch.nn.functional as F

from maskssl_fairseq.masking import wav2vec2_span_mask
from maskssl_fairseq.models.eh_mam import EhMamConfig, EhMamModel
from maskssl_fairseq.modules.cnn_frontend import conv_output_lengths
from maskssl_fairseq.modules.data2vec2_audio import instance_norm_average

BACKBONE = dict(
    embed_dim=32, num_heads=4, depth=3, prenet_depth=1, average_top_k_layers=2,
    feature_encoder_spec="[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2",
    conv_pos_depth=2, conv_pos_width=10, conv_pos_groups=4, decoder_dim=16, decoder_groups=4, decoder_layers=2,
    layerdrop=0.0, prenet_layerdrop=0.0, ranking_loss_weight=0.0, hard_fraction_end=0.0,
    hard_fraction_ramp_updates=10, ema_decay=0.9, ema_end_decay=0.99, ema_anneal_end_step=10,
)


def data2vec2(**overrides) -> EhMamModel:
    torch.manual_seed(0)
    return EhMamModel(EhMamConfig(**{**BACKBONE, **overrides}))


def test_feature_shapes_and_padding():
    model = data2vec2().eval()
    source = torch.randn(2, 16000)
    padding = torch.zeros(2, 16000, dtype=torch.bool)
    padding[1, 9000:] = True
    out = model.extract_features(source, padding_mask=padding)
    frames = conv_output_lengths(torch.tensor([16000, 9000]), model.conv_layers)
    assert out["x"].shape == (2, int(frames[0]), 32) and len(out["layer_results"]) == 3
    assert out["padding_mask"].sum(1).tolist() == [0, int(frames[0] - frames[1])]
    # attention never looks at padded frames: with the positional convs (which do reach across the
    # boundary) silenced, changing the padded frames leaves every valid frame unchanged
    with torch.no_grad():
        for conv in model.encoder.pos_conv:
            conv[0].weight.zero_()
    features = torch.randn(2, int(frames[0]), 32)
    changed = features.clone()
    changed[1, int(frames[1]):] = torch.randn(int(frames[0] - frames[1]), 32) * 10
    first = model.encoder(features, out["padding_mask"])["x"]
    second = model.encoder(changed, out["padding_mask"])["x"]
    assert torch.allclose(first[:, : int(frames[1])], second[:, : int(frames[1])], atol=1e-5)
    assert torch.equal(first[0], second[0])


def test_student_sees_only_the_unmasked_frames():
    model = data2vec2().eval()
    features = torch.randn(3, 40, 32)
    mask = torch.zeros(3, 40, dtype=torch.bool)
    mask[0, 5:15] = mask[1, 20:30] = mask[2, ::4] = True
    out = model.encoder(features, mask=mask)
    assert out["x"].shape == (3, 30, 32)
    for row in range(3):
        assert out["keep"][row].tolist() == (~mask[row]).nonzero().flatten().tolist()


def test_targets_average_the_instance_normalised_top_layers():
    layers = [torch.randn(2, 50, 8) * (i + 1) + i for i in range(4)]
    targets = instance_norm_average(layers, 2, True)
    expected = sum(F.instance_norm(t.transpose(1, 2)).transpose(1, 2) for t in layers[-2:]) / 2
    assert torch.allclose(targets, expected, atol=1e-6)
    assert targets.dtype == torch.float32
    assert targets.mean(1).abs().max() < 1e-5  # every channel of every utterance is centred over time


def test_ema_teacher_update_and_decay_annealing():
    model = data2vec2().train()
    assert model.ema_decay_at(0) == pytest.approx(0.9) and model.ema_decay_at(5) == pytest.approx(0.945)
    assert model.ema_decay_at(10) == model.ema_decay_at(100) == pytest.approx(0.99)
    assert not hasattr(model.ema.model, "decoder")
    start = dict(model.ema.fp32_params)
    start = {k: v.clone() for k, v in start.items()}
    model.set_num_updates(0)  # update 0: the teacher is the initial student, nothing to average yet
    assert all(torch.equal(start[k], v) for k, v in model.ema.fp32_params.items())
    with torch.no_grad():
        for p in model.encoder.parameters():
            p.mul_(2.0)
    model.set_num_updates(3)
    key = "encoder.blocks.2.mlp.fc1.weight"
    student = dict(model.named_parameters())[key].detach()
    expected = 0.927 * start[key] + 0.073 * student
    assert torch.allclose(model.ema.fp32_params[key], expected, atol=1e-6)
    model.set_num_updates(3)  # the same update again (e.g. a retried batch) does not step twice
    assert torch.allclose(model.ema.fp32_params[key], expected, atol=1e-6)
    assert model.teacher_updates.item() == 3


def test_state_dict_round_trip_keeps_the_teacher():
    model = data2vec2().train()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.5)
    model.set_num_updates(1)
    state = model.state_dict()
    copy = data2vec2()
    copy.load_state_dict(state, strict=True)
    assert copy.teacher_updates.item() == 1
    for key, value in model.ema.fp32_params.items():
        assert torch.equal(copy.ema.fp32_params[key], value)
    teacher = dict(copy.ema.model.named_parameters())
    assert torch.equal(teacher["encoder.prenet_norm.weight"], model.ema.fp32_params["encoder.prenet_norm.weight"])
    del state["_ema"]
    with pytest.raises(KeyError, match="_ema"):
        data2vec2().load_state_dict(state)


def test_fine_tuning_masks_keep_full_length():
    model = data2vec2(mask_prob=0.65, mask_length=5, mask_channel_prob=0.25, mask_channel_length=4).train()
    source = torch.randn(2, 32000)
    out = model.extract_features(source, mask=True)
    mask = out["mask"]
    assert out["x"].shape[1] == mask.shape[1] == 99
    assert mask.sum(1).eq(mask[0].sum()).all()  # fairseq's require_same_masks
    # masked channels are zeroed for every frame: the encoder input differs from the unmasked one
    assert not torch.allclose(out["x"], model.extract_features(source, mask=False)["x"])


@pytest.mark.parametrize("fields", [
    dict(),  # data2vec 2.0: static spans, min_masks 1
    dict(mask_selection="uniform", mask_other=2.0, mask_min_masks=2, no_mask_overlap=True, mask_min_space=2),
    dict(mask_selection="normal", mask_other=1.0, require_same_masks=False),
])
def test_fine_tuning_time_mask_is_fairseqs_compute_mask_indices(fields):
    """The mask is wav2vec2_span_mask (tested against fairseq's compute_mask_indices) under the config's fields."""
    model = data2vec2(mask_prob=0.65, mask_length=5, **fields).train()
    source, padding = torch.randn(3, 32000), torch.zeros(3, 32000, dtype=torch.bool)
    padding[1, 24000:] = True
    torch.manual_seed(5)
    out = model.extract_features(source, padding_mask=padding, mask=True)
    torch.manual_seed(5)
    expected = wav2vec2_span_mask(
        3, 99, 0.65, 5, mask_type=fields.get("mask_selection", "static"), mask_other=fields.get("mask_other", 0.0),
        min_masks=fields.get("mask_min_masks", 1), no_overlap=fields.get("no_mask_overlap", False),
        min_space=fields.get("mask_min_space", 1), same_count=fields.get("require_same_masks", True),
        padding_mask=out["padding_mask"],
    )
    assert out["padding_mask"][1].any() and not (out["mask"] & out["padding_mask"]).any()
    assert torch.equal(out["mask"], expected)


def test_unequal_mask_counts_fail_clearly():
    model = data2vec2().eval()
    mask = torch.zeros(2, 20, dtype=torch.bool)
    mask[0, :5] = True
    with pytest.raises(ValueError, match="same number of frames"):
        model.encoder(torch.randn(2, 20, 32), mask=mask)


@pytest.mark.parametrize("per_layer", [False, True])
def test_alibi_bias_is_built_once_per_forward_in_the_attention_dtype(per_layer):
    encoder = data2vec2(learned_alibi_scale_per_layer=per_layer).encoder
    with torch.no_grad():
        encoder.alibi_scale.uniform_(0.5, 2.0)
    positions = torch.arange(7).expand(2, -1)
    padding = torch.zeros(2, 1, 1, 7).masked_fill(torch.arange(7) >= 5, float("-inf"))
    alibi = encoder.alibi_bias(positions)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        biases = encoder.layer_biases(alibi, padding, torch.bfloat16)
    assert len(biases) == 4 and all(b.dtype == torch.bfloat16 for b in biases)
    # a shared scale gives one tensor for every layer (fairseq builds it once), a per-layer scale one each
    assert len({id(b) for b in biases}) == (4 if per_layer else 1)
    for layer, bias in enumerate(biases):
        scale = encoder.alibi_scale[layer if per_layer else 0].clamp(min=0).view(1, -1, 1, 1)
        assert torch.equal(bias, (alibi * scale + padding).to(torch.bfloat16))
