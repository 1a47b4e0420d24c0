"""Statistics people can cite: paired differences across seeds, their mean and a 95% interval.

A matched comparison pairs each seed's DECORE trial with the partner trained from the same baseline seed, so
the seed's luck (baseline, data order) cancels in the difference. The interval is Student's t with n - 1
degrees of freedom on the per-seed differences (scipy.stats.t): mean +- t(0.975, n - 1) * sd / sqrt(n).
Wording rules (DESIGN.md section 6): fewer than 3 seeds give no better/worse statement at all; an interval
that covers 0 is "not significant".
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


LEVEL = 0.95
MIN_SEEDS = 3  # no better/worse statement from fewer


@dataclass(frozen=True)
class Paired:
    """Per-seed differences (a - b) and their summary."""
    diffs: tuple[float, ...]
    mean: float
    sd: float          # sample standard deviation (n - 1); NaN for one seed
    low: float         # the 95% t interval; NaN below 2 seeds
    high: float

    @property
    def n(self) -> int:
        return len(self.diffs)

    def verdict(self, better: str, worse: str) -> str:
        """`better` when the interval lies above 0, `worse` below, else "not significant"; with fewer than
        MIN_SEEDS seeds "n < 3: no verdict" whatever the numbers."""
        if self.n < MIN_SEEDS:
            return f"n={self.n} < {MIN_SEEDS}: no verdict"
        if self.low > 0:
            return better
        if self.high < 0:
            return worse
        return "not significant"

    def interval_text(self, fmt: str = "{:+.2f}") -> str:
        """'+0.41 [-0.12, +0.94]' (mean and 95% t interval); the mean alone below 2 seeds."""
        if self.n < 2:
            return fmt.format(self.mean)
        return f"{fmt.format(self.mean)} [{fmt.format(self.low)}, {fmt.format(self.high)}]"


def t_interval(values: Sequence[float], level: float = LEVEL) -> tuple[float, float]:
    """The two-sided `level` interval of the mean of `values`: Student's t with n - 1 degrees of freedom."""
    n = len(values)
    if n < 2:
        return math.nan, math.nan
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    from scipy import stats as scipy_stats  # loaded on first use: scipy's import costs about a second

    half = float(scipy_stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return mean - half, mean + half


def paired(a: Sequence[float], b: Sequence[float], level: float = LEVEL) -> Paired:
    """Per-seed differences a[i] - b[i] (pair i: the same seed), their mean, sd and `level` t interval."""
    if len(a) != len(b) or len(a) == 0:
        raise ValueError(f"paired differences need two equal, non-empty lists (got {len(a)} and {len(b)} values)")
    diffs = tuple(float(x) - float(y) for x, y in zip(a, b))
    n = len(diffs)
    mean = sum(diffs) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (n - 1)) if n > 1 else math.nan
    low, high = t_interval(diffs, level)
    return Paired(diffs, mean, sd, low, high)
