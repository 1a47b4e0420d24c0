"""bench.report.stats: paired differences and their t interval, against numbers computed by hand."""
from __future__ import annotations

import math

import pytest

from bench.report.stats import paired, t_interval


def test_paired_t_interval_by_hand():
    # partner 90.5, 91.0, 89.9 against DECORE 90.0, 90.0, 90.0: differences 0.5, 1.0, -0.1
    # mean 0.4667; sd = sqrt(((0.0333)^2 + (0.5333)^2 + (0.5667)^2) / 2) = sqrt(0.6067 / 2) = 0.5508
    # t(0.975, 2 dof) = 4.3027 (tables); half-width 4.3027 * 0.5508 / sqrt(3) = 1.3682
    p = paired([90.5, 91.0, 89.9], [90.0, 90.0, 90.0])
    assert p.n == 3 and p.diffs == pytest.approx((0.5, 1.0, -0.1))
    assert p.mean == pytest.approx(0.46667, abs=1e-4) and p.sd == pytest.approx(0.55076, abs=1e-4)
    assert (p.low, p.high) == (pytest.approx(0.46667 - 1.3682, abs=1e-3), pytest.approx(0.46667 + 1.3682, abs=1e-3))
    assert p.verdict("partner better", "DECORE better") == "not significant"  # the interval covers 0
    assert p.interval_text() == "+0.47 [-0.90, +1.83]"


def test_verdicts_need_three_seeds_and_an_interval_off_zero():
    up = paired([1.0, 1.1, 1.2, 1.05], [0.0, 0.0, 0.0, 0.0])
    assert up.low > 0 and up.verdict("better", "worse") == "better"
    down = paired([0.0, 0.0, 0.0], [1.0, 1.2, 1.1])
    assert down.high < 0 and down.verdict("better", "worse") == "worse"
    two = paired([5.0, 5.1], [0.0, 0.0])  # far from 0, but two seeds: no statement
    assert two.verdict("better", "worse") == "n=2 < 3: no verdict"
    one = paired([1.0], [0.0])
    assert math.isnan(one.low) and one.interval_text() == "+1.00" and math.isnan(one.sd)


def test_t_interval_of_two_values_uses_one_degree_of_freedom():
    low, high = t_interval([0.0, 2.0])  # mean 1, sd sqrt(2), t(0.975, 1) = 12.706: half 12.706 * sqrt(2) / sqrt(2)
    assert (low, high) == (pytest.approx(1 - 12.7062, abs=1e-3), pytest.approx(1 + 12.7062, abs=1e-3))


def test_unequal_lists_are_refused():
    with pytest.raises(ValueError, match="equal"):
        paired([1.0, 2.0], [1.0])
