"""easy_to_hard_mask's choice of hard spans: greedy non-overlapping windows ("window") or top-scored starts ("start")."""

import pytest
import torch
import torch.nn.functional as F

from maskssl_fairseq.masking import easy_to_hard_mask


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def smoothed_noise(batch: int, length: int, width: int, generator: torch.Generator) -> torch.Tensor:
    """Uniform noise averaged over ``width`` frames: scores whose hard regions are ``width`` frames wide."""
    noise = torch.rand(batch, 1, length + width - 1, generator=generator)
    return F.avg_pool1d(noise, width, stride=1).squeeze(1)


def hard_share(mask: torch.Tensor, scores: torch.Tensor) -> float:
    """Share of the masked frames that lie in their row's top-scored half."""
    top = scores >= scores.median(dim=1, keepdim=True).values
    return float((mask & top).sum() / mask.sum())


def greedy_windows(row: torch.Tensor, valid_length: int, span: int, count: int) -> list:
    """Slow reference: the starts of the ``count`` best non-overlapping windows, best first."""
    chosen = []
    for _ in range(count):
        best, best_start = None, None
        for start in range(valid_length - span + 1):
            if any(abs(start - other) < span for other in chosen):
                continue
            score = row[start:start + span].sum()
            if best is None or score > best:
                best, best_start = score, start
        if best_start is None:
            break
        chosen.append(best_start)
    return chosen


@pytest.mark.parametrize("width, floor", [(1, 0.68), (7, 0.80), (25, 0.80)])
def test_windows_cover_the_top_scored_half(width, floor):
    generator = seeded(width)
    scores = smoothed_noise(16, 500, width, generator)
    assert hard_share(easy_to_hard_mask(scores, 0.5, 5, 1.0, generator=generator), scores) >= floor
    # start-on-top-frames (the official choice) stays well below, and no hard spans is random
    assert hard_share(easy_to_hard_mask(scores, 0.5, 5, 1.0, hard_selection="start", generator=generator),
                      scores) < 0.65
    assert abs(hard_share(easy_to_hard_mask(scores, 0.5, 5, 0.0, generator=generator), scores) - 0.5) < 0.03


@pytest.mark.parametrize("seed", range(4))
def test_windows_equal_a_direct_greedy_choice(seed):
    length, span, mask_prob = 60, 5, 0.5
    lengths = torch.tensor([60, 53, 60, 50])
    padding = torch.arange(length).unsqueeze(0) >= lengths.unsqueeze(1)
    scores = torch.rand(4, length, generator=seeded(seed)).masked_fill(padding, 10.0)  # padding is never hard
    count = int(mask_prob * 50)
    num_hard = count // span  # hard_fraction 1: the whole budget in windows
    mask = easy_to_hard_mask(scores, mask_prob, span, 1.0, generator=seeded(100 + seed), padding_mask=padding)
    for row in range(4):
        starts = greedy_windows(scores[row], int(lengths[row]), span, num_hard)
        assert len(starts) == num_hard
        expected = torch.zeros(length, dtype=torch.bool)
        for start in starts:
            expected[start:start + span] = True
        # the budget is a multiple of the span: the windows are the whole mask
        assert torch.equal(mask[row], expected), row


def test_windows_of_a_partial_hard_fraction_are_inside_the_mask():
    scores = torch.rand(3, 120, generator=seeded(5))
    mask = easy_to_hard_mask(scores, 0.5, 5, 0.6, generator=seeded(6))
    assert mask.sum(1).eq(60).all()
    for row in range(3):
        for start in greedy_windows(scores[row], 120, 5, int(0.6 * 60 / 5 + 0.5)):
            assert mask[row, start:start + 5].all(), (row, start)


def test_monotone_scores_mask_the_top_end():
    scores = torch.arange(100.0).expand(3, -1)
    mask = easy_to_hard_mask(scores, 0.5, 5, 1.0, generator=seeded(7))
    assert mask[:, 50:].all() and not mask[:, :50].any()
    # at a partial share the hard windows are the top end and the rest is elsewhere
    mask = easy_to_hard_mask(scores, 0.5, 5, 0.4, generator=seeded(8))
    assert mask[:, 80:].all() and mask.sum(1).eq(50).all()


def test_clones_share_their_windows_and_draw_their_own_random_spans():
    clones = 4
    scores = torch.rand(2, 150, generator=seeded(9)).repeat_interleave(clones, 0)
    mask = easy_to_hard_mask(scores, 0.5, 5, 0.4, generator=seeded(10))
    for utterance in range(2):
        rows = mask[utterance * clones:(utterance + 1) * clones]
        for start in greedy_windows(scores[utterance * clones], 150, 5, int(0.4 * 75 / 5 + 0.5)):
            assert rows[:, start:start + 5].all()
        assert len({tuple(r.nonzero().flatten().tolist()) for r in rows}) == clones


@pytest.mark.parametrize("selection", ["window", "start"])
@pytest.mark.parametrize("mask_prob", [0.2, 0.5, 0.8, 1.0])
def test_counts_padding_and_running_out_of_windows(selection, mask_prob):
    # at mask_prob 0.8 greedy windows can run out before the hard budget: random spans make up the rest
    lengths = torch.tensor([97, 60, 73, 41])
    padding = torch.arange(97).unsqueeze(0) >= lengths.unsqueeze(1)
    scores = torch.randn(4, 97, generator=seeded(11)).masked_fill(padding, 100.0)
    mask = easy_to_hard_mask(scores, mask_prob, 5, 1.0, hard_selection=selection, generator=seeded(12),
                             padding_mask=padding)
    assert mask.sum(1).tolist() == [int(mask_prob * 41)] * 4
    assert not (mask & padding).any()


def test_start_selection_keeps_the_official_hard_spans():
    """The official choice: spans from the top-scored allowed starts; recorded bit for bit (frame i = bit i)
    since the random part became data2vec 2.0's block masking."""
    scores = torch.rand(4, 60, generator=seeded(21))
    lengths = torch.tensor([60, 52, 60, 47])
    padding = torch.arange(60).unsqueeze(0) >= lengths.unsqueeze(1)
    recorded = {
        0.6: [0xf8783e0787c00, 0x1001ff83fe07, 0x7c003e00f80381f, 0x7fe0f907c820],
        1.0: [0x7cf8003e00e7c00, 0x3f001ff83e201, 0x7c007c00f8000ff, 0x7ff0f907c020],
    }
    count = int(0.5 * 47)
    for hard_fraction, rows in recorded.items():
        mask = easy_to_hard_mask(scores, 0.5, 5, hard_fraction, hard_selection="start", generator=seeded(22),
                                 padding_mask=padding)
        assert [sum(1 << i for i in row.nonzero().flatten().tolist()) for row in mask] == rows
        num_hard = min(int(hard_fraction * count / 5 + 0.5), count // 5)
        for row in range(4):
            allowed = int(lengths[row]) - 5 + 1
            for start in scores[row, :allowed].topk(num_hard).indices.tolist():
                assert mask[row, start:start + 5].all(), (hard_fraction, row, start)


def test_windows_follow_the_device():
    device = "cuda" if torch.cuda.is_available() else "cpu"
    generator = torch.Generator(device=device).manual_seed(13)
    scores = torch.rand(3, 80, device=device, generator=generator)
    mask = easy_to_hard_mask(scores, 0.5, 5, 0.7, generator=generator)
    assert mask.device == scores.device and mask.sum(1).eq(40).all()


def test_unknown_selection_fails_clearly():
    with pytest.raises(ValueError, match="hard_selection"):
        easy_to_hard_mask(torch.zeros(2, 10), 0.5, 5, 0.5, hard_selection="top")
