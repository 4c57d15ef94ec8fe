"""data2vec 2.0's 1-D block mask against fairseq's own ``compute_block_mask_1d`` (inverse_mask false)."""

import pytest
import torch
from fairseq.data.data_utils import compute_block_mask_1d

from maskssl_fairseq.masking import block_mask, inverse_block_mask


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def runs(mask: torch.Tensor) -> torch.Tensor:
    """Number of contiguous True runs per row."""
    return (mask[:, 1:] & ~mask[:, :-1]).sum(1) + mask[:, 0].long()


def per_row_statistics(mask: torch.Tensor) -> dict:
    """Per-row values whose means are compared: where frames are masked and how the runs look."""
    middle = mask.size(1) // 2
    return {
        "first frame masked": mask[:, 0].float(),
        "last frame masked": mask[:, -1].float(),
        "middle frames masked": mask[:, middle - 5:middle + 5].float().mean(1),
        "visible runs": runs(~mask).float(),
        "mean masked run": mask.sum(1).float() / runs(mask).float(),
    }


@pytest.mark.parametrize("length", [250, 97])
def test_statistics_match_fairseq_compute_block_mask_1d(length):
    rows = 2000
    torch.manual_seed(length)  # fairseq draws from torch's global generator
    reference = compute_block_mask_1d((rows, length), 0.5, 5, mask_prob_adjust=0.05, inverse_mask=False,
                                      require_same_masks=True).bool()
    ours = block_mask(rows, length, 0.5, block=5, adjust=0.05, generator=seeded(length))
    assert ours.sum(1).eq(int(0.5 * length)).all() and reference.sum(1).eq(int(0.5 * length)).all()
    theirs_stats, our_stats = per_row_statistics(reference), per_row_statistics(ours)
    for name, theirs in theirs_stats.items():
        mine = our_stats[name]
        noise = ((theirs.var() + mine.var()) / rows).sqrt()
        print(f"T={length} {name}: fairseq {theirs.mean():.3f} ours {mine.mean():.3f} (+-{noise:.3f})")
        assert abs(float(mine.mean() - theirs.mean())) < 4.5 * float(noise) + 1e-6, name
    # the first frame is masked far more often than span masking's 0.14 (blocks are clamped, not cut)
    assert our_stats["first frame masked"].mean() > 0.3


def test_counts_padding_and_determinism():
    lengths = torch.tensor([100, 80, 61, 100])
    padding = torch.arange(100).unsqueeze(0) >= lengths.unsqueeze(1)
    mask = block_mask(4, 100, 0.5, padding_mask=padding, generator=seeded(1))
    assert mask.sum(1).tolist() == [30] * 4
    assert not (mask & padding).any()
    assert torch.equal(mask, block_mask(4, 100, 0.5, padding_mask=padding, generator=seeded(1)))
    assert not torch.equal(mask, block_mask(4, 100, 0.5, padding_mask=padding, generator=seeded(2)))
    # blocks are clamped to each row's own end: a short row's last frame is masked as often as its first
    many = 4000
    lengths = torch.tensor([100, 60]).repeat(many // 2)
    padding = torch.arange(100).unsqueeze(0) >= lengths.unsqueeze(1)
    mask = block_mask(many, 100, 0.5, padding_mask=padding, generator=seeded(3)).float()
    assert abs(mask[1::2, 59].mean() - mask[1::2, 0].mean()) < 0.05 and mask[1::2, 59].mean() > 0.3
    assert abs(mask[0::2, 99].mean() - mask[0::2, 0].mean()) < 0.05


@pytest.mark.parametrize("length,prob", [(1, 0.5), (3, 0.5), (10, 0.0), (10, 1.0), (499, 0.65)])
def test_exact_counts_on_edge_cases(length, prob):
    assert block_mask(5, length, prob, generator=seeded()).sum(1).tolist() == [int(prob * length)] * 5


def test_blocks_are_the_masked_frames():
    # with few centres and no adjust, blocks do not meet: every masked run is one whole block
    mask = block_mask(500, 1000, 0.02, block=5, adjust=0.0, generator=seeded(4))
    isolated = runs(mask) == 4  # 20 frames, 4 centres: no overlap, no top-up
    assert isolated.float().mean() > 0.85
    starts = (mask[:, 1:] & ~mask[:, :-1])
    ends = (mask[:, :-1] & ~mask[:, 1:])
    inner = isolated & ~mask[:, 0] & ~mask[:, -1]
    lengths_of_runs = ends[inner].nonzero()[:, 1] - starts[inner].nonzero()[:, 1]
    assert lengths_of_runs.eq(5).float().mean() > 0.99


def test_inverse_block_mask_is_the_same_draw_with_roles_swapped():
    # the 1-D inverse mask reveals blocks: its visible runs look like block_mask's masked runs
    inverse = ~inverse_block_mask(2000, (250,), 0.5, block=5, adjust=0.05, generator=seeded(5))
    direct = block_mask(2000, 250, 0.5, block=5, adjust=0.05, generator=seeded(6))
    assert abs(float(runs(inverse).float().mean() - runs(direct).float().mean())) < 0.5
    assert abs(float(inverse[:, 0].float().mean() - direct[:, 0].float().mean())) < 0.05


def test_bad_arguments_fail_clearly():
    with pytest.raises(ValueError, match="mask_prob"):
        block_mask(2, 10, 1.5)
    with pytest.raises(ValueError, match="block"):
        block_mask(2, 10, 0.5, block=0)
    with pytest.raises(ValueError, match="adjust"):
        block_mask(2, 10, 0.5, adjust=-0.1)
