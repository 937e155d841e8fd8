"""Seed statistics for the reports and paper scripts: Student-t confidence intervals and paired differences.

Runs of one configuration that differ only in their seed are independent draws of a noisy
outcome (a final loss, a step count). Over n seeds the 95 % confidence interval of the mean is
mean +/- t_{0.975, n-1} * s / sqrt(n), s the sample std (ddof 1) (Student 1908; any statistics
text, e.g. Wasserman, *All of Statistics*, §10). Two configurations run on the same seeds see the
same data order (and, for the MLP scripts, the same normal draws), so their difference is best
judged per seed: the paired differences d_s = b_s - a_s get the same interval (the paired t-test,
``scipy.stats.ttest_rel``). The verdict says "differs" only when that interval excludes zero and
at least MIN_SEEDS_FOR_VERDICT (3) seeds are shared: a claim about a difference is made over >= 3
seeds, so two seeds (t(0.975, 1) = 12.7, a shaky interval) give their interval but no verdict, as
do one seed and a non-finite value.

The t quantile comes from ``scipy.special.stdtrit`` (scipy is installed with scikit-learn).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

CONFIDENCE = 0.95
DIFFERS = "differs"
NOT_RESOLVED = "not resolved"  # the interval contains zero: no difference shown at this seed count
NO_VERDICT_ONE_SEED = "no verdict (1 seed)"
MIN_SEEDS_FOR_VERDICT = 3


def too_few_seeds(n: int) -> str:
    """The verdict of a comparison over fewer than MIN_SEEDS_FOR_VERDICT seeds: ``"no verdict (2 seeds < 3)"``."""
    return f"no verdict ({n} seed{'s' if n != 1 else ''} < {MIN_SEEDS_FOR_VERDICT})"


NO_VERDICT_TWO_SEEDS = too_few_seeds(2)
NO_VERDICT_NO_SHARED = "no verdict (no shared seed)"
NO_VERDICT_NON_FINITE = "no verdict (non-finite)"


@dataclass(frozen=True)
class Interval:
    """Mean of n values with the half-width of its two-sided confidence interval (nan for n < 2)."""

    mean: float
    half_width: float
    n: int

    @property
    def low(self) -> float:
        return self.mean - self.half_width

    @property
    def high(self) -> float:
        return self.mean + self.half_width

    def excludes_zero(self) -> bool:
        return self.n >= 2 and math.isfinite(self.half_width) and (self.low > 0 or self.high < 0)

    def text(self, fmt: str = ".4f") -> str:
        """``"5.3510 ± 0.0123"``; just the mean for one value; ``"n/a"`` for none."""
        if self.n == 0:
            return "n/a"
        if self.n == 1 or not math.isfinite(self.half_width):
            return format(self.mean, fmt)
        return f"{self.mean:{fmt}} ± {self.half_width:{fmt}}"


def t_quantile(probability: float, dof: int) -> float:
    """Inverse CDF of Student's t with ``dof`` degrees of freedom, e.g. t_quantile(0.975, 2) = 4.3027."""
    from scipy.special import stdtrit

    return float(stdtrit(dof, probability))


def sample_std(values: Sequence[float]) -> float:
    """Sample standard deviation (ddof 1); nan for fewer than two values."""
    n = len(values)
    if n < 2:
        return math.nan
    mean = math.fsum(values) / n
    return math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean +/- t_{(1+c)/2, n-1} * s / sqrt(n) of ``values``; a non-finite value makes both nan."""
    n = len(values)
    if n == 0:
        return Interval(math.nan, math.nan, 0)
    if not all(math.isfinite(v) for v in values):
        return Interval(math.nan, math.nan, n)
    mean = math.fsum(values) / n
    if n == 1:
        return Interval(mean, math.nan, 1)
    half = t_quantile((1 + confidence) / 2, n - 1) * sample_std(values) / math.sqrt(n)
    return Interval(mean, half, n)


def paired_difference(a: dict[int, float], b: dict[int, float],
                      confidence: float = CONFIDENCE) -> tuple[Interval, str]:
    """Interval of b - a over the seeds both have, and the verdict (module docstring)."""
    shared = sorted(set(a) & set(b))
    diffs = [b[seed] - a[seed] for seed in shared]
    interval = mean_interval(diffs, confidence)
    return interval, verdict(interval)


def verdict(interval: Interval) -> str:
    """"differs" iff the interval excludes zero; no verdict below MIN_SEEDS_FOR_VERDICT values or for non-finite ones."""
    if interval.n == 0:
        return NO_VERDICT_NO_SHARED
    if interval.n == 1:
        return NO_VERDICT_ONE_SEED
    if interval.n < MIN_SEEDS_FOR_VERDICT:
        return NO_VERDICT_TWO_SEEDS
    if not math.isfinite(interval.mean) or not math.isfinite(interval.half_width):
        return NO_VERDICT_NON_FINITE
    return DIFFERS if interval.excludes_zero() else NOT_RESOLVED


def coefficient_of_variation(values: Sequence[float]) -> float:
    """Sample std / |mean| (ddof 1): spread relative to the level, comparable where means differ."""
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < 2:
        return math.nan
    mean = math.fsum(finite) / len(finite)
    return sample_std(finite) / abs(mean) if mean != 0 else math.nan


def paired_variance_test(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Pitman-Morgan test of Var(x) = Var(y) for paired samples: (std(y) / std(x), two-sided p-value).

    Var(x) = Var(y) iff Cov(x + y, x - y) = 0, so the test is that of zero Pearson correlation
    between the pair sums and differences, t with n - 2 dof (Pitman 1939, Biometrika 31:9-12;
    Morgan 1939, Biometrika 31:13-19); ``scipy.stats.pearsonr`` gives that p-value.
    """
    from scipy.stats import pearsonr

    if len(x) != len(y) or len(x) < 3:
        raise ValueError(f"the paired variance test needs two equally long samples of >= 3 (got {len(x)}, {len(y)})")
    sums = [a + b for a, b in zip(x, y)]
    diffs = [a - b for a, b in zip(x, y)]
    return sample_std(y) / sample_std(x), float(pearsonr(sums, diffs).pvalue)


BANDS = {"ci95": "95 % Student-t interval", "se": "± 1 standard error", "minmax": "min–max"}
"""Bands a figure may draw around a mean over seeds: with 2-3 seeds the t-interval is wide (t(0.975, 1) = 12.7),
so a figure may show the standard error s/√n or the range of the seeds instead, and says which."""


@dataclass(frozen=True)
class Band:
    """Mean of n values and the band [low, high] drawn around it (nan where undefined)."""

    mean: float
    low: float
    high: float
    n: int


def band(values: Sequence[float], kind: str = "ci95") -> Band:
    """``kind`` (a key of BANDS) around the mean of ``values``; a non-finite value makes all nan, one value no band."""
    if kind not in BANDS:
        raise ValueError(f"band {kind!r}: choose one of {', '.join(BANDS)}")
    if kind == "ci95":
        interval = mean_interval(values)
        return Band(interval.mean, interval.low, interval.high, interval.n)
    n = len(values)
    if n == 0 or not all(math.isfinite(v) for v in values):
        return Band(math.nan, math.nan, math.nan, n)
    mean = math.fsum(values) / n
    if n == 1:
        return Band(mean, math.nan, math.nan, 1)
    if kind == "se":
        half = sample_std(values) / math.sqrt(n)
        return Band(mean, mean - half, mean + half, n)
    return Band(mean, min(values), max(values), n)
