"""Variance propagation through deep random MLPs: the theory of the paper's claim 1, and a measurement.

For z ~ N(0, 1) the two activation constants are c_phi = E[phi(z)^2] (the library's
``init_schemes.schemes.gaussian_second_moment``, the same number the ``kaiming`` scheme's gain uses)
and d_phi = E[phi'(z)^2]; at other variances q, E[phi(sqrt(q) z)^2] and E[phi'(sqrt(q) z)^2] come from
adaptive quadrature (``init_schemes.meanfield.activation_moments``). The activations are the library's
(``init_schemes.schemes.ACTIVATIONS``): GELU is GPT-2's tanh approximation, as in ``models/common.py``. With Var(w) = g / fan_in the forward second
moment is preserved when g * c_phi = 1 (Kaiming gain^2 = 1 / c_phi; 2 for ReLU since c = 1/2)
and the backward one when g * d_phi = 1 (for square layers), so both hold only if c_phi = d_phi.

Measurement: a depth-L, width-n MLP h_l = W_l phi(h_{l-1}) (no biases), h_0 ~ N(0, I) so every layer
sees a unit-variance "pre-activation" and the recursion has no special first layer. Weights
W_l ~ N(0, sigma_w^2) with sigma_w from a scheme: kaiming 1/sqrt(c_phi n), xavier sqrt(2/(n+n)),
small 1e-3, large 1. q_l = E[h_l^2] is measured in float64 (the small/large schemes reach 1e-180 and
1e+120); the backward moment b_l = E[(dL/dh_l)^2] comes from autograd with a random N(0, 1) cotangent
on h_L (so b_L = 1). Both are kept PER INPUT (mean over the width's units of one input's h_l^2), because
the mean over inputs can be carried by a few inputs: where the fixed point is unstable (GELU, SiLU
under Kaiming) single inputs vanish or explode, and the exploding few dominate the mean. Per seed the
end-to-end ratios of its inputs (forward q_L / q_0, backward b_0 / b_L) are summarised by their
median, 10 % and 90 % quantiles and the fractions that vanish (ratio < 1e-3) or explode (> 1e3).
Mean-field prediction:
    q_l = n sigma_w^2 E[phi(sqrt(q_{l-1}) z)^2]        (ReLU: n sigma_w^2 q_{l-1} / 2)
    b_{l-1} = n sigma_w^2 E[phi'(sqrt(q_{l-1}) z)^2] b_l  (ReLU: n sigma_w^2 b_l / 2)

Full run: ReLU, tanh, GELU and SiLU, depth 50, width 512, 64 inputs, 10 seeds. Per (activation,
scheme) the seed-mean ratios (mean over inputs, then seeds) are also summarised per seed (geometric
mean with a 95 % interval, range, seeds within 10 %), since the ratio of seed means can sit near 1
while single seeds do not.

Usage: python scripts/paper/variance_propagation.py [--json] [--out DIR] [--quick] [--overwrite]
With --out it writes variance_propagation.csv (one row per activation, scheme, layer: the mean over
inputs as before, and the per-input 10/50/90 % quantiles pooled over seeds), variance_propagation_seeds.csv
(one row per activation, scheme, seed: the per-input statistics of the end-to-end ratios) and
variance_propagation.png (per-input median and 10-90 % band vs depth, log scale; predicted dashed).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

if __package__ in (None, ""):  # run as `python scripts/paper/...py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from experiments.mlp import positive_int, prepare_outputs, pyplot, run_cli, save_figure, write_csv  # noqa: E402
from init_schemes.meanfield import ACTIVATIONS, activation_moments, fixed_point_slope  # noqa: E402
from init_schemes.schemes import gaussian_second_moment, kaiming_gain  # noqa: E402
from reporting.stats import mean_interval  # noqa: E402

WITHIN = 0.10  # "kept within 10 %": a per-seed end-to-end ratio in [1/1.1, 1.1]
VANISH = 1e-3  # an input "vanishes" when its end-to-end ratio is below this (30 dB down)
EXPLODE = 1e3  # ... and "explodes" above this; both far outside ReLU's per-input spread under Kaiming (0.18..2.7)
QUANTILES = (0.1, 0.5, 0.9)  # per-input quantiles reported: 10 %, median, 90 %

SCHEMES = ("kaiming", "xavier", "small", "large")
SMALL_SIGMA, LARGE_SIGMA = 1e-3, 1.0


def moment_table(names=tuple(ACTIVATIONS)) -> dict[str, dict[str, float]]:
    """c (the library's ``gaussian_second_moment``), d, the forward (Kaiming) and backward gains^2,
    d/c = per-layer backward growth under Kaiming, and the forward map's slope at the Kaiming fixed point."""
    table = {}
    for name in names:
        c, d = gaussian_second_moment(name), activation_moments(name)[1]
        table[name] = {"c": c, "d": d, "kaiming_gain_sq": 1.0 / c, "backward_gain_sq": 1.0 / d,
                       "backward_growth_per_layer_kaiming": d / c, "fixed_point_slope": fixed_point_slope(name)}
    return table


def scheme_sigma(scheme: str, activation: str, width: int) -> float:
    """Weight std of a square width x width layer under ``scheme``."""
    if scheme == "kaiming":  # the library's gain, 1 / sqrt(c_phi): what --init.scheme kaiming draws
        return kaiming_gain(activation) / math.sqrt(width)
    if scheme == "xavier":
        return math.sqrt(2.0 / (width + width))
    if scheme == "small":
        return SMALL_SIGMA
    if scheme == "large":
        return LARGE_SIGMA
    raise ValueError(f"unknown scheme {scheme!r}; choose from {', '.join(SCHEMES)}")


def predicted_moments(activation: str, sigma_w: float, width: int, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean-field (q_l, b_l) for l = 0..depth with q_0 = 1, b_depth = 1; arrays of shape [depth + 1]."""
    forward = np.empty(depth + 1)
    backward = np.empty(depth + 1)
    forward[0] = 1.0
    gain = width * sigma_w**2
    for layer in range(1, depth + 1):
        forward[layer] = gain * activation_moments(activation, forward[layer - 1])[0]
    backward[depth] = 1.0
    for layer in range(depth, 0, -1):
        backward[layer - 1] = gain * activation_moments(activation, forward[layer - 1])[1] * backward[layer]
    return forward, backward


def measure_moments(activation: str, sigma_w: float, width: int, depth: int, batch: int,
                    seeds: int) -> tuple[np.ndarray, np.ndarray]:
    """Measured (q, b) per input: float64 arrays [seeds, batch, depth + 1] of the mean over units of one
    input's h_l^2 and (dL/dh_l)^2. Averaging over axis 1 gives E[h_l^2] and E[(dL/dh_l)^2] of the seed."""
    phi = ACTIVATIONS[activation].torch_phi
    forward = np.empty((seeds, batch, depth + 1))
    backward = np.empty((seeds, batch, depth + 1))
    for seed in range(seeds):
        torch.manual_seed(seed)
        hidden = [torch.randn(batch, width, dtype=torch.float64, requires_grad=True)]  # h_0: [batch, width]
        for _ in range(depth):
            weight = torch.randn(width, width, dtype=torch.float64) * sigma_w  # [fan_out, fan_in]
            hidden.append(phi(hidden[-1]) @ weight.T)
            hidden[-1].retain_grad()
        cotangent = torch.randn(batch, width, dtype=torch.float64)  # dL/dh_depth, unit second moment
        (hidden[-1] * cotangent).sum().backward()
        forward[seed] = torch.stack([h.detach().pow(2).mean(dim=1) for h in hidden], dim=1).numpy()
        backward[seed] = torch.stack([h.grad.pow(2).mean(dim=1) for h in hidden], dim=1).numpy()
    return forward, backward


def input_ratio_stats(ratios: np.ndarray) -> dict[str, float]:
    """Per-input end-to-end ratios of one seed ([inputs]) summarised: 10/50/90 % quantiles and the
    fractions of inputs that vanish (< VANISH) and explode (> EXPLODE)."""
    ratios = np.asarray(ratios, dtype=np.float64)
    if ratios.ndim != 1 or ratios.size == 0:
        raise ValueError(f"expected a non-empty 1-d array of per-input ratios, got shape {ratios.shape}")
    p10, p50, p90 = np.quantile(ratios, QUANTILES)
    return {"p10": float(p10), "median": float(p50), "p90": float(p90),
            "vanish_fraction": float(np.mean(ratios < VANISH)), "explode_fraction": float(np.mean(ratios > EXPLODE))}


def end_to_end_ratios(forward: np.ndarray, backward: np.ndarray) -> dict[str, np.ndarray]:
    """Per-input end-to-end ratios from [..., depth + 1] moments: forward q_L / q_0, backward b_0 / b_L."""
    return {"forward": forward[..., -1] / forward[..., 0], "backward": backward[..., 0] / backward[..., -1]}




@dataclass(frozen=True)
class Setup:
    """Size of the measured network and which (activation, scheme) pairs to run."""

    activations: tuple[str, ...]
    depth: int
    width: int
    batch: int
    seeds: int


FULL = Setup(("relu", "tanh", "gelu", "silu"), depth=50, width=512, batch=64, seeds=10)
QUICK = Setup(("relu",), depth=50, width=512, batch=16, seeds=4)



@dataclass
class Curves:
    """Per-depth moments of one (activation, scheme); layer 0 = input."""

    activation: str
    scheme: str
    sigma_w: float
    forward_per_input: np.ndarray  # [seeds, inputs, depth + 1]
    backward_per_input: np.ndarray  # [seeds, inputs, depth + 1]
    forward_predicted: np.ndarray  # [depth + 1]
    backward_predicted: np.ndarray  # [depth + 1]

    @property
    def forward_per_seed(self) -> np.ndarray:
        """E[h_l^2] of each seed (mean over its inputs): [seeds, depth + 1]."""
        return self.forward_per_input.mean(axis=1)

    @property
    def backward_per_seed(self) -> np.ndarray:
        return self.backward_per_input.mean(axis=1)

    @property
    def forward_measured(self) -> np.ndarray:
        return self.forward_per_seed.mean(axis=0)

    @property
    def backward_measured(self) -> np.ndarray:
        return self.backward_per_seed.mean(axis=0)

    def input_quantiles(self, direction: str) -> np.ndarray:
        """[3, depth + 1]: 10/50/90 % quantiles over all seeds' inputs of q_l / q_0 (forward) or b_l / b_L."""
        moments = self.forward_per_input if direction == "forward" else self.backward_per_input
        anchor = moments[..., :1] if direction == "forward" else moments[..., -1:]
        ratios = (moments / anchor).reshape(-1, moments.shape[-1])
        return np.quantile(ratios, QUANTILES, axis=0)

    def per_seed_input_stats(self) -> list[dict]:
        """One row per seed: ``input_ratio_stats`` of its inputs' forward and backward end-to-end ratios."""
        ratios = end_to_end_ratios(self.forward_per_input, self.backward_per_input)
        rows = []
        for seed in range(self.forward_per_input.shape[0]):
            row: dict = {"activation": self.activation, "scheme": self.scheme, "seed": seed,
                         "inputs": self.forward_per_input.shape[1]}
            for direction, values in ratios.items():
                row.update({f"{direction}_{key}": value for key, value in input_ratio_stats(values[seed]).items()})
            rows.append(row)
        return rows

    def summary(self) -> dict:
        """End-to-end ratios: forward q_L / q_0 and backward b_0 / b_L, measured and predicted.

        ``*_ratio_measured`` is the ratio of the seed means; the per-seed ratios r_s (of the mean over
        inputs) also give their geometric mean exp(mean ln r_s) with the 95 % t-interval of mean ln r_s
        mapped through exp (a multiplicative interval, since r_s spans orders of magnitude), their range,
        and how many seeds end within 10 % of 1. Per input: the range over seeds of the per-seed median
        ratio, the 10/50/90 % quantiles pooled over all seeds' inputs, the pooled fractions of inputs that
        vanish and explode, and ``per_seed`` (``per_seed_input_stats``).
        """
        fwd, bwd = self.forward_measured, self.backward_measured
        row: dict = {"sigma_w": self.sigma_w,
                     "forward_ratio_measured": fwd[-1] / fwd[0],
                     "forward_ratio_predicted": self.forward_predicted[-1] / self.forward_predicted[0],
                     "backward_ratio_measured": bwd[0] / bwd[-1],
                     "backward_ratio_predicted": self.backward_predicted[0] / self.backward_predicted[-1]}
        per_seed = end_to_end_ratios(self.forward_per_seed, self.backward_per_seed)
        per_input = end_to_end_ratios(self.forward_per_input, self.backward_per_input)
        seed_rows = self.per_seed_input_stats()
        for direction, ratios in per_seed.items():
            log_interval = mean_interval([math.log(r) for r in ratios])
            row[f"{direction}_ratio_geomean"] = math.exp(log_interval.mean)
            row[f"{direction}_ratio_ci95_low"] = math.exp(log_interval.low)
            row[f"{direction}_ratio_ci95_high"] = math.exp(log_interval.high)
            row[f"{direction}_ratio_seed_min"] = float(ratios.min())
            row[f"{direction}_ratio_seed_max"] = float(ratios.max())
            row[f"{direction}_seeds_within_10pct"] = int(np.sum(np.abs(np.log(ratios)) <= math.log(1 + WITHIN)))
            medians = [seed_row[f"{direction}_median"] for seed_row in seed_rows]
            row[f"{direction}_input_median_seed_min"] = float(min(medians))
            row[f"{direction}_input_median_seed_max"] = float(max(medians))
            pooled = input_ratio_stats(per_input[direction].reshape(-1))
            row.update({f"{direction}_input_{key}_pooled": value for key, value in pooled.items()})
        row["per_seed"] = seed_rows
        return row


def run_measurements(setup: Setup) -> list[Curves]:
    """Measured and predicted curves for every activation in ``setup`` and every scheme."""
    curves = []
    for activation in setup.activations:
        for scheme in SCHEMES:
            sigma_w = scheme_sigma(scheme, activation, setup.width)
            forward, backward = measure_moments(activation, sigma_w, setup.width, setup.depth, setup.batch,
                                                setup.seeds)
            predicted = predicted_moments(activation, sigma_w, setup.width, setup.depth)
            curves.append(Curves(activation, scheme, sigma_w, forward, backward, *predicted))
    return curves


def csv_rows(curves: list[Curves]) -> list[dict]:
    """One row per (activation, scheme, layer): the mean over inputs (mean, min and max over seeds) and
    the per-input 10/50/90 % quantiles pooled over seeds (q_l / q_0 forward, b_l / b_L backward)."""
    rows = []
    for curve in curves:
        quantiles = {direction: curve.input_quantiles(direction) for direction in ("forward", "backward")}
        for layer in range(curve.forward_per_seed.shape[1]):
            fwd, bwd = curve.forward_per_seed[:, layer], curve.backward_per_seed[:, layer]
            row = {"activation": curve.activation, "scheme": curve.scheme, "sigma_w": curve.sigma_w,
                   "layer": layer, "forward_measured": float(fwd.mean()),
                   "forward_measured_min": float(fwd.min()), "forward_measured_max": float(fwd.max()),
                   "forward_predicted": float(curve.forward_predicted[layer]),
                   "backward_measured": float(bwd.mean()),
                   "backward_measured_min": float(bwd.min()), "backward_measured_max": float(bwd.max()),
                   "backward_predicted": float(curve.backward_predicted[layer])}
            for direction, values in quantiles.items():
                for level, name in zip(values[:, layer], ("p10", "median", "p90")):
                    row[f"{direction}_input_{name}"] = float(level)
            rows.append(row)
    return rows


def seed_csv_rows(curves: list[Curves]) -> list[dict]:
    """One row per (activation, scheme, seed): ``Curves.per_seed_input_stats``."""
    return [row for curve in curves for row in curve.per_seed_input_stats()]


SCHEME_COLORS = {"kaiming": "tab:blue", "xavier": "tab:orange", "small": "tab:green", "large": "tab:red"}


def _plot_band(ax, layers, quantiles: np.ndarray, color: str, label: str | None) -> None:
    """Per-input median (line) and 10-90 % band of one curve on a log axis."""
    ax.fill_between(layers, quantiles[0], quantiles[2], color=color, alpha=0.2, lw=0)
    ax.semilogy(layers, quantiles[1], "-", color=color, lw=1.2, label=label)


def plot_curves(curves: list[Curves], setup: Setup, path: Path) -> None:
    """One row per activation: per-input forward and backward ratios vs depth for all schemes (median, 10-90 %
    band; mean-field dashed), then Kaiming alone: the per-input median and band against the mean over inputs."""
    plt = pyplot()
    rows = len(setup.activations)
    fig, axes = plt.subplots(rows, 3, figsize=(14, 3.3 * rows), squeeze=False)
    layers = np.arange(setup.depth + 1)
    for curve in curves:
        row = setup.activations.index(curve.activation)
        color = SCHEME_COLORS[curve.scheme]
        label = f"{curve.scheme} σ_w={curve.sigma_w:.3g}"
        _plot_band(axes[row, 0], layers, curve.input_quantiles("forward"), color, label)
        axes[row, 0].semilogy(layers, curve.forward_predicted, "--", color="black", lw=0.8)
        _plot_band(axes[row, 1], layers, curve.input_quantiles("backward"), color, None)
        axes[row, 1].semilogy(layers, curve.backward_predicted / curve.backward_predicted[-1], "--", color="black", lw=0.8)
        if curve.scheme == "kaiming":
            ax = axes[row, 2]
            _plot_band(ax, layers, curve.input_quantiles("forward"), color, "per input: median, 10-90 %")
            ax.semilogy(layers, curve.forward_measured / curve.forward_measured[0], "o-", ms=3, markevery=5,
                        color="tab:purple", lw=1.0, label="mean over inputs and seeds")
            ax.semilogy(layers, curve.forward_predicted, "--", color="black", lw=0.8, label="mean field")
            ax.axhline(VANISH, color="grey", lw=0.6, ls=":")
            ax.axhline(EXPLODE, color="grey", lw=0.6, ls=":")
    for row, activation in enumerate(setup.activations):
        axes[row, 0].set_title(f"{activation}: forward q_l/q_0 per input (dashed: mean field)", fontsize=9)
        axes[row, 1].set_title(f"{activation}: backward b_l/b_L per input", fontsize=9)
        axes[row, 2].set_title(f"{activation}, kaiming: forward per input vs mean (dotted: 1e-3, 1e3)", fontsize=9)
        for ax in axes[row]:
            ax.set_xlabel("layer l", fontsize=8)
            ax.tick_params(labelsize=7)
        axes[row, 0].legend(fontsize=7, loc="lower left")
        axes[row, 2].legend(fontsize=7, loc="upper left")
    fig.suptitle(f"Second moments through a random MLP: depth {setup.depth}, width {setup.width}, "
                 f"{setup.seeds} seeds x {setup.batch} inputs (line: per-input median; band: 10-90 %; dashed: mean field)",
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, path, dpi=72)


def report(curves: list[Curves], table: dict, setup: Setup) -> dict:
    """The --json object: constants per activation plus the measured/predicted end-to-end ratios."""
    measured: dict = {"setup": {"depth": setup.depth, "width": setup.width, "batch": setup.batch,
                                "seeds": setup.seeds, "vanish_below": VANISH, "explode_above": EXPLODE}}
    for curve in curves:
        measured.setdefault(curve.activation, {})[curve.scheme] = curve.summary()
    return {**table, "measured": measured}


def print_table(result: dict) -> None:
    print(f"{'activation':<10} {'c=E[phi^2]':>11} {'d=E[phi_^2]':>11} {'gain^2=1/c':>11} {'d/c':>7} {'slope':>7}")
    for name, row in result.items():
        if name != "measured":
            print(f"{name:<10} {row['c']:>11.6f} {row['d']:>11.6f} {row['kaiming_gain_sq']:>11.4f} "
                  f"{row['backward_growth_per_layer_kaiming']:>7.4f} {row['fixed_point_slope']:>7.4f}")
    setup = result["measured"]["setup"]
    print(f"\nend-to-end ratios, depth {setup['depth']}, width {setup['width']} (measured / predicted)")
    for activation, schemes in result["measured"].items():
        if activation == "setup":
            continue
        for scheme, row in schemes.items():
            print(f"{activation:<6} {scheme:<8} sigma_w={row['sigma_w']:<9.4g} "
                  f"q_L/q_0 {row['forward_ratio_measured']:.3e} / {row['forward_ratio_predicted']:.3e}   "
                  f"b_0/b_L {row['backward_ratio_measured']:.3e} / {row['backward_ratio_predicted']:.3e}")
            for direction in ("forward", "backward"):
                print(f"    {direction:<8} per seed: geomean {row[f'{direction}_ratio_geomean']:.3g} "
                      f"[95% {row[f'{direction}_ratio_ci95_low']:.3g}, {row[f'{direction}_ratio_ci95_high']:.3g}], "
                      f"range {row[f'{direction}_ratio_seed_min']:.3g}..{row[f'{direction}_ratio_seed_max']:.3g}, "
                      f"{row[f'{direction}_seeds_within_10pct']}/{setup['seeds']} seeds within 10%")
                print(f"    {direction:<8} per input: median {row[f'{direction}_input_median_pooled']:.3g} "
                      f"[10-90% {row[f'{direction}_input_p10_pooled']:.3g}, {row[f'{direction}_input_p90_pooled']:.3g}], "
                      f"per-seed medians {row[f'{direction}_input_median_seed_min']:.3g}.."
                      f"{row[f'{direction}_input_median_seed_max']:.3g}, "
                      f"vanish {100 * row[f'{direction}_input_vanish_fraction_pooled']:.1f}%, "
                      f"explode {100 * row[f'{direction}_input_explode_fraction_pooled']:.1f}%")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument("--out", help="folder for variance_propagation.csv and .png (nothing written without it)")
    parser.add_argument("--quick", action="store_true", help="ReLU only, 4 seeds, batch 16 (CI)")
    parser.add_argument("--seeds", type=positive_int, help="override the number of seeds")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files in --out")
    args = parser.parse_args(argv)
    setup = QUICK if args.quick else FULL
    if args.seeds:
        setup = Setup(setup.activations, setup.depth, setup.width, setup.batch, args.seeds)
    names = ["variance_propagation.csv", "variance_propagation_seeds.csv", "variance_propagation.png"]
    paths = prepare_outputs(args.out, names, args.overwrite) if args.out else None
    curves = run_measurements(setup)
    result = report(curves, moment_table(), setup)
    if paths:
        write_csv(paths[0], csv_rows(curves))
        write_csv(paths[1], seed_csv_rows(curves))
        plot_curves(curves, setup, paths[2])
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print_table(result)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
