"""Hint-ratio schedules for informed masking (DWM, SGIM): how much of the mask is uniform random.

The DWM paper's Eq. 1 (after SemMAE) was lost from the paper text. Its stated behaviour fixes the form:
the hint ratio starts at 1.0 (random masking), is annealed to 0 (pure DWM) by the end of training, and a
larger scheduling parameter gamma keeps training closer to random masking (Table III: gamma = 8 matches
random masking on VC1). ``1 - progress ** gamma`` does all three; the paper uses gamma = 2.
"""

from typing import Optional


def hint_ratio(progress: float, gamma: float = 2.0, *, constant: Optional[float] = None) -> float:
    """Hint ratio at training ``progress`` in [0, 1] (updates done / total updates).

    Args:
        progress: clamped to [0, 1].
        gamma: the schedule's parameter; the paper's default is 2 (ablations: 1, 4, 8).
        constant: when given, returned as is (the paper's fixed 0.0 and 0.5 ablations).

    Returns:
        ``constant``, else ``1 - progress ** gamma``: 1 at the start, 0 at the end.
    """
    if constant is not None:
        if not 0.0 <= constant <= 1.0:
            raise ValueError(f"a constant hint ratio must be in [0, 1], got {constant}")
        return float(constant)
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    progress = min(max(float(progress), 0.0), 1.0)
    return 1.0 - progress ** gamma
