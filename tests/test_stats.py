"""reporting/stats.py: t-intervals and paired verdicts against scipy.stats and hand-computed values."""

from __future__ import annotations

import math

import pytest

from reporting import stats

scipy_stats = pytest.importorskip("scipy.stats")


def test_t_quantiles_match_a_t_table():
    # Two-sided 95 % critical values, e.g. Student's t table in any statistics text.
    assert stats.t_quantile(0.975, 1) == pytest.approx(12.706204736, rel=1e-9)
    assert stats.t_quantile(0.975, 2) == pytest.approx(4.302652730, rel=1e-9)
    assert stats.t_quantile(0.975, 4) == pytest.approx(2.776445105, rel=1e-9)
    assert stats.t_quantile(0.975, 30) == pytest.approx(2.042272456, rel=1e-9)


def test_mean_interval_by_hand_and_against_scipy():
    values = [1.0, 2.0, 3.0, 4.0]
    interval = stats.mean_interval(values)
    # mean 2.5, s = sqrt(5/3) = 1.2910, half = 3.182446 * 1.2910 / 2 = 2.05426
    assert interval.mean == 2.5 and interval.n == 4
    assert interval.half_width == pytest.approx(3.182446305284263 * math.sqrt(5 / 3) / 2, rel=1e-12)
    low, high = scipy_stats.t.interval(0.95, df=3, loc=2.5, scale=scipy_stats.sem(values))
    assert (interval.low, interval.high) == (pytest.approx(low, rel=1e-12), pytest.approx(high, rel=1e-12))
    assert interval.text(".3f") == "2.500 ± 2.054"


def test_degenerate_intervals():
    assert stats.mean_interval([]).text() == "n/a"
    one = stats.mean_interval([5.25])
    assert one.mean == 5.25 and math.isnan(one.half_width) and one.text(".2f") == "5.25"
    bad = stats.mean_interval([1.0, math.nan, 2.0])
    assert math.isnan(bad.mean) and stats.verdict(bad) == stats.NO_VERDICT_NON_FINITE
    assert stats.paired_difference({0: 1.0}, {1: 2.0})[1] == stats.NO_VERDICT_NO_SHARED
    assert stats.paired_difference({0: 1.0, 1: 2.0}, {0: 1.5})[1] == stats.NO_VERDICT_ONE_SEED


def test_two_seeds_give_an_interval_but_no_verdict_three_give_one():
    # b is 1.0 above a on both seeds, +-0.01: the 2-seed interval [0.863, 1.137] excludes zero, yet a claim
    # about a difference needs >= 3 seeds, so there is no verdict; the third seed turns it into "differs".
    a, b = {0: 5.0, 1: 5.2}, {0: 6.01, 1: 6.19}
    interval, verdict = stats.paired_difference(a, b)
    assert interval.excludes_zero() and interval.n == 2 and interval.mean == pytest.approx(1.0)
    assert verdict == stats.NO_VERDICT_TWO_SEEDS == "no verdict (2 seeds < 3)"
    assert stats.paired_difference({**a, 2: 5.1}, {**b, 2: 6.1})[1] == stats.DIFFERS


@pytest.mark.parametrize("shift", [0.0, 0.05, 0.2, -0.3])
def test_paired_verdict_agrees_with_scipy_ttest_rel(shift):
    a = {0: 2.31, 1: 2.28, 2: 2.40, 3: 2.35, 4: 2.30}
    noise = [0.03, -0.05, 0.02, 0.04, -0.02]
    b = {seed: a[seed] + shift + noise[seed] for seed in a}
    interval, verdict = stats.paired_difference(a, b)
    p_value = scipy_stats.ttest_rel([b[s] for s in a], [a[s] for s in a]).pvalue
    assert interval.mean == pytest.approx(shift + sum(noise) / 5, abs=1e-12)
    assert (verdict == stats.DIFFERS) == (p_value < 0.05)
    assert verdict in (stats.DIFFERS, stats.NOT_RESOLVED)


def test_coefficient_of_variation():
    assert stats.coefficient_of_variation([2.0, 4.0]) == pytest.approx(math.sqrt(2) / 3)
    assert math.isnan(stats.coefficient_of_variation([1.0]))


def test_paired_variance_test_against_hand_computed_correlation():
    x = [1.0, 2.0, 3.0, 4.0, 5.0]
    y = [1.2, 1.9, 3.5, 3.6, 5.9]
    ratio, p_value = stats.paired_variance_test(x, y)
    assert ratio == pytest.approx(stats.sample_std(y) / stats.sample_std(x))
    # Pitman-Morgan by hand: r = corr(x + y, x - y), t = r sqrt(n-2) / sqrt(1-r^2), two-sided t(3) p-value.
    sums, diffs = [a + b for a, b in zip(x, y)], [a - b for a, b in zip(x, y)]
    r = scipy_stats.pearsonr(sums, diffs).statistic
    t = r * math.sqrt(3) / math.sqrt(1 - r * r)
    assert p_value == pytest.approx(2 * scipy_stats.t.sf(abs(t), 3), rel=1e-9)
    scaled = [3 * v for v in x]  # var 9x larger, perfectly correlated: detected
    assert stats.paired_variance_test(x, scaled)[1] < 1e-6


def test_bands_standard_error_and_range():
    values = [1.0, 2.0, 4.0]  # mean 7/3, s = sqrt(7/3)
    se = stats.band(values, "se")
    assert se.mean == pytest.approx(7 / 3) and se.high - se.mean == pytest.approx(math.sqrt(7 / 3) / math.sqrt(3))
    assert (stats.band(values, "minmax").low, stats.band(values, "minmax").high) == (1.0, 4.0)
    ci = stats.band(values, "ci95")
    assert ci.high - ci.mean == pytest.approx(stats.mean_interval(values).half_width)
    assert math.isnan(stats.band([3.0], "se").low) and math.isnan(stats.band([1.0, math.nan], "minmax").mean)
    with pytest.raises(ValueError, match="choose one of ci95, se, minmax"):
        stats.band(values, "sd")
