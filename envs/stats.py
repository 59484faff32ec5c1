"""Success rates with honest uncertainty."""

from __future__ import annotations

import math


def wilson_interval(successes: int, trials: int, z: float = 1.96) -> tuple[float, float]:
    """95% (z = 1.96) Wilson score interval for a binomial proportion.

    Unlike the normal approximation it stays inside [0, 1] and is sensible at 0% or 100%,
    which is exactly where experts and good policies live.
    """
    if trials <= 0:
        raise ValueError(f"trials must be positive, got {trials}")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must be in [0, {trials}], got {successes}")
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def format_rate(successes: int, trials: int) -> str:
    """'97.5% [94.3, 98.9] (195/200)'."""
    lo, hi = wilson_interval(successes, trials)
    return f"{100 * successes / trials:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}] ({successes}/{trials})"


def mcnemar_exact_p(gained: int, lost: int) -> float:
    """Two-sided exact McNemar p-value for two policies run on the same seeds.

    Only the discordant episodes (solved by one policy and not the other) carry evidence;
    under "no difference" each is equally likely to go either way, a Binomial(n, 1/2).
    Paired on seeds, this sees a difference that two overlapping intervals can hide.
    """
    if gained < 0 or lost < 0:
        raise ValueError(f"counts must be non-negative, got gained={gained}, lost={lost}")
    n = gained + lost
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(gained, lost) + 1)) / 2**n
    return min(1.0, 2 * tail)
