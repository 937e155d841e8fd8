"""Kaiming (fan-in) vs Xavier normal init of a deeper ReLU MLP (the paper's claim 3), over several seeds.

Setup: digits (scikit-learn, fixed split), MLP 64-128x7-10 (8 Linear layers, ReLU), biases 0, weights
N(0, std^2) with std = sqrt(2 / fan_in) (Kaiming normal, fan-in, ReLU gain) or sqrt(2 / (fan_in + fan_out))
(Xavier normal). Minibatch SGD, batch 64, momentum 0.9, fixed lr, 400 steps, seeds 0..19 (``--quick``:
60 steps, seeds 0..4, lr 0.01 only). Seed s gives both methods the same standard-normal draws (only
the per-layer scale differs) and the same data order, so each seed is a paired comparison. The full
run repeats everything at lr 0.01 and 0.05 because the answer depends on the step size.

Measured per (method, lr): train loss (on the 1347 training samples) every 10 steps, mean +/- std over
seeds; steps to reach train loss <= LOSS_THRESHOLD (0.1), at that 10-step resolution; final loss mean,
std, variance and median over seeds; test accuracy; weight-gradient norm at init; seeds that diverged
(non-finite loss, or final loss > 10 ln 10); seeds that end above the threshold (a late loss spike).

Paired comparison per lr (``reporting/stats.py``), Xavier minus Kaiming over the seeds: steps to the
threshold and ln(final loss), each with its 95 % t-interval and a verdict ("differs" iff the
interval excludes 0). The spread claim compares std(ln final loss), which is about the coefficient
of variation for small spreads and, unlike the variance of the loss itself, does not grow with the
loss level (the two methods end at different means); its test is Pitman-Morgan's for paired
samples (p < 0.05: "differs"). The CV of the final loss itself is reported beside it.

Usage: python scripts/paper/kaiming_vs_xavier.py --out DIR [--quick] [--seeds N] [--overwrite]
Writes DIR/kaiming_vs_xavier.csv (one row per method and lr), DIR/kaiming_vs_xavier_paired.csv (one row
per lr and compared quantity), DIR/kaiming_vs_xavier_curves.csv (one row per method, lr and evaluated
step) and DIR/kaiming_vs_xavier.png (loss curves, mean +/- std).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as `python scripts/paper/...py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from experiments.mlp import (  # noqa: E402
    Dataset,
    RunResult,
    TrainSettings,
    build_mlp,
    init_mlp_,
    kaiming_std,
    load_digits_split,
    positive_int,
    prepare_outputs,
    pyplot,
    run_cli,
    save_figure,
    train_classifier,
    write_csv,
    xavier_std,
)
from reporting.stats import (  # noqa: E402
    DIFFERS,
    NOT_RESOLVED,
    coefficient_of_variation,
    mean_interval,
    paired_difference,
    paired_variance_test,
)

METHODS = {"kaiming": kaiming_std, "xavier": xavier_std}
HIDDEN = (128,) * 7
LOSS_THRESHOLD = 0.1
EVAL_EVERY = 10


@dataclass(frozen=True)
class Plan:
    steps: int
    seeds: int
    lrs: tuple[float, ...]


FULL = Plan(steps=400, seeds=20, lrs=(0.01, 0.05))
QUICK = Plan(steps=60, seeds=5, lrs=(0.01,))


def train_method(method: str, lr: float, data: Dataset, plan: Plan) -> list[RunResult]:
    """One run per seed; torch.manual_seed(seed) before the init, data order from the same seed."""
    settings = TrainSettings(steps=plan.steps, batch_size=64, lr=lr, momentum=0.9, eval_every=EVAL_EVERY)
    runs = []
    for seed in range(plan.seeds):
        torch.manual_seed(seed)
        model = build_mlp([data.n_features, *HIDDEN, data.n_classes])
        init_mlp_(model, METHODS[method])
        runs.append(train_classifier(model, data, settings, seed))
    return runs


def loss_matrix(runs: list[RunResult], steps: int) -> np.ndarray:
    """Train loss [seeds, evals] on the common grid 0, 10, ..., steps; inf after a run stopped on divergence."""
    grid = list(range(0, steps + 1, EVAL_EVERY))
    matrix = np.full((len(runs), len(grid)), math.inf)
    for i, run in enumerate(runs):
        by_step = dict(zip(run.eval_steps, run.train_loss))
        matrix[i, :] = [by_step.get(step, math.inf) for step in grid]
    return matrix


def steps_to_threshold(run: RunResult, threshold: float = LOSS_THRESHOLD) -> float:
    """First evaluated step whose train loss <= threshold; nan if the run never got there."""
    return next((float(s) for s, loss in zip(run.eval_steps, run.train_loss) if loss <= threshold), math.nan)


def _finite_stats(values: np.ndarray) -> tuple[float, float, int]:
    """(mean, std, count) of the finite entries; nan statistics when there are none."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return math.nan, math.nan, 0
    return float(finite.mean()), float(finite.std()), int(finite.size)


def summarize(method: str, lr: float, runs: list[RunResult], steps: int) -> dict:
    losses = loss_matrix(runs, steps)
    hit_steps = np.array([steps_to_threshold(r) for r in runs])
    hit_mean, hit_std, reached = _finite_stats(hit_steps)
    final_mean, final_std, _ = _finite_stats(losses[:, -1])
    finite_final = losses[np.isfinite(losses[:, -1]), -1]
    curve_std = [_finite_stats(losses[:, j])[1] for j in range(losses.shape[1])]
    accuracies = np.array([r.test_accuracy for r in runs])
    return {"method": method, "lr": lr, "seeds": len(runs), "initial_loss_mean": float(losses[:, 0].mean()),
            "steps_to_threshold_mean": hit_mean, "steps_to_threshold_std": hit_std,
            "reached_fraction": reached / len(runs),
            "final_loss_mean": final_mean, "final_loss_std": final_std, "final_loss_var": final_std**2,
            "final_loss_median": float(np.median(finite_final)) if finite_final.size else math.nan,
            "loss_std_mean_over_curve": float(np.nanmean(curve_std)),
            "test_accuracy_mean": float(accuracies.mean()), "test_accuracy_std": float(accuracies.std()),
            "grad_norm_init_mean": float(np.mean([r.grad_norm_init for r in runs])),
            "diverged_fraction": float(np.mean([r.diverged for r in runs])),
            "seeds_ending_above_threshold": int(np.sum(~(losses[:, -1] <= LOSS_THRESHOLD))),
            "final_loss_cv": coefficient_of_variation(losses[:, -1].tolist()),
            "final_log_loss_std": float(np.std(np.log(finite_final), ddof=1)) if finite_final.size > 1 else math.nan}


def paired_rows(lr: float, kaiming: list[RunResult], xavier: list[RunResult], steps: int) -> list[dict]:
    """Xavier - Kaiming per seed: steps to threshold, ln(final loss) and the spread of ln(final loss)."""
    final = {name: loss_matrix(runs, steps)[:, -1] for name, runs in (("kaiming", kaiming), ("xavier", xavier))}
    hits = {name: [steps_to_threshold(r) for r in runs] for name, runs in (("kaiming", kaiming), ("xavier", xavier))}
    rows = []
    for quantity, values in (("steps_to_threshold", hits),
                             ("ln_final_loss", {k: np.log(v).tolist() for k, v in final.items()})):
        per_seed = {k: {s: v for s, v in enumerate(vals) if math.isfinite(v)} for k, vals in values.items()}
        interval, verdict = paired_difference(per_seed["kaiming"], per_seed["xavier"])
        rows.append({"lr": lr, "quantity": quantity, "seeds": interval.n,
                     "kaiming_mean": mean_interval(list(per_seed["kaiming"].values())).mean,
                     "xavier_mean": mean_interval(list(per_seed["xavier"].values())).mean,
                     "xavier_minus_kaiming": interval.mean, "ci95_low": interval.low, "ci95_high": interval.high,
                     "p_value": math.nan, "verdict": verdict})
    both = np.isfinite(final["kaiming"]) & np.isfinite(final["xavier"])
    log_k, log_x = np.log(final["kaiming"][both]).tolist(), np.log(final["xavier"][both]).tolist()
    ratio, p_value = paired_variance_test(log_k, log_x)
    rows.append({"lr": lr, "quantity": "std_ln_final_loss (xavier / kaiming)", "seeds": len(log_k),
                 "kaiming_mean": float(np.std(log_k, ddof=1)), "xavier_mean": float(np.std(log_x, ddof=1)),
                 "xavier_minus_kaiming": ratio, "ci95_low": math.nan, "ci95_high": math.nan, "p_value": p_value,
                 "verdict": DIFFERS if p_value < 0.05 else NOT_RESOLVED})
    return rows


def curve_rows(method: str, lr: float, runs: list[RunResult], steps: int) -> list[dict]:
    losses = loss_matrix(runs, steps)
    rows = []
    for j, step in enumerate(range(0, steps + 1, EVAL_EVERY)):
        mean, std, count = _finite_stats(losses[:, j])
        rows.append({"method": method, "lr": lr, "step": step, "loss_mean": mean, "loss_std": std,
                     "loss_min": float(losses[:, j].min()), "loss_max": float(losses[:, j].max()),
                     "finite_seeds": count})
    return rows


def plot_curves(losses: dict[tuple[str, float], np.ndarray], plan: Plan, path: Path) -> None:
    """Per lr (columns): mean +/- one std over seeds on a linear axis (top), every seed on a log axis (bottom).

    ``losses[(method, lr)]`` is the [seeds, evals] matrix of ``loss_matrix``; a band on a log axis would be
    clipped wherever std > mean, hence the two views.
    """
    plt = pyplot()
    fig, axes = plt.subplots(2, len(plan.lrs), figsize=(5.5 * len(plan.lrs), 7), squeeze=False, sharex=True)
    grid = np.arange(0, plan.steps + 1, EVAL_EVERY)
    for col, lr in enumerate(plan.lrs):
        top, bottom = axes[0, col], axes[1, col]
        for method, color in zip(METHODS, ("tab:blue", "tab:orange")):
            matrix = np.where(np.isfinite(losses[(method, lr)]), losses[(method, lr)], np.nan)
            mean, std = np.nanmean(matrix, axis=0), np.nanstd(matrix, axis=0)
            top.plot(grid, mean, color=color, label=f"{method}: mean ± std of {plan.seeds} seeds")
            top.fill_between(grid, mean - std, mean + std, color=color, alpha=0.25, lw=0)
            for i, seed_curve in enumerate(matrix):
                bottom.semilogy(grid, seed_curve, color=color, lw=0.8, alpha=0.7, label=method if i == 0 else None)
        for ax in (top, bottom):
            ax.axhline(LOSS_THRESHOLD, color="gray", ls=":", lw=1, label=f"threshold {LOSS_THRESHOLD:g}")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        top.set_ylim(0, 2.0)
        top.set_title(f"ReLU MLP 64-128x7-10, SGD lr {lr:g} momentum 0.9", fontsize=9)
        top.set_ylabel("train loss (mean ± std)")
        bottom.set_ylabel("train loss, each seed")
        bottom.set_xlabel("step")
    fig.tight_layout()
    save_figure(fig, path, dpi=80)


def print_summary(summaries: list[dict]) -> None:
    print(f"{'method':<8} {'lr':>5} {'steps to <=' + format(LOSS_THRESHOLD, 'g'):>16} {'reached':>8} "
          f"{'final loss':>20} {'final var':>10} {'test acc':>14}")
    for s in summaries:
        print(f"{s['method']:<8} {s['lr']:>5g} {s['steps_to_threshold_mean']:>9.1f} ± {s['steps_to_threshold_std']:<4.1f} "
              f"{s['reached_fraction']:>8.2f} {s['final_loss_mean']:>10.3g} ± {s['final_loss_std']:<7.2g} "
              f"{s['final_loss_var']:>10.2g} {s['test_accuracy_mean']:>7.4f} ± {s['test_accuracy_std']:.4f}")


def print_paired(rows: list[dict]) -> None:
    print("\npaired over seeds (xavier - kaiming; for the spread: the ratio xavier / kaiming and Pitman-Morgan p)")
    for r in rows:
        detail = (f"p = {r['p_value']:.3g}" if math.isfinite(r["p_value"])
                  else f"95% [{r['ci95_low']:.4g}, {r['ci95_high']:.4g}]")
        print(f"lr {r['lr']:<5g} {r['quantity']:<37} n={r['seeds']:<3} kaiming {r['kaiming_mean']:<9.4g} "
              f"xavier {r['xavier_mean']:<9.4g} -> {r['xavier_minus_kaiming']:<9.4g} {detail}  {r['verdict']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for the two CSVs and the PNG")
    parser.add_argument("--quick", action="store_true", help="60 steps, 5 seeds, lr 0.01 only (CI)")
    parser.add_argument("--seeds", type=positive_int, help="override the number of seeds (>= 5 recommended)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files in --out")
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    if args.seeds:
        plan = Plan(plan.steps, args.seeds, plan.lrs)
    paths = prepare_outputs(args.out, ["kaiming_vs_xavier.csv", "kaiming_vs_xavier_paired.csv",
                                       "kaiming_vs_xavier_curves.csv", "kaiming_vs_xavier.png"], args.overwrite)
    data = load_digits_split()
    summaries, paired, curves, losses = [], [], [], {}
    for lr in plan.lrs:
        runs = {method: train_method(method, lr, data, plan) for method in METHODS}
        for method in METHODS:
            summaries.append(summarize(method, lr, runs[method], plan.steps))
            curves.extend(curve_rows(method, lr, runs[method], plan.steps))
            losses[(method, lr)] = loss_matrix(runs[method], plan.steps)
        paired.extend(paired_rows(lr, runs["kaiming"], runs["xavier"], plan.steps))
    write_csv(paths[0], summaries)
    write_csv(paths[1], paired)
    write_csv(paths[2], curves)
    plot_curves(losses, plan, paths[3])
    print_summary(summaries)
    print_paired(paired)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
