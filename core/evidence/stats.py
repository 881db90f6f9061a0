"""The statistics of a sweep, on plain numbers: mean and spread over seeds, and the paired comparison of
two strategies on the same test examples. Pure: no store, no LM; reproducible (seeded).

The paired comparison takes, per seed, the pairs (score of A, score of B) of the test examples both
answered, on the metric's 0-1 scale (an example that failed counts 0, as in a run's score). Per pair, A
wins, loses or ties; the mean difference is in points (0-100, the scale of run scores); its 95% interval
comes from a paired bootstrap that resamples the test examples within each seed (the seeds are the
design, the examples the sample), and the sign test's two-sided p-value from wins against losses (ties
left out). The difference is called significant when the interval excludes 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from core.store.sweep_records import Comparison

RESAMPLES = 2000
"""Bootstrap resamples of a comparison (its interval moves by about 0.1 points between seeds of the resampling)."""
LEVEL = 0.95


def mean_sd(values: Sequence[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n - 1); the sd is None for fewer than two values, both for none."""
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def sign_test_p(wins: int, losses: int) -> float:
    """Two-sided exact sign test: the probability, if A and B were equally good, of a split of the
    ``wins + losses`` non-tied pairs at least as uneven as this one (1.0 when there is none)."""
    n = wins + losses
    if n == 0:
        return 1.0
    k = min(wins, losses)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def bootstrap_interval(groups: Sequence[Sequence[float]], *, resamples: int = RESAMPLES, rng_seed: int = 0,
                       level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of the mean of all values when each group is resampled (with replacement)
    on its own, ``resamples`` times; ``rng_seed`` makes it reproducible."""
    groups = [np.asarray(g, dtype=float) for g in groups if len(g)]
    if not groups:
        raise ValueError("a bootstrap needs at least one value")
    rng = np.random.default_rng(rng_seed)
    total = sum(len(g) for g in groups)
    sums = np.zeros(resamples)
    for values in groups:
        picks = rng.integers(0, len(values), size=(resamples, len(values)))
        sums += values[picks].sum(axis=1)
    means = sums / total
    low, high = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(low), float(high)


def paired_comparison(a: str, b: str, pairs_by_seed: Mapping[int, Sequence[tuple[float, float]]], *,
                      resamples: int = RESAMPLES, rng_seed: int = 0) -> Comparison:
    """``a`` against ``b``: ``pairs_by_seed`` maps a seed to the (A score, B score) of each test example,
    each score 0-1."""
    diffs = {seed: [(sa - sb) * 100 for sa, sb in pairs] for seed, pairs in pairs_by_seed.items()}
    flat = [d for values in diffs.values() for d in values]
    wins = sum(d > 0 for d in flat)
    losses = sum(d < 0 for d in flat)
    ties = len(flat) - wins - losses
    if not flat:
        return Comparison(a, b, 0, 0, 0, 0, None, None, None, None, False,
                          f"no paired test results for {a} and {b} yet")
    mean = sum(flat) / len(flat)
    low, high = bootstrap_interval(list(diffs.values()), resamples=resamples, rng_seed=rng_seed)
    low, high = min(low, mean), max(high, mean)  # the estimate lies in its interval, whatever the rounding
    p = sign_test_p(wins, losses)
    significant = low > 0 or high < 0
    comparison = Comparison(a, b, len(flat), wins, losses, ties, mean, low, high, p, significant, "")
    return Comparison(**{**comparison.__dict__, "sentence": comparison_sentence(comparison)})


def comparison_sentence(c: Comparison) -> str:
    """"p -> w -> p beats p by 12.0 ± 5.0 points (95% CI ...)" (± is half the interval's width; the numbers
    are the winner's minus the loser's) or "no difference beyond noise between p and w (...)"."""
    if c.mean_diff is None or c.ci_low is None or c.ci_high is None:
        return f"no paired test results for {c.a} and {c.b} yet"
    flip = c.significant and c.mean_diff < 0
    first, second = (c.b, c.a) if flip else (c.a, c.b)
    mean, low, high = (-c.mean_diff, -c.ci_high, -c.ci_low) if flip else (c.mean_diff, c.ci_low, c.ci_high)
    wins, losses = (c.losses, c.wins) if flip else (c.wins, c.losses)
    detail = (f"95% CI {low:.1f} to {high:.1f}; {wins} wins, {losses} losses, {c.ties} ties on {c.pairs} paired "
              f"test answers; sign test {_p(c.p_value)}")
    if not c.significant:
        return f"no difference beyond noise between {first} and {second} ({mean:+.1f} points, {detail})"
    return f"{first} beats {second} by {mean:.1f} ± {(high - low) / 2:.1f} points ({detail})"


def _p(p: float | None) -> str:
    if p is None:
        return "p n/a"
    return "p < 0.0001" if p < 0.0001 else f"p = {p:.4f}" if p < 0.01 else f"p = {p:.2f}"
