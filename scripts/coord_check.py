"""Coordinate check: the size of every layer's activations against width (or depth) over ten Adam updates.

    python scripts/coord_check.py --mode width [--widths 64,128,256,512,1024] [--parametrizations sp,mup]
    python scripts/coord_check.py --mode depth [--depths 2,4,8,16,32] [--parametrizations mup,completep,completep:0.5]

The check of Tensor Programs V (Yang et al. 2022, arXiv:2203.03466, §7.1 and Fig. 5; microsoft/mup
``mup/coord_check.py``): train the same small model at several widths for a few steps at one lr and
plot the size of each activation against width. Under a correct μP every hidden coordinate is Θ(1) in
width after the updates (log-log slope 0); under SP they grow (Adam's updates are summed over fan_in
correlated coordinates). The depth version (CompleteP, Dey et al. 2025, arXiv:2505.01618, Fig. 1) trains
one width at depths 2..32: under completep the residual stream and logits stay flat in depth, under plain
μP they grow.

Every model is trained by train.py's own loop (``experiments/train_runs.py``: its step, loss, clipping,
optimizer groups, FSDP2) on the embedded corpus, with constant lr, no weight decay and
``metrics.log_variance_stats`` at every step; the statistics of each step's forward (step 1 = the
initial model, step k after k - 1 updates) are read back from metrics.jsonl
(``components/activation_stats.py``: residual stream, branch outputs, MLP pre-activation,
attention-logit max, logits). Values are averaged over ``--seeds``; the slope is the least-squares
slope of log(value) against log(width or depth) at each step.

The verdict (``verdict``, ``EXPECTED_SLOPES``): each coordinate family's slope (the mean over its
layers) must lie within ``TOLERANCE`` of what the parametrization predicts, at init and after the
last update. The exit status is 1 when a parametrization that must pass (``REQUIRED``: mup and
completep in width, completep in depth) fails; SP (and plain μP in depth) are reported, and fail.

Writes ``<out>/coord_<mode>.csv`` (every value), ``<out>/slopes_<mode>.json`` (parametrization ->
step -> metric -> slope) and ``<out>/coord_<mode>.png`` and ``.pdf`` (one row per parametrization, four
steps as columns, one line per metric). Default ``--out outputs/coord_check``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, so `python scripts/...` works

from components.activation_stats import rms_by_depth  # noqa: E402
from experiments import train_runs  # noqa: E402
from reporting.figures import pyplot  # noqa: E402
from reporting.tables import write_rows_csv  # noqa: E402
from roles import parse_tag  # noqa: E402

STAT_PREFIXES = ("act_rms/", "act_std/", "attn_logit_max/")  # components/activation_stats.py's names


def run_args(opts: argparse.Namespace, parametrization: str, width: int, depth: int, seed: int) -> list[str]:
    """train.py arguments of one model: ``normal`` init (sigma0 0.02, width-free: classic SP), 4 heads (d_head
    grows with d), constant lr, no weight decay, every step logged with the activation statistics."""
    return ["--config", "train_configs/debug.toml", "--model.name", opts.family, "--model.dim", str(width),
            "--model.n_layers", str(depth), "--model.n_heads", "4",
            "--model.n_kv_heads", "2" if opts.family == "llama" else "4", "--init.scheme", "normal",
            "--tokenizer.max_vocab", str(opts.vocab), "--job.seed", str(seed), "--training.seq_len", "64",
            "--training.global_batch_size", str(opts.batch), "--training.steps", str(opts.steps),
            "--training.device", opts.device, "--optimizer.lr", repr(opts.lr), "--optimizer.weight_decay", "0",
            "--lr_scheduler.decay_type", "constant", "--lr_scheduler.warmup_steps", "0",
            "--metrics.log_freq", "1", "--metrics.val_freq", "0", "--metrics.log_variance_stats", "true",
            "--metrics.log_weight_std", "false", *train_runs.parametrization_args(parametrization),
            "--parametrization.base_width", str(opts.base_width),
            "--parametrization.base_depth", str(opts.base_depth), *opts.extra]


def train_and_measure(args: list[str], run_dir: Path, launcher: str) -> list[dict[str, float]]:
    """Per logged step 1..N (step k's forward has seen k - 1 updates): the activation statistics."""
    result = train_runs.run_training(args, run_dir, launcher)
    if result.diverged:
        raise ValueError(f"the run in {run_dir} diverged; lower --lr")
    # The step-0 row (logged before any update) repeats step 1's forward statistics: steps 1..N are the scan.
    return [{k: v for k, v in r.items() if k.startswith(STAT_PREFIXES)} for r in result.records if r["step"] >= 1]


def by_depth_summary(values: dict[str, float]) -> dict[str, float]:
    """Depth scans compare models of different depth: the last block's residual, block means of the rest."""
    summary = {"act_rms/logits": values["act_rms/logits"], "act_rms/residual/last": rms_by_depth(values, "act_rms/residual")[-1]}
    for family in ("act_rms/attn_out", "act_rms/mlp_out", "act_std/mlp_pre", "attn_logit_max"):
        layer_values = rms_by_depth(values, family)
        summary[f"{family}/mean"] = sum(layer_values) / len(layer_values)
    return summary


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-30)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def run_scan(opts: argparse.Namespace) -> list[dict]:
    """Rows {parametrization, x, seed, step, metric, value} over the scan (widths or depths).

    The runs go to ``opts.runs_dir`` (kept) or a temporary directory (deleted)."""
    with tempfile.TemporaryDirectory(prefix="coord_check_") as tmp:
        runs_dir = Path(opts.runs_dir or tmp)
        dataset = train_runs.prepared_dataset(run_args(opts, "sp", opts.base_width, opts.base_depth, 0))
        rows = []
        sizes = opts.widths if opts.mode == "width" else opts.depths
        for parametrization in opts.parametrizations:
            for size in sizes:
                width, depth = (size, opts.depth) if opts.mode == "width" else (opts.width, size)
                for seed in range(opts.seeds):
                    args = [*run_args(opts, parametrization, width, depth, seed), "--data.dataset", dataset]
                    run_dir = runs_dir / f"{parametrization.replace(':', '_alpha')}_{opts.mode}{size}_seed{seed}"
                    for step, values in enumerate(train_and_measure(args, run_dir, opts.launcher), start=1):
                        if opts.mode == "depth":
                            values = by_depth_summary(values)
                        rows += [{"parametrization": parametrization, "x": size, "seed": seed, "step": step,
                                  "metric": metric, "value": value} for metric, value in values.items()]
    return rows


def mean_curves(rows: list[dict]) -> dict[tuple, dict[int, float]]:
    """(parametrization, step, metric) -> {x: mean over seeds}."""
    sums: dict[tuple, dict[int, list[float]]] = {}
    for r in rows:
        sums.setdefault((r["parametrization"], r["step"], r["metric"]), {}).setdefault(r["x"], []).append(r["value"])
    return {key: {x: sum(v) / len(v) for x, v in sorted(by_x.items())} for key, by_x in sums.items()}


def slopes(rows: list[dict]) -> dict[str, dict[int, dict[str, float]]]:
    """parametrization -> step -> metric -> log-log slope against the scanned size."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for (parametrization, step, metric), curve in mean_curves(rows).items():
        out.setdefault(parametrization, {}).setdefault(step, {})[metric] = loglog_slope(
            list(curve), list(curve.values()))
    return out


# The log-log slope a correct parametrization gives each coordinate against the scanned size, at the first
# step (the initial model) and at the last (after the updates); a family's slope is the mean of its layers'.
# Width (μP, Tensor Programs V, Yang et al. 2022, arXiv:2203.03466, Table 3 and §7.1; microsoft/mup
# ``mup/coord_check.py``): hidden std ∝ 1/sqrt(fan_in) keeps every hidden coordinate Θ(1) at init; the
# readout's 1/m_d on a constant-std head makes the initial logits Θ(d^-1/2), and q.k / d_head of independent
# q, k makes the initial attention logits Θ(d_head^-1/2) = Θ(d^-1/2) at a fixed head count; after updates
# every coordinate is Θ(1) (the attention logits reach that only after many more steps than a check runs,
# so they are judged at init). Depth (CompleteP, Dey et al. 2025, arXiv:2505.01618, Table 1 and Fig. 1):
# the residual stream at the last block, the logits and the MLP pre-activations stay Θ(1) in depth.
EXPECTED_SLOPES = {
    "width": {"init": {"act_rms/residual": 0.0, "act_rms/attn_out": 0.0, "act_rms/mlp_out": 0.0,
                       "act_std/mlp_pre": 0.0, "attn_logit_max": -0.5, "act_rms/logits": -0.5},
              "trained": {"act_rms/residual": 0.0, "act_rms/attn_out": 0.0, "act_rms/mlp_out": 0.0,
                          "act_std/mlp_pre": 0.0, "act_rms/logits": 0.0}},
    "depth": {"init": {"act_rms/residual/last": 0.0, "act_std/mlp_pre/mean": 0.0, "act_rms/logits": 0.0},
              "trained": {"act_rms/residual/last": 0.0, "act_std/mlp_pre/mean": 0.0, "act_rms/logits": 0.0}},
}
TOLERANCE = 0.3  # |measured - expected slope| allowed; SP and every planted μP defect miss by > 0.35 (tests)
# Parametrizations the check must pass (the exit status); the others are reported (SP fails by design, and
# so does plain μP in depth: it has no depth rules).
REQUIRED = {"width": ("mup", "completep"), "depth": ("completep",)}


def family_of(metric: str) -> str:
    """'act_rms/attn_out/layer_01' -> 'act_rms/attn_out'; a metric without a block is its own family
    ('act_rms/logits', 'act_rms/residual/embedding', the depth summaries)."""
    tag = parse_tag(metric)
    return tag.family if tag is not None and tag.layer is not None else metric


def family_slopes(by_metric: dict[str, float]) -> dict[str, float]:
    """family -> mean of its metrics' slopes."""
    grouped: dict[str, list[float]] = {}
    for metric, slope in by_metric.items():
        grouped.setdefault(family_of(metric), []).append(slope)
    return {family: sum(v) / len(v) for family, v in grouped.items()}


def verdict(by_step: dict[int, dict[str, float]], mode: str, tolerance: float = TOLERANCE) -> list[str]:
    """The failures of one parametrization's slopes (step -> metric -> slope): [] when it passes."""
    first, last = min(by_step), max(by_step)
    failures = []
    for phase, step in (("init", first), ("trained", last)):
        measured = family_slopes(by_step[step])
        for family, expected in EXPECTED_SLOPES[mode][phase].items():
            if family not in measured:
                raise ValueError(f"the runs logged no {family} statistic; enable metrics.log_variance_stats")
            if abs(measured[family] - expected) > tolerance:
                when = "at init" if phase == "init" else f"after {last - 1} updates"
                failures.append(f"{family} {when}: slope {measured[family]:+.2f} vs {mode}, expected "
                                f"{expected:+.1f} ± {tolerance}")
    return failures


def plot(rows: list[dict], mode: str, path: Path) -> None:
    """The standard coordinate-check figure: rows = parametrizations, columns = steps, log-log axes."""
    plt = pyplot()

    curves = mean_curves(rows)
    parametrizations = sorted({k[0] for k in curves}, key=[r["parametrization"] for r in rows].index)
    all_steps = sorted({k[1] for k in curves})
    steps = sorted({all_steps[0], all_steps[1 % len(all_steps)], all_steps[len(all_steps) // 2], all_steps[-1]})
    fig, axes = plt.subplots(len(parametrizations), len(steps), figsize=(3.2 * len(steps), 3 * len(parametrizations)),
                             squeeze=False, sharex=True)
    for i, parametrization in enumerate(parametrizations):
        for j, step in enumerate(steps):
            ax = axes[i][j]
            ax.set_prop_cycle(color=plt.cm.tab20.colors)  # up to 20 distinct metrics
            for (p, s, metric), curve in curves.items():
                if p == parametrization and s == step:
                    ax.plot(list(curve), list(curve.values()), marker=".", linewidth=1, label=metric)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{parametrization}, step {step}", fontsize=9)
            if i == len(parametrizations) - 1:
                ax.set_xlabel(mode)
    axes[0][0].set_ylabel("RMS (std for mlp_pre; max for logit)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7)
    fig.tight_layout(rect=(0, 0.04 + 0.012 * len(labels) / 4, 1, 1))
    fig.savefig(path, dpi=110)
    fig.savefig(path.with_suffix(".pdf"))
    plt.close(fig)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("width", "depth"), default="width",
                        help="scan widths (μP check) or depths (CompleteP check)")
    parser.add_argument("--family", choices=("llama", "gpt2"), default="llama", help="model family")
    train_runs.add_study_options(parser, "scan")
    parser.add_argument("--widths", type=train_runs.number_list(int), default=[64, 128, 256, 512, 1024],
                        help="comma list of widths d (features) of the width scan")
    parser.add_argument("--depths", type=train_runs.number_list(int), default=[2, 4, 8, 16, 32],
                        help="comma list of depths L (blocks) of the depth scan")
    parser.add_argument("--steps", type=int, default=11,
                        help="training steps (measured at each: step k's forward has seen k - 1 updates)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds averaged per point (count)")
    parser.add_argument("--batch", type=int, default=4, help="sequences of 64 tokens per step")
    parser.add_argument("--vocab", type=int, default=512, help="tokenizer.max_vocab (tokens)")
    parser.add_argument("--lr", type=float, default=1e-2, help="AdamW lr at the base shape (constant)")
    parser.add_argument("--device", default="cpu", help="training.device: cpu or cuda")
    parser.add_argument("--runs-dir", type=Path, default=None,
                        help="keep every run directory here (default: a temporary directory, deleted)")
    parser.add_argument("--out", type=Path, default=Path("outputs/coord_check"),
                        help="directory for the CSV, slopes JSON and figure")
    parser.add_argument("extra", nargs="*", help="more --section.key value overrides for every model, after --")
    opts = parser.parse_args(argv)
    if opts.parametrizations is None:
        opts.parametrizations = train_runs.default_parametrizations(opts.mode)
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    start = time.perf_counter()
    try:
        rows = run_scan(opts)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    opts.out.mkdir(parents=True, exist_ok=True)
    write_rows_csv(rows, opts.out / f"coord_{opts.mode}.csv")
    result = slopes(rows)
    (opts.out / f"slopes_{opts.mode}.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(rows, opts.mode, opts.out / f"coord_{opts.mode}.png")
    last = max(result[opts.parametrizations[0]])
    print(f"# log-log slope against {opts.mode} at step 1 (init) and step {last}; "
          f"{time.perf_counter() - start:.0f} s")
    for metric in sorted(result[opts.parametrizations[0]][last]):
        print(f"{metric:34s} " + "  ".join(f"{p} {result[p][1][metric]:+.2f} {result[p][last][metric]:+.2f}"
                                            for p in opts.parametrizations))
    failed_required = False
    for parametrization in opts.parametrizations:
        failures = verdict(result[parametrization], opts.mode)
        required = parametrization.partition(":")[0] in REQUIRED[opts.mode]
        failed_required |= required and bool(failures)
        print(f"{parametrization}: {'FAIL' if failures else 'PASS'}" + ("" if required else " (not required)"))
        for failure in failures:
            print(f"  {failure}")
    print(f"wrote {opts.out}/coord_{opts.mode}.csv, slopes_{opts.mode}.json, coord_{opts.mode}.png")
    return 1 if failed_required else 0


if __name__ == "__main__":
    sys.exit(main())
