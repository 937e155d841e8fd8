"""The paper's sigma sweep (claim 2): 25 log-spaced initial stds of a compact ReLU MLP, regimes per sigma.

Setup: MLP features-128-128-classes with ReLU (digits: 64-128-128-10), every weight N(0, sigma^2),
biases 0, sigma in np.logspace(-4, 1, 25). Minibatch SGD, batch 64, lr 0.05, momentum 0.9, for
1000 steps (``--quick``: 150 steps), 5 seeds (``--quick``: 2); seed s draws the init with
torch.manual_seed(s) and the data order from a generator seeded with s.

Per sigma (seed means): initial and final train loss (cross-entropy on up to 4096 train samples),
test accuracy, the weight-gradient norm at init and its mean over training (Linear weights only:
the zero-initialised output bias keeps a gradient of order 1e-2 at any sigma and would hide the
vanishing), and the fraction of seeds that diverged. A run diverged if a minibatch loss became
non-finite or its final train loss exceeds 10 ln(classes) (23.0 for 10 classes: ten times chance).

Regime label, checked in this order (thresholds are constants below, defended in docs/paper_reproduction.md):
  vanishing  grad norm at init < TAU_VANISH = 1e-3 and test accuracy <= 1/classes + ACC_MARGIN (0.1):
             the gradients are tiny and the net ends at chance
  exploding  any seed diverged, or grad norm at init > TAU_EXPLODE = 1e2, or final loss > initial loss
  stable     mean test accuracy within ACC_TOLERANCE = 0.02 of the best sigma's (0.02 ~ the 95 %
             binomial sampling error of one accuracy near 0.97 on 450 test images, 1.96 sqrt(.97 .03 / 450)
             = 0.016, rounded up: closer than that, two sigmas cannot be told apart on this test set)
  degraded   otherwise: it trains, but to a clearly worse accuracy (the transitions between regimes)
Test accuracy is reported as mean ± 95 % t-interval over seeds. The band edges under tolerances
0.01 and 0.05 are printed too, so a reader sees how far the stable band depends on the choice.
The paper's claims to compare with: vanishing for sigma <~ 1e-3, stable for 1e-2 <= sigma <= 1e-1
(accuracy peaks there), exploding for sigma >~ 1.

Usage: python scripts/paper/mlp_std_sweep.py --out DIR [--quick] [--dataset digits | --dataset mnist PATH]
       [--seeds N] [--steps N] [--overwrite]
Writes DIR/sweep.csv (one row per sigma), DIR/sweep.md (the same as a table, with the criteria) and
DIR/sweep.png (accuracy, losses and grad norms vs sigma with the regime bands shaded).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as `python scripts/paper/...py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from experiments.mlp import (  # noqa: E402
    Dataset,
    TrainSettings,
    build_mlp,
    constant_std,
    init_mlp_,
    load_dataset,
    positive_int,
    prepare_outputs,
    pyplot,
    run_cli,
    save_figure,
    train_classifier,
    write_csv,
)
from reporting.stats import mean_interval  # noqa: E402

SIGMAS = np.logspace(-4, 1, 25)
HIDDEN = (128, 128)
LR, MOMENTUM, BATCH = 0.05, 0.9, 64
TAU_VANISH = 1e-3
TAU_EXPLODE = 1e2
ACC_MARGIN = 0.1
ACC_TOLERANCE = 0.02
TOLERANCES_SHOWN = (0.01, 0.02, 0.05)
FULL_STEPS, FULL_SEEDS = 1000, 5
QUICK_STEPS, QUICK_SEEDS = 150, 2
REGIME_COLORS = {"vanishing": "tab:blue", "degraded": "tab:olive", "stable": "tab:green", "exploding": "tab:red"}


def settings_for(steps: int, n_classes: int) -> TrainSettings:
    return TrainSettings(steps=steps, batch_size=BATCH, lr=LR, momentum=MOMENTUM, eval_every=max(1, steps // 10),
                         divergence_loss=10 * math.log(n_classes))


def finite_mean(values: list[float]) -> float:
    """Mean of the finite values (nan when there are none), so one diverged seed does not hide the rest."""
    finite = [v for v in values if math.isfinite(v)]
    return float(np.mean(finite)) if finite else math.nan


def classify(row: dict, n_classes: int, best_accuracy: float | None = None,
             tolerance: float = ACC_TOLERANCE) -> str:
    """The regime label of one seed-averaged row (criteria in the module docstring).

    Without ``best_accuracy`` every row that neither vanishes nor explodes counts as stable.
    """
    if row["grad_norm_init"] < TAU_VANISH and row["test_accuracy"] <= 1.0 / n_classes + ACC_MARGIN:
        return "vanishing"
    if (row["diverged_fraction"] > 0 or row["grad_norm_init"] > TAU_EXPLODE
            or not row["final_train_loss"] <= row["initial_train_loss"]):
        return "exploding"
    if best_accuracy is not None and row["test_accuracy"] < best_accuracy - tolerance:
        return "degraded"
    return "stable"


def stable_band(rows: list[dict], n_classes: int, tolerance: float) -> tuple[float, float]:
    """(smallest, largest) sigma labelled stable under ``tolerance``."""
    best = max(r["test_accuracy"] for r in rows)
    stable = [r["sigma"] for r in rows if classify(r, n_classes, best, tolerance) == "stable"]
    return min(stable), max(stable)


def sweep_sigma(sigma: float, data: Dataset, settings: TrainSettings, seeds: int) -> dict:
    """Train ``seeds`` MLPs initialised with N(0, sigma^2) and return the seed-averaged metrics."""
    runs = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        model = build_mlp([data.n_features, *HIDDEN, data.n_classes])
        init_mlp_(model, constant_std(sigma))
        runs.append(train_classifier(model, data, settings, seed))
    accuracies = [r.test_accuracy for r in runs]
    row = {"sigma": float(sigma),
           "initial_train_loss": finite_mean([r.initial_loss for r in runs]),
           "final_train_loss": finite_mean([r.final_loss for r in runs]),
           "test_accuracy": float(np.mean(accuracies)), "test_accuracy_std": float(np.std(accuracies)),
           "test_accuracy_ci95": mean_interval(accuracies).half_width,
           "grad_norm_init": finite_mean([r.grad_norm_init for r in runs]),
           "grad_norm_train_mean": finite_mean([r.grad_norm_mean for r in runs]),
           "diverged_fraction": float(np.mean([r.diverged for r in runs]))}
    return row


def run_sweep(data: Dataset, steps: int, seeds: int) -> list[dict]:
    """Seed-averaged rows per sigma, labelled against the best sigma's accuracy."""
    settings = settings_for(steps, data.n_classes)
    rows = [sweep_sigma(sigma, data, settings, seeds) for sigma in SIGMAS]
    best = max(r["test_accuracy"] for r in rows)
    for row in rows:
        row["regime"] = classify(row, data.n_classes, best)
    return rows


def _shade_regimes(ax, rows: list[dict]) -> None:
    """Colour each sigma's cell (between geometric midpoints to its neighbours) by its regime."""
    log_sigma = np.log10([r["sigma"] for r in rows])
    step = log_sigma[1] - log_sigma[0]
    for row, centre in zip(rows, log_sigma):
        ax.axvspan(10 ** (centre - step / 2), 10 ** (centre + step / 2), color=REGIME_COLORS[row["regime"]],
                   alpha=0.15, lw=0)
    for edge in (1e-2, 1e-1):  # the paper's stable band
        ax.axvline(edge, color="black", ls=":", lw=1)


def plot_sweep(rows: list[dict], title: str, path: Path) -> None:
    plt = pyplot()
    sigma = np.array([r["sigma"] for r in rows])
    col = {key: np.array([r[key] for r in rows], dtype=float) for key in rows[0] if key != "regime"}
    fig, axes = plt.subplots(3, 1, figsize=(8, 9), sharex=True)
    axes[0].errorbar(sigma, col["test_accuracy"], yerr=np.nan_to_num(col["test_accuracy_ci95"]), fmt="o-", ms=3,
                     capsize=2)
    axes[0].set_ylabel("test accuracy (95 % CI)")
    axes[1].semilogy(sigma, col["initial_train_loss"], "s--", ms=3, label="at init")
    axes[1].semilogy(sigma, col["final_train_loss"], "o-", ms=3, label="final (finite seeds)")
    axes[1].set_ylabel("train loss")
    axes[2].loglog(sigma, col["grad_norm_init"], "s--", ms=3, label="at init")
    axes[2].loglog(sigma, col["grad_norm_train_mean"], "o-", ms=3, label="mean during training")
    axes[2].axhline(TAU_VANISH, color="tab:blue", lw=0.8, ls="--", label=f"τ_vanish={TAU_VANISH:g}")
    axes[2].axhline(TAU_EXPLODE, color="tab:red", lw=0.8, ls="--", label=f"τ_explode={TAU_EXPLODE:g}")
    axes[2].set_ylabel("weight-gradient norm")
    axes[2].set_xlabel("initial weight std σ")
    for ax in axes:
        ax.set_xscale("log")
        _shade_regimes(ax, rows)
        ax.grid(True, alpha=0.3)
    for ax in axes[1:]:
        ax.legend(fontsize=7)
    handles = [plt.Rectangle((0, 0), 1, 1, color=c, alpha=0.3) for c in REGIME_COLORS.values()]
    axes[0].legend(handles, [f"{name} (measured)" for name in REGIME_COLORS], fontsize=7, loc="center left")
    axes[0].set_title(title + "\n(dotted lines: the paper's stable band 1e-2..1e-1)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path)


def band_lines(rows: list[dict], n_classes: int) -> list[str]:
    """The stable band under each tolerance of TOLERANCES_SHOWN (sensitivity of the headline band)."""
    lines = []
    for tolerance in TOLERANCES_SHOWN:
        low, high = stable_band(rows, n_classes, tolerance)
        lines.append(f"- stable band with tolerance {tolerance:g}: σ = {low:.3g} .. {high:.3g}")
    return lines


def markdown_table(rows: list[dict], caption: str, n_classes: int) -> str:
    lines = [caption, "",
             f"Regimes: vanishing = grad norm at init < {TAU_VANISH:g} and test accuracy <= chance + {ACC_MARGIN:g}; "
             f"exploding = any seed diverged (non-finite loss or final loss > 10 ln(classes)), grad norm at init "
             f"> {TAU_EXPLODE:g}, or final loss > initial loss; stable = mean test accuracy within "
             f"{ACC_TOLERANCE:g} of the best σ's; degraded otherwise. Test accuracy: mean ± 95 % t-interval.", "",
             *band_lines(rows, n_classes), "",
             "| σ | init loss | final loss | test acc | grad norm init | grad norm train | diverged | regime |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['sigma']:.3g} | {r['initial_train_loss']:.3g} | {r['final_train_loss']:.3g} | "
                     f"{r['test_accuracy']:.3f} ± {r['test_accuracy_ci95']:.3f} | {r['grad_norm_init']:.3g} | "
                     f"{r['grad_norm_train_mean']:.3g} | {r['diverged_fraction']:.2f} | {r['regime']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="folder for sweep.csv, sweep.md and sweep.png")
    parser.add_argument("--quick", action="store_true", help=f"{QUICK_STEPS} steps, {QUICK_SEEDS} seeds (CI)")
    parser.add_argument("--dataset", nargs="+", default=["digits"], metavar="ITEM",
                        help="'digits' (default, bundled with scikit-learn) or 'mnist PATH' (mnist.npz or IDX folder)")
    parser.add_argument("--seeds", type=positive_int, help="override the number of seeds")
    parser.add_argument("--steps", type=positive_int, help="override the number of SGD steps")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files in --out")
    args = parser.parse_args(argv)
    steps = args.steps or (QUICK_STEPS if args.quick else FULL_STEPS)
    seeds = args.seeds or (QUICK_SEEDS if args.quick else FULL_SEEDS)
    data = load_dataset(args.dataset)
    csv_path, md_path, png_path = prepare_outputs(args.out, ["sweep.csv", "sweep.md", "sweep.png"], args.overwrite)
    rows = run_sweep(data, steps, seeds)
    caption = (f"{data.name}: MLP {data.n_features}-{'-'.join(map(str, HIDDEN))}-{data.n_classes} ReLU, "
               f"SGD lr {LR:g} momentum {MOMENTUM:g} batch {BATCH}, {steps} steps, {seeds} seeds")
    write_csv(csv_path, rows)
    table = markdown_table(rows, caption, data.n_classes)
    md_path.write_text(table)
    plot_sweep(rows, caption, png_path)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
