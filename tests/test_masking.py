"""The masking library: exact equal counts, determinism, and the statistics each strategy promises."""

import pytest
import torch

from maskssl_fairseq.masking import (
    dispersion_weighted_mask,
    hint_ratio,
    informed_mask,
    inverse_block_mask,
    masked_count,
    patch_dispersion,
    random_mask,
    span_mask,
)
from maskssl_fairseq.masking.dispersion import exchange_hints, weighted_sample_mask


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def assert_exact(mask: torch.Tensor, batch: int, length: int, count: int) -> None:
    assert mask.dtype == torch.bool and mask.shape == (batch, length)
    assert mask.sum(dim=1).tolist() == [count] * batch


# ---------------------------------------------------------------- counts and determinism, every strategy

def patch_strategies():
    """(name, draw(generator, batch, length, ratio)) for every strategy with a ``mask_ratio``."""
    return [
        ("random", lambda g, b, n, r: random_mask(b, n, r, generator=g)),
        ("ibm_1d", lambda g, b, n, r: inverse_block_mask(b, (n,), r, generator=g)),
        ("dwm", lambda g, b, n, r: dispersion_weighted_mask(torch.randn(b, n, 16, generator=g), r, 0.0, generator=g)),
        ("dwm_hint", lambda g, b, n, r: dispersion_weighted_mask(torch.rand(b, n, 16, generator=g), r, 0.5, generator=g)),
        ("sgim", lambda g, b, n, r: informed_mask(torch.randn(b, n, 8, generator=g), r, 0.5, generator=g)),
    ]


@pytest.mark.parametrize("name,draw", patch_strategies(), ids=[n for n, _ in patch_strategies()])
@pytest.mark.parametrize("length", [1, 7, 190, 512])
@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.7, 0.75, 0.8, 1.0])
def test_exact_equal_counts(name, draw, length, ratio):
    mask = draw(seeded(), 6, length, ratio)
    assert_exact(mask, 6, length, masked_count(length, ratio))


@pytest.mark.parametrize("shape", [(5, 38), (8, 64), (64, 8), (1, 10), (3, 3), (2, 1)])
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.7, 0.8, 1.0])
@pytest.mark.parametrize("block", [1, 3, 5])
def test_inverse_block_mask_counts_on_grids(shape, ratio, block):
    length = shape[0] * shape[1]
    mask = inverse_block_mask(5, shape, ratio, block=block, generator=seeded())
    assert_exact(mask, 5, length, masked_count(length, ratio))


def test_paper_counts():
    # M2D: 57 of 190 patches visible at 0.7; EAT: 102 of 512 visible at 0.8; MSM-MAE: 0.75 of 190
    assert masked_count(190, 0.7) == 133
    assert masked_count(512, 0.8) == 410
    assert masked_count(190, 0.75) == 143
    # no floating-point surprises: 1 - 0.9 is 0.0999..., still 10 of 100 visible
    assert masked_count(100, 0.9) == 90 and masked_count(100, 0.91) == 91


@pytest.mark.parametrize("name,draw", patch_strategies(), ids=[n for n, _ in patch_strategies()])
def test_seeded_generator_is_deterministic(name, draw):
    first, again, other = (draw(seeded(s), 4, 190, 0.7) for s in (3, 3, 4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_2d_block_and_span_masks_are_deterministic():
    assert torch.equal(inverse_block_mask(4, (5, 38), 0.7, generator=seeded(1)),
                       inverse_block_mask(4, (5, 38), 0.7, generator=seeded(1)))
    assert torch.equal(span_mask(4, 100, 0.65, 10, generator=seeded(1)), span_mask(4, 100, 0.65, 10, generator=seeded(1)))


def test_rows_differ_within_a_batch():
    for mask in (random_mask(8, 190, 0.7, generator=seeded()),
                 inverse_block_mask(8, (5, 38), 0.7, generator=seeded()),
                 dispersion_weighted_mask(torch.randn(8, 190, 256, generator=seeded()), 0.7, 0.0, generator=seeded())):
        assert len({tuple(row.tolist()) for row in mask}) == 8


def test_masks_follow_the_generator_device():
    generator = seeded()
    assert random_mask(2, 10, 0.5, generator=generator).device == generator.device
    assert inverse_block_mask(2, (2, 5), 0.5, generator=generator).device == generator.device


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_ratios_outside_unit_interval_are_rejected(bad):
    with pytest.raises(ValueError, match="mask_ratio"):
        random_mask(2, 10, bad)
    with pytest.raises(ValueError, match="mask_ratio"):
        inverse_block_mask(2, (10,), bad)
    with pytest.raises(ValueError, match="hint_ratio"):
        dispersion_weighted_mask(torch.rand(2, 10, 4), 0.5, bad)


def test_bad_shapes_are_rejected():
    with pytest.raises(ValueError, match="shape"):
        inverse_block_mask(2, (2, 3, 4), 0.5)
    with pytest.raises(ValueError, match="block"):
        inverse_block_mask(2, (10,), 0.5, block=0)
    with pytest.raises(ValueError, match="patches"):
        dispersion_weighted_mask(torch.rand(2, 10), 0.5, 0.0)


# ---------------------------------------------------------------- random masking

def test_random_mask_is_uniform_over_positions():
    mask = random_mask(4000, 20, 0.7, generator=seeded())
    frequency = mask.float().mean(dim=0)
    assert torch.allclose(frequency, torch.full_like(frequency, 0.7), atol=0.03)


# ---------------------------------------------------------------- inverse block masking

def neighbour_agreement(visible: torch.Tensor, shape) -> float:
    """Share of visible positions whose right-hand neighbour (along the last axis) is visible too."""
    grid = visible.view(visible.shape[0], *shape)
    left, right = grid[..., :-1], grid[..., 1:]
    return float((left & right).sum() / left.sum().clamp(min=1))


@pytest.mark.parametrize("shape", [(5, 38), (8, 64), (300,)])
def test_inverse_block_visible_positions_form_blocks(shape):
    length = torch.Size(shape).numel()
    blocks = ~inverse_block_mask(500, shape, 0.7, generator=seeded())
    scattered = ~random_mask(500, length, 0.7, generator=seeded())
    # scattered visible positions have a visible neighbour about 30% of the time; blocks mostly do
    assert neighbour_agreement(scattered, shape) < 0.35
    assert neighbour_agreement(blocks, shape) > 0.5


def test_inverse_block_with_one_centre_reveals_a_full_square():
    # a 10x10 grid, 9 visible: (9 + 0) / 3^2 = 1 centre of a 3x3 block, which is the whole visible set
    for row in ~inverse_block_mask(200, (10, 10), 0.91, block=3, adjust=0.0, generator=seeded()):
        grid = row.view(10, 10)
        rows, cols = grid.any(dim=1).nonzero().flatten(), grid.any(dim=0).nonzero().flatten()
        if 1 <= rows.min() and rows.max() <= 8 and 1 <= cols.min() and cols.max() <= 8:  # away from the edges
            assert rows.max() - rows.min() == 2 and cols.max() - cols.min() == 2


# ---------------------------------------------------------------- dispersion-weighted masking

def test_patch_dispersion_is_mean_absolute_deviation():
    patches = torch.tensor([[[1.0, 1.0, 1.0, 1.0], [0.0, 2.0, 0.0, 2.0], [0.0, 0.0, 0.0, 4.0]]])
    assert torch.allclose(patch_dispersion(patches), torch.tensor([[0.0, 1.0, 1.5]]) + 1e-12)


def test_weighted_sampling_matches_multinomial_without_replacement():
    weights = torch.tensor([1.0, 2.0, 3.0, 10.0])
    draws = 20000
    ours = weighted_sample_mask(weights.expand(draws, 4), 2, seeded()).float().mean(dim=0)
    picks = torch.multinomial(weights.expand(draws, 4), 2, replacement=False, generator=seeded(1))
    reference = torch.zeros(draws, 4).scatter_(1, picks, 1.0).mean(dim=0)
    assert torch.allclose(ours, reference, atol=0.02)


def busy_and_flat_patches(batch: int, generator: torch.Generator) -> torch.Tensor:
    """[batch, 40, 64]: patches 0-19 spectrally busy (large MAD), 20-39 nearly flat."""
    busy = torch.randn(batch, 20, 64, generator=generator) * 3.0
    flat = torch.randn(batch, 20, 64, generator=generator) * 0.05 + 2.0
    return torch.cat([busy, flat], dim=1)


def test_dwm_masks_high_dispersion_patches_more_often():
    generator = seeded()
    mask = dispersion_weighted_mask(busy_and_flat_patches(2000, generator), 0.5, 0.0, generator=generator).float()
    busy_rate, flat_rate = mask[:, :20].mean(), mask[:, 20:].mean()
    # 20 of 40 masked: almost all busy ones go first, as the weights differ about 60-fold
    assert busy_rate > 0.9 and flat_rate < 0.1


def test_dwm_hints_move_the_mask_towards_random():
    generator = seeded()
    patches = busy_and_flat_patches(2000, generator)
    busy_rates = [float(dispersion_weighted_mask(patches, 0.5, h, generator=generator)[:, :20].float().mean())
                  for h in (0.0, 0.5, 1.0)]
    assert busy_rates[0] > busy_rates[1] > busy_rates[2]


def test_dwm_with_hint_ratio_one_is_uniform_random():
    generator = seeded()
    patches = busy_and_flat_patches(6000, generator)
    frequency = dispersion_weighted_mask(patches, 0.7, 1.0, generator=generator).float().mean(dim=0)
    uniform = random_mask(6000, 40, 0.7, generator=generator).float().mean(dim=0)
    # per-position masking frequency is 0.7 everywhere, like random masking; binomial sd is about 0.006
    assert torch.allclose(frequency, torch.full_like(frequency, 0.7), atol=0.025)
    assert abs(frequency[:20].mean() - frequency[20:].mean()) < 0.02
    assert abs(float(frequency.std()) - float(uniform.std())) < 0.006


def test_hint_exchange_keeps_counts_and_swaps_the_promised_share():
    generator = seeded()
    initial = random_mask(50, 100, 0.6, generator=generator)
    exchanged = exchange_hints(initial, 0.5, generator)
    assert_exact(exchanged, 50, 100, 60)
    # 30 revealed, then 30 drawn from the 40 visible + 30 revealed: some revealed ones come back masked
    kept = (initial & exchanged).sum(dim=1).float()
    assert kept.min() >= 30 and 30 < kept.mean() < 45
    assert torch.equal(exchange_hints(initial, 0.0, generator), initial)


def test_dwm_accepts_half_precision_patches():
    patches = torch.randn(3, 190, 256, generator=seeded()).to(torch.bfloat16)
    assert_exact(dispersion_weighted_mask(patches, 0.7, 0.3, generator=seeded()), 3, 190, 133)


def test_dwm_handles_all_flat_patches():
    # zero dispersion everywhere (silence, padding): the epsilon keeps every patch drawable
    assert_exact(dispersion_weighted_mask(torch.zeros(4, 190, 256), 0.7, 0.0, generator=seeded()), 4, 190, 133)


# ---------------------------------------------------------------- self-guided informed masking (SGIM)

def test_sgim_masks_the_tokens_that_fit_neither_cluster():
    generator = seeded()
    base = torch.randn(2, 16, generator=generator) * 5  # two cluster directions
    members = base.repeat_interleave(15, dim=0) + 0.1 * torch.randn(30, 16, generator=generator)
    outliers = torch.randn(10, 16, generator=generator) * 5
    features = torch.cat([members, outliers]).expand(50, -1, -1)  # [50, 40, 16]; positions 30-39 are outliers
    mask = informed_mask(features, 0.25, 0.0, generator=generator)  # 10 of 40 masked
    assert mask[:, 30:].float().mean() > 0.8
    hinted = informed_mask(features, 0.25, 1.0, generator=generator).float().mean(dim=0)
    assert hinted[30:].mean() < 0.5  # hint ratio 1: random masking, outliers no longer preferred


# ---------------------------------------------------------------- hint-ratio schedule

def test_hint_schedule_endpoints_and_shape():
    assert hint_ratio(0.0) == 1.0
    assert hint_ratio(1.0) == 0.0
    assert hint_ratio(0.5) == pytest.approx(0.75)  # 1 - 0.5^2
    assert hint_ratio(-1.0) == 1.0 and hint_ratio(2.0) == 0.0  # clamped
    # a larger gamma stays closer to random masking (hint 1) for longer, as in the paper's Table III
    assert hint_ratio(0.5, gamma=1) < hint_ratio(0.5, gamma=2) < hint_ratio(0.5, gamma=4) < hint_ratio(0.5, gamma=8)
    values = [hint_ratio(i / 10) for i in range(11)]
    assert values == sorted(values, reverse=True)


def test_constant_hint_ratio():
    assert hint_ratio(0.0, constant=0.5) == hint_ratio(0.9, constant=0.5) == 0.5
    assert hint_ratio(0.3, constant=0.0) == 0.0
    with pytest.raises(ValueError):
        hint_ratio(0.3, constant=1.5)
    with pytest.raises(ValueError):
        hint_ratio(0.3, gamma=0.0)


# ---------------------------------------------------------------- span masking (wav2vec 2.0 / data2vec)

@pytest.mark.parametrize("length,prob,span", [(100, 0.65, 10), (49, 0.5, 5), (10, 0.9, 10), (3, 0.5, 5), (50, 0.0, 5)])
def test_span_mask_exact_equal_counts(length, prob, span):
    assert_exact(span_mask(7, length, prob, span, generator=seeded()), 7, length, int(prob * length))


def test_span_mask_uses_the_shortest_row_and_never_masks_padding():
    lengths = torch.tensor([100, 80, 60])
    padding = torch.arange(100).unsqueeze(0) >= lengths.unsqueeze(1)
    mask = span_mask(3, 100, 0.5, 5, padding_mask=padding, generator=seeded())
    assert mask.sum(dim=1).tolist() == [30, 30, 30]
    assert not (mask & padding).any()


def test_span_mask_masks_contiguous_spans():
    spans = span_mask(200, 200, 0.5, 10, generator=seeded())
    scattered = random_mask(200, 200, 0.5, generator=seeded())

    def masked_neighbour_share(mask):
        left, right = mask[:, :-1], mask[:, 1:]
        return float((left & right).sum() / left.sum())

    # a masked frame's right neighbour is masked about half the time when scattered, mostly within spans
    # (the exact-count trim of overlapping spans cuts a few of them)
    assert masked_neighbour_share(scattered) < 0.55
    assert masked_neighbour_share(spans) > 0.8


def test_span_mask_rejects_bad_arguments():
    with pytest.raises(ValueError, match="mask_prob"):
        span_mask(2, 10, 1.5, 2)
    with pytest.raises(ValueError, match="span"):
        span_mask(2, 10, 0.5, 0)
    with pytest.raises(ValueError, match="padding_mask"):
        span_mask(2, 10, 0.5, 2, padding_mask=torch.zeros(2, 9, dtype=torch.bool))
