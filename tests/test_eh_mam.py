"""EH-MAM pieces on small inputs: the easy-to-hard mask, the ranking loss, the schedule and the teacher."""

import pytest
import torch

from maskssl_fairseq.masking import block_mask, easy_to_hard_mask
from maskssl_fairseq.models.eh_mam import EhMamConfig, EhMamModel
from maskssl_fairseq.modules.loss_predictor import pairwise_ranking_loss

TINY = dict(
    embed_dim=32, num_heads=4, depth=2, prenet_depth=1, average_top_k_layers=2,
    feature_encoder_spec="[(32, 10, 5)] + [(32, 3, 2)] * 4 + [(32, 2, 2)] * 2",
    conv_pos_depth=2, conv_pos_width=10, conv_pos_groups=4, decoder_dim=16, decoder_groups=4, decoder_layers=2,
    hard_fraction_ramp_updates=100, layerdrop=0.0, prenet_layerdrop=0.0,
)


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- the mask

def test_hard_fraction_zero_is_data2vec2_block_masking():
    batch, length = 4000, 120
    scores = torch.randn(batch, length, generator=seeded(1))
    ours = easy_to_hard_mask(scores, 0.5, 5, 0.0, generator=seeded(2))
    # the data2vec 2.0 baseline's mask, bit for bit, padded or not
    assert torch.equal(ours, block_mask(batch, length, 0.5, block=5, adjust=0.05, generator=seeded(2)))
    lengths = torch.tensor([120, 90, 101])
    padding = torch.arange(length).unsqueeze(0) >= lengths.unsqueeze(1)
    assert torch.equal(easy_to_hard_mask(scores[:3], 0.5, 5, 0.0, generator=seeded(3), padding_mask=padding),
                       block_mask(3, length, 0.5, padding_mask=padding, generator=seeded(3)))
    assert ours.sum(1).eq(60).all()
    # and it ignores the scores: frames with the top score are masked no more often than others
    top = scores.argmax(1)
    assert abs(ours[torch.arange(batch), top].float().mean() - 0.5) < 0.05


def test_start_selection_starts_hard_spans_on_the_top_scored_frames():
    length, span = 200, 5
    scores = torch.rand(3, length, generator=seeded(4))
    peaks = torch.tensor([[10, 50, 90, 130, 170, 30], [5, 60, 100, 150, 180, 77], [0, 40, 80, 120, 160, 190]])
    scores.scatter_(1, peaks, torch.arange(10.0, 16.0).expand(3, -1))
    mask_prob = 0.3  # 60 frames: a budget of 12 spans, 6 of them hard at hard_fraction 0.5
    mask = easy_to_hard_mask(scores, mask_prob, span, 0.5, hard_selection="start", generator=seeded(5))
    assert mask.sum(1).eq(60).all()
    for row in range(3):
        for start in peaks[row].tolist():
            first = min(start, length - span)  # a span that would cross the end starts where it fits
            assert mask[row, first:first + span].all(), (row, start)
    # with hard_fraction 1 every span of the budget starts on a top-12 frame
    scores = torch.rand(2, length, generator=seeded(6))
    mask = easy_to_hard_mask(scores, mask_prob, span, 1.0, hard_selection="start", generator=seeded(7))
    for row in range(2):
        top = scores[row, : length - span + 1].topk(12).indices
        covered = torch.zeros(length, dtype=torch.bool)
        for start in top.tolist():
            covered[start:start + span] = True
        assert mask[row][covered].all()


@pytest.mark.parametrize("hard_fraction", [0.0, 0.3, 0.7, 1.0])
@pytest.mark.parametrize("mask_prob", [0.0, 0.2, 0.5, 0.8])
def test_equal_counts_and_padding_never_masked(hard_fraction, mask_prob):
    lengths = torch.tensor([97, 60, 73, 41, 97])
    padding = torch.arange(97).unsqueeze(0) >= lengths.unsqueeze(1)
    scores = torch.randn(5, 97, generator=seeded(8)).masked_fill(padding, 100.0)  # padding scored hardest
    mask = easy_to_hard_mask(scores, mask_prob, 5, hard_fraction, generator=seeded(9), padding_mask=padding)
    assert mask.dtype == torch.bool and mask.shape == (5, 97)
    assert mask.sum(1).tolist() == [int(mask_prob * 41)] * 5
    assert not (mask & padding).any()


def test_clones_share_hard_starts_and_draw_their_own_random_spans():
    clones, length = 4, 150
    scores = torch.rand(2, length, generator=seeded(10)).repeat_interleave(clones, 0)
    mask = easy_to_hard_mask(scores, 0.5, 5, 0.4, hard_selection="start", generator=seeded(11))
    hard = easy_to_hard_mask(scores, 0.5, 5, 0.4, hard_selection="start", generator=seeded(12)) & mask
    for utterance in range(2):
        rows = mask[utterance * clones:(utterance + 1) * clones]
        shared = rows.all(0)
        top = scores[utterance * clones].topk(int(0.4 * 75 / 5 + 0.5)).indices
        assert shared[top].all()  # the hard starts are masked in every clone
        assert len({tuple(r.nonzero().flatten().tolist()) for r in rows}) == clones  # random parts differ
    assert hard.any()


def test_seeded_and_reproducible():
    scores = torch.randn(3, 80, generator=seeded(13))
    first = easy_to_hard_mask(scores, 0.5, 5, 0.5, generator=seeded(14))
    again = easy_to_hard_mask(scores, 0.5, 5, 0.5, generator=seeded(14))
    other = easy_to_hard_mask(scores, 0.5, 5, 0.5, generator=seeded(15))
    assert torch.equal(first, again) and not torch.equal(first, other)


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="hard_fraction"):
        easy_to_hard_mask(torch.zeros(2, 10), 0.5, 5, 1.5)
    with pytest.raises(ValueError, match="scores"):
        easy_to_hard_mask(torch.zeros(10), 0.5, 5, 0.5)


# ---------------------------------------------------------------- the ranking loss

def test_ranking_loss_matches_a_direct_computation():
    predicted = torch.tensor([[0.3, -1.2, 0.8, 0.1], [2.0, 0.5, 0.5, -0.4]], requires_grad=True)
    actual = torch.tensor([[1.0, 3.0, 2.0, 2.0], [0.2, 0.9, 0.4, 0.1]])
    loss, accuracy = pairwise_ranking_loss(predicted, actual)

    total, pairs, correct = 0.0, 0, 0
    for b in range(2):
        for i in range(4):
            for j in range(4):
                if actual[b, i] == actual[b, j]:
                    continue  # ties and the diagonal are ignored
                label = 1.0 if actual[b, i] > actual[b, j] else 0.0
                s = torch.sigmoid(predicted[b, i] - predicted[b, j]).item()
                total += -(label * torch.log(torch.tensor(s)) + (1 - label) * torch.log(torch.tensor(1 - s))).item()
                pairs += 1
                correct += int((s > 0.5) == (label == 1.0))
    assert pairs == 22
    assert loss.item() == pytest.approx(total / pairs, rel=1e-5)
    assert accuracy.item() == pytest.approx(correct / pairs)
    loss.backward()
    assert predicted.grad.abs().sum() > 0


def test_ranking_loss_is_fp32_for_half_inputs():
    predicted = torch.randn(2, 6, dtype=torch.bfloat16)
    loss, accuracy = pairwise_ranking_loss(predicted, torch.randn(2, 6, dtype=torch.bfloat16))
    assert loss.dtype == torch.float32 and accuracy.dtype == torch.float32


# ---------------------------------------------------------------- model: schedule, teacher, losses

def test_hard_fraction_schedule_follows_num_updates():
    model = EhMamModel(EhMamConfig(**TINY, hard_fraction_start=0.1, hard_fraction_end=0.7))
    assert model.hard_fraction(0) == pytest.approx(0.1)
    assert model.hard_fraction(50) == pytest.approx(0.4)
    assert model.hard_fraction(100) == pytest.approx(0.7) and model.hard_fraction(500) == pytest.approx(0.7)
    model.set_num_updates(25)
    assert model.hard_fraction() == pytest.approx(0.25)
    constant = EhMamModel(EhMamConfig(**TINY, hard_fraction_schedule="constant", hard_fraction_end=1.0))
    assert constant.hard_fraction(0) == constant.hard_fraction(1000) == 1.0


def test_teacher_holds_the_loss_predictor_and_not_the_decoder():
    model = EhMamModel(EhMamConfig(**TINY))
    teacher = model.ema.model
    assert hasattr(teacher, "loss_predictor") and hasattr(teacher, "encoder")
    assert not hasattr(teacher, "decoder") and not hasattr(teacher, "feature_extractor")
    keys = set(model.ema.fp32_params)
    assert any(k.startswith("loss_predictor.") for k in keys)
    assert not any(k.startswith(("decoder.", "feature_extractor.", "project_features.")) for k in keys)
    # one EMA step moves the teacher's predictor towards the student's
    with torch.no_grad():
        for p in model.loss_predictor.parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in model.ema.fp32_params.items()}
    model.train()
    model.set_num_updates(1)
    decay = model.ema.get_decay()
    student = dict(model.named_parameters())
    for key in ("loss_predictor.proj.weight", "encoder.blocks.0.attn.qkv.weight"):
        expected = decay * before[key] + (1 - decay) * student[key].detach()
        assert torch.allclose(model.ema.fp32_params[key], expected, atol=1e-6)
        assert torch.allclose(dict(model.ema.model.named_parameters())[key], expected, atol=1e-6)


def test_eh_mam_off_is_data2vec2():
    model = EhMamModel(EhMamConfig(**TINY, ranking_loss_weight=0.0, hard_fraction_end=0.0))
    assert model.loss_predictor is None and not hasattr(model.ema.model, "loss_predictor")
    model.train()
    out = model(torch.randn(2, 16000, generator=seeded(16)))
    assert set(out["losses"]) == {"regression"} and out["hard_fraction"] == 0.0


def test_forward_returns_both_losses_and_the_logs():
    model = EhMamModel(EhMamConfig(**TINY, hard_fraction_start=0.5, clone_batch=2))
    model.train()
    source = torch.randn(3, 16000, generator=seeded(17))
    padding = torch.zeros(3, 16000, dtype=torch.bool)
    padding[2, 11000:] = True
    out = model(source, padding_mask=padding)
    frames = (11000 - 400) // 320 + 1  # the padded row's valid frames (CNN receptive field 400, hop 320)
    assert out["sample_size"] == 6 * int(0.5 * frames)
    assert out["losses"]["regression"].shape == (int(out["sample_size"]), 32)
    assert out["losses"]["ranking"].dim() == 0
    assert out["hard_fraction"] == pytest.approx(0.5)
    assert 0 <= float(out["ranking_accuracy"]) <= 1
    total = out["losses"]["regression"].sum() + out["losses"]["ranking"]
    total.backward()
    assert model.loss_predictor.proj.weight.grad.abs().sum() > 0
    assert model.feature_extractor.conv_layers[0][0].weight.grad.abs().sum() > 0


def test_trains_in_bfloat16_with_an_fp32_ranking_loss():
    # fairseq's --bf16 casts the student; the teacher follows on first use, its EMA master stays fp32
    model = EhMamModel(EhMamConfig(**TINY, hard_fraction_start=0.5)).to(torch.bfloat16).train()
    out = model(torch.randn(2, 16000, generator=seeded(18)).to(torch.bfloat16))
    assert next(model.ema.model.parameters()).dtype == torch.bfloat16
    assert all(v.dtype == torch.float32 for v in model.ema.fp32_params.values() if v.is_floating_point())
    assert out["losses"]["ranking"].dtype == torch.float32 and out["losses"]["regression"].dtype == torch.float32
    total = out["losses"]["regression"].sum() + out["losses"]["ranking"]
    assert torch.isfinite(total)
    total.backward()
    model.set_num_updates(1)
    assert torch.isfinite(model.ema.fp32_params["loss_predictor.proj.weight"]).all()
