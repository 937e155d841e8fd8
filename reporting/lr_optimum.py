"""The optimal learning rate of a sweep, with a bootstrap interval over seeds, and its drift across model sizes.

Input: one row per run, ``{"group", "size", "lr", "seed", "loss", "init_loss"}`` (group = a parametrization,
size = width or depth, loss = the final validation loss, init_loss = the loss the same run logged at step 1).

**Divergence.** A run has *diverged* when its final loss is not finite or is above its loss at init by
more than ``DIVERGENCE_MARGIN`` (it ended worse than it started). A diverged run scores +inf: a curve point
(the mean over seeds at one lr) is +inf when any of its seeds diverged, so an lr where some seeds blow up
never looks like the optimum.

**The estimate** (``fit_optimum``): on the mean-over-seeds curve of loss against x = log2(lr), take the grid
minimum i and fit a quadratic by least squares to the points i - window .. i + window (window 1: the
minimum and its two neighbours, the parabola through them); its vertex is log2 lr*. Nothing is
extrapolated: the vertex of a convex fit to a window whose centre is lowest lies inside the window; a fit
that is not convex or whose vertex leaves the window falls back to the grid minimum and says so
(``method``). When the minimum is the first or last finite grid point, or a neighbour diverged, there is no
bracket: ``at_edge`` is "low" or "high" and log2 lr* is the grid point, meaning only "lr* <= this" or
"lr* >= this" (the grid must be extended); a diverged neighbour counts as the high edge of the usable grid.
The quadratic-in-log-lr model of the basin is the one Tensor Programs V reads its optima from (Yang et al.
2022, arXiv:2203.03466, Fig. 1 and §6); fitting only near the minimum keeps the model's error small where
curves are asymmetric (steeper on the high-lr side).

**Intervals** (``estimate``): the seeds are resampled with replacement (``n_boot`` times, a fixed generator
seed) and the estimate recomputed on each resampled mean curve; the interval is the 2.5 and 97.5
percentiles over the replicates (percentile bootstrap, Efron & Tibshirani 1993, ch. 13). Replicates at an
edge are counted (``edge_fraction``); the interval uses the bracketed ones. With one seed there is no
interval (None).

**Drift** (``drift``): log2 lr*(target size) - log2 lr*(proxy size), in octaves, with a *paired* bootstrap
when the two sizes share their seeds (the same resampled seed labels at both sizes: a seed fixes the data
order, which both sizes see), else independent resampling per size. A drift whose endpoint is at an edge
is a bound, not a number: ``at_edge`` names which end.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

N_BOOT = 2000
# Nats a final loss may exceed the loss at init before the run counts as diverged: the loss at init is one
# training batch's, the final loss the validation batches', so a run that barely moved (a tiny lr) can end a
# few hundredths above it without having diverged.
DIVERGENCE_MARGIN = 0.1
BOOT_SEED = 0


@dataclass(frozen=True)
class Optimum:
    """log2 of the optimal lr of one curve; ``at_edge`` None (bracketed), "low" or "high" (a bound), "both"
    (a lone finite point between diverged or missing neighbours)."""

    log2_lr: float
    at_edge: str | None
    method: str  # "quadratic", "grid" (fit fell back), "edge"


@dataclass(frozen=True)
class Estimate:
    """A point estimate (log2 lr*, or a drift in octaves) with its percentile-bootstrap interval."""

    value: float
    at_edge: str | None
    method: str
    low: float | None
    high: float | None
    edge_fraction: float | None  # share of bootstrap replicates at an edge
    n_seeds: int

    def to_json(self) -> dict:
        return asdict(self)


def is_diverged(loss: float, init_loss: float | None, margin: float = DIVERGENCE_MARGIN) -> bool:
    """Non-finite, or above the run's own loss at init by more than ``margin`` (nats)."""
    return not math.isfinite(loss) or (init_loss is not None and math.isfinite(init_loss)
                                       and loss > init_loss + margin)


def scored_loss(row: dict) -> float:
    """The loss a run scores: +inf when diverged."""
    return math.inf if is_diverged(row["loss"], row.get("init_loss")) else float(row["loss"])


def fit_optimum(lrs: list[float], losses: list[float], window: int = 1) -> Optimum:
    """log2 lr* of one curve (losses +inf where diverged), as the module docstring describes."""
    if len(lrs) != len(losses) or not lrs:
        raise ValueError(f"fit_optimum needs one loss per lr; got {len(lrs)} lrs and {len(losses)} losses")
    if window < 1:
        raise ValueError(f"window must be >= 1 grid point each side; got {window}")
    order = np.argsort(lrs)
    x, y = np.log2(np.asarray(lrs, float)[order]), np.asarray(losses, float)[order]
    finite = np.isfinite(y)
    if not finite.any():
        raise ValueError("every run of this curve diverged; lower the lr grid")
    i = int(np.argmin(np.where(finite, y, np.inf)))
    low_edge, high_edge = i == 0 or not finite[i - 1], i == len(y) - 1 or not finite[i + 1]
    if low_edge or high_edge:
        return Optimum(float(x[i]), "both" if low_edge and high_edge else "low" if low_edge else "high", "edge")
    lo, hi = max(i - window, 0), min(i + window, len(y) - 1)
    keep = slice(lo, hi + 1)
    xs, ys = x[keep][finite[keep]], y[keep][finite[keep]]
    a, b = _quadratic(xs, ys)
    vertex = -b / (2 * a) if a > 0 else math.nan
    if not (a > 0 and xs.min() <= vertex <= xs.max()):
        return Optimum(float(x[i]), None, "grid")
    return Optimum(float(vertex), None, "quadratic")


def _quadratic(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(a, b) of the least-squares y = a x^2 + b x + c; through three points in closed form (the bootstrap's
    thousands of fits)."""
    if len(x) == 3:
        (x0, x1, x2), (y0, y1, y2) = x, y
        s01, s12 = (y1 - y0) / (x1 - x0), (y2 - y1) / (x2 - x1)
        a = (s12 - s01) / (x2 - x0)
        return float(a), float(s01 - a * (x0 + x1))
    a, b, _ = np.polyfit(x, y, 2)
    return float(a), float(b)


def curves_by_seed(rows: list[dict]) -> dict[int, dict[float, float]]:
    """seed -> lr -> scored loss, for the rows of one (group, size)."""
    out: dict[int, dict[float, float]] = {}
    for row in rows:
        out.setdefault(row["seed"], {})[row["lr"]] = scored_loss(row)
    return out


def mean_curve(by_seed: dict[int, dict[float, float]], seeds: list[int]) -> tuple[list[float], list[float]]:
    """(lrs, mean over ``seeds`` of the loss; +inf where any diverged), on the lrs every seed ran."""
    lrs, table = loss_table(by_seed)
    rows = [sorted(by_seed).index(s) for s in seeds]
    return lrs, list(table[rows].mean(axis=0))


def loss_table(by_seed: dict[int, dict[float, float]]) -> tuple[list[float], np.ndarray]:
    """(the lrs every seed ran, sorted; [seed (sorted), lr] array of the scored losses)."""
    seeds = sorted(by_seed)
    lrs = sorted(set.intersection(*(set(by_seed[s]) for s in seeds)))
    return lrs, np.array([[by_seed[s][lr] for lr in lrs] for s in seeds], dtype=float)


def _replicates(by_seed: dict[int, dict[float, float]], picks: np.ndarray, window: int) -> list[Optimum]:
    """The optimum of the mean curve over each row of seed positions in ``picks`` [n_boot, n_seeds]."""
    lrs, table = loss_table(by_seed)
    return [fit_optimum(lrs, list(curve), window=window) for curve in table[picks].mean(axis=1)]


def estimate(by_seed: dict[int, dict[float, float]], window: int = 1, n_boot: int = N_BOOT,
             boot_seed: int = BOOT_SEED) -> Estimate:
    """log2 lr* of the mean curve, with a bootstrap interval over seeds."""
    seeds = sorted(by_seed)
    point = fit_optimum(*mean_curve(by_seed, seeds), window=window)
    if len(seeds) < 2:
        return Estimate(point.log2_lr, point.at_edge, point.method, None, None, None, len(seeds))
    picks = np.random.default_rng(boot_seed).integers(0, len(seeds), (n_boot, len(seeds)))
    return _with_interval(point.log2_lr, point.at_edge, point.method, _replicates(by_seed, picks, window),
                          len(seeds))


def drift(proxy: dict[int, dict[float, float]], target: dict[int, dict[float, float]], window: int = 1,
          n_boot: int = N_BOOT, boot_seed: int = BOOT_SEED) -> Estimate:
    """log2 lr*(target) - log2 lr*(proxy) in octaves, with a (paired when the seeds match) bootstrap interval."""
    a = fit_optimum(*mean_curve(proxy, sorted(proxy)), window=window)
    b = fit_optimum(*mean_curve(target, sorted(target)), window=window)
    edge = _drift_edge(a, b)
    n = min(len(proxy), len(target))
    if n < 2:
        return Estimate(b.log2_lr - a.log2_lr, edge, _drift_method(a, b), None, None, None, n)
    rng = np.random.default_rng(boot_seed)
    picks_a = rng.integers(0, len(proxy), (n_boot, len(proxy)))
    paired = sorted(proxy) == sorted(target)  # same seed labels: resample them together
    picks_b = picks_a if paired else rng.integers(0, len(target), (n_boot, len(target)))
    replicates = [Optimum(rb.log2_lr - ra.log2_lr, _drift_edge(ra, rb), "difference") for ra, rb in
                  zip(_replicates(proxy, picks_a, window), _replicates(target, picks_b, window))]
    return _with_interval(b.log2_lr - a.log2_lr, edge, _drift_method(a, b), replicates, n)


def _drift_edge(proxy: Optimum, target: Optimum) -> str | None:
    """Which end makes a drift a bound: 'proxy low', 'target high', ... (None when both are bracketed)."""
    ends = [f"{name} {o.at_edge}" for name, o in (("proxy", proxy), ("target", target)) if o.at_edge]
    return ", ".join(ends) or None


def _drift_method(proxy: Optimum, target: Optimum) -> str:
    return proxy.method if proxy.method == target.method else f"{proxy.method}/{target.method}"


def _with_interval(value: float, at_edge: str | None, method: str, replicates: list[Optimum], n_seeds: int) -> Estimate:
    inside = [r.log2_lr for r in replicates if r.at_edge is None]
    edge_fraction = 1 - len(inside) / len(replicates)
    low, high = (float(np.percentile(inside, 2.5)), float(np.percentile(inside, 97.5))) if inside else (None, None)
    return Estimate(value, at_edge, method, low, high, edge_fraction, n_seeds)


def analyse(rows: list[dict], proxy_size: int | None = None, window: int = 1, n_boot: int = N_BOOT) -> dict:
    """Per group: every size's lr* estimate, the drift from the proxy (default: the smallest size) to the
    largest size, and the loss by size at the proxy's best grid lr (does a larger model do better there?).
    A size whose every run diverged has no optimum (listed under ``all_diverged``); the drift then ends at the
    largest size that has one."""
    out = {}
    for group in dict.fromkeys(r["group"] for r in rows):
        by_size = {}
        for row in rows:
            if row["group"] == group:
                by_size.setdefault(row["size"], []).append(row)
        curves = {size: curves_by_seed(by_size[size]) for size in sorted(by_size)}
        dead = [size for size, c in curves.items() if not any(math.isfinite(v) for lc in c.values() for v in lc.values())]
        sizes = [size for size in curves if size not in dead]
        proxy = proxy_size if proxy_size is not None else min(curves)
        if proxy not in curves:
            raise ValueError(f"proxy size {proxy} was not swept for {group}; sizes: {sorted(curves)}")
        if proxy in dead:
            raise ValueError(f"every run of the proxy size {proxy} of {group} diverged; lower the lr grid")
        optima = {size: estimate(curves[size], window, n_boot).to_json() for size in sizes}
        out[group] = {"optimum_log2_lr": optima, "proxy": proxy, "target": sizes[-1], "all_diverged": dead,
                      "drift_octaves": drift(curves[proxy], curves[sizes[-1]], window, n_boot).to_json(),
                      "at_proxy_lr": loss_at_proxy_lr(curves, proxy)}
    return out


def loss_at_proxy_lr(curves: dict[int, dict[int, dict[float, float]]], proxy: int) -> dict:
    """The proxy's best grid lr, every size's mean loss there, and whether it falls with every size step."""
    lrs, losses = mean_curve(curves[proxy], sorted(curves[proxy]))
    best = lrs[int(np.argmin(losses))]
    by_size = {}
    for size, by_seed in sorted(curves.items()):
        values = [c[best] for c in by_seed.values() if best in c]
        by_size[size] = float(np.mean(values)) if values else None
    known = [v for v in by_size.values() if v is not None]
    monotone = len(known) == len(by_size) and all(b < a for a, b in zip(known, known[1:]))
    return {"lr": best, "loss_by_size": by_size, "improves_monotonically": monotone}
