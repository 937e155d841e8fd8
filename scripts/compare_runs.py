"""Ablation report over run directories: a markdown table and two figures.

    python scripts/compare_runs.py outputs/<family>/* [--out DIR] [--title T] [--overwrite]

Writes to DIR (default ``docs/ablation_<YYYYmmdd-HHMMSS>``): ``report.md`` (also printed),
``summary.csv`` (the same numbers unrounded), ``loss_curves.png`` (train solid, val dashed, one
colour per run) and ``final_layer_std.png`` (newest logged per-layer weight std vs depth, one
subplot per role, one line per run). Column definitions are written under the table.
"""

from __future__ import annotations

import argparse
import csv
import math
import statistics
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

REPO = str(Path(__file__).resolve().parent.parent)
if REPO not in sys.path:  # `python scripts/compare_runs.py` puts scripts/, not the repo root, on sys.path
    sys.path.insert(0, REPO)

from scripts.report_common import (  # noqa: E402
    INPUT_ERRORS,
    RunData,
    config_defaults,
    count_run_params,
    error_exit,
    final_layer_std,
    load_run,
    metric_series,
    order_roles,
    prepare_out_dir,
    pyplot,
)

FRACTIONS = (0.25, 0.5, 0.75)
OUTPUT_FILES = ["report.md", "summary.csv", "loss_curves.png", "final_layer_std.png"]


@dataclass
class RunSummary:
    """The table row of one run (raw numbers; formatting happens in ``markdown_table``)."""

    name: str
    init: str
    params: int | None
    tokens: int
    final_train: float
    final_val: float | None
    train_at: dict[float, tuple[int, float]] = field(default_factory=dict)  # fraction -> (step, loss)
    tokens_per_sec: float | None = None
    diverged: str = ""  # empty = no; else the reason


def init_description(init_table: dict) -> str:
    """Scheme plus the options that differ from the config defaults.

    Switched-on flags read ``+ flag``; other changes ``(key=value)``, e.g.
    ``"depth_aware (depth_init=false)"``, ``"lingua + scale_all_projections (std_factor=current_depth)"``.
    """
    defaults = config_defaults("init")
    flags, changed = [], []
    for key, value in init_table.items():
        if key == "scheme" or (key in defaults and value == defaults[key]):
            continue
        if value is True and defaults.get(key) is False:
            flags.append(key)
        else:
            changed.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    text = " + ".join([str(init_table.get("scheme", defaults["scheme"])), *flags])
    return f"{text} ({', '.join(changed)})" if changed else text


def loss_at_fraction(steps: list[int], losses: list[float], total_steps: int, fraction: float) -> tuple[int, float]:
    """(step, loss) of the logged step nearest to ``fraction * total_steps`` (the earlier one on a tie)."""
    target = fraction * total_steps
    index = min(range(len(steps)), key=lambda i: (abs(steps[i] - target), steps[i]))
    return steps[index], losses[index]


def divergence(run: RunData) -> str:
    """Why the run counts as diverged ('' if it does not): a non-finite loss, or final train loss > initial."""
    for key in ("loss/train", "loss/val"):
        for step, value in zip(*metric_series(run.records, key)):
            if not math.isfinite(value):
                return f"yes: {key} = {value} at step {step}"
    _, train = metric_series(run.records, "loss/train")
    if len(train) > 1 and train[-1] > train[0]:
        return f"yes: final train loss {train[-1]:.4f} > initial {train[0]:.4f}"
    return ""


def run_params(run: RunData) -> int | None:
    """Parameter count, or None (with a one-line warning) when the model cannot be rebuilt here."""
    try:
        return count_run_params(run)
    except (ValueError, ImportError, OSError) as exc:
        print(f"warning: {run.name}: parameter count unavailable ({str(exc).splitlines()[0]})", file=sys.stderr)
        return None


def summarize_run(run: RunData, params: int | None) -> RunSummary:
    """One table row from a run's metrics and config (see the column definitions in the report)."""
    steps, train = metric_series(run.records, "loss/train")
    if not steps:
        raise ValueError(f"{run.path / 'metrics.jsonl'} has no \"loss/train\" values; the run logged no training step")
    _, val = metric_series(run.records, "loss/val")
    tput_steps, tput = metric_series(run.records, "throughput/tokens_per_sec")
    tput_after_first = [v for s, v in zip(tput_steps, tput) if s != 1 and math.isfinite(v)]
    tokens_per_step = run.config_value("training", "global_batch_size") * run.config_value("training", "seq_len")
    total_steps = run.config_value("training", "steps")
    return RunSummary(
        name=run.name,
        init=init_description(run.config.get("init", {})),
        params=params,
        tokens=run.last_step * tokens_per_step,
        final_train=train[-1],
        final_val=val[-1] if val else None,
        train_at={f: loss_at_fraction(steps, train, total_steps, f) for f in FRACTIONS},
        tokens_per_sec=statistics.median(tput_after_first) if tput_after_first else None,
        diverged=divergence(run),
    )


def fmt_count(value: float | None) -> str:
    """3 significant digits with a k/M/B/T suffix (``1048576 -> '1.05M'``); 'n/a' for None."""
    if value is None:
        return "n/a"
    for divisor, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        text = f"{value / divisor:.3g}"
        if abs(float(text)) >= 1:
            return text + suffix
    return f"{value:.3g}"


def fmt_loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def markdown_table(summaries: list[RunSummary]) -> str:
    header = ["run", "init", "params", "tokens", "final train", "final val",
              *[f"train @{round(f * 100)}%" for f in FRACTIONS], "tokens/s", "diverged?"]
    rows = [[s.name, s.init, fmt_count(s.params), fmt_count(s.tokens), fmt_loss(s.final_train),
             fmt_loss(s.final_val), *[fmt_loss(s.train_at[f][1]) for f in FRACTIONS],
             fmt_count(s.tokens_per_sec), s.diverged or "no"] for s in summaries]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


COLUMN_NOTES = """\
Columns: *init* = scheme, `+ flag` for options switched on, `(key=value)` for other non-default
`[init]` options; *params* counts tied tensors once; *tokens* = last logged step x
global_batch_size x seq_len; *final train/val* = last logged value; *train @p%* = train loss at
the logged step nearest to p% of `training.steps` (the earlier on a tie; steps in summary.csv);
*tokens/s* = median of `throughput/tokens_per_sec` over logged steps except step 1 (warm-up and
compilation); *diverged?* = a non-finite train/val loss anywhere, or final train loss > the first
logged one."""


def write_summary_csv(summaries: list[RunSummary], path: Path) -> None:
    """The table's numbers unrounded, one row per run."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        pct = [round(f * 100) for f in FRACTIONS]
        writer.writerow(["run", "init", "params", "tokens", "final_train_loss", "final_val_loss",
                         *[c for p in pct for c in (f"step_at_{p}pct", f"train_loss_at_{p}pct")],
                         "tokens_per_sec_median", "diverged"])
        for s in summaries:
            at = [v for f in FRACTIONS for v in s.train_at[f]]
            writer.writerow([s.name, s.init, "" if s.params is None else s.params, s.tokens, repr(s.final_train),
                             "" if s.final_val is None else repr(s.final_val), *[repr(v) for v in at],
                             "" if s.tokens_per_sec is None else repr(s.tokens_per_sec), s.diverged or "no"])


def finite_points(steps: list[int], values: list[float]) -> tuple[list[int], list[float]]:
    kept = [(s, v) for s, v in zip(steps, values) if math.isfinite(v)]
    return [s for s, _ in kept], [v for _, v in kept]


def plot_loss_curves(runs: list[RunData], path: Path, title: str) -> None:
    """Train (solid) and val (dashed) loss vs step, one colour per run; non-finite points are left out."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    first_losses, highest = [], -math.inf
    for index, run in enumerate(runs):
        colour = f"C{index % 10}"
        train_steps, train = finite_points(*metric_series(run.records, "loss/train"))
        ax.plot(train_steps, train, color=colour, label=f"{run.name} train")
        val_steps, val = finite_points(*metric_series(run.records, "loss/val"))
        if val_steps:
            ax.plot(val_steps, val, color=colour, linestyle="--", marker="o", markersize=3, label=f"{run.name} val")
        first_losses += train[:1]
        highest = max([highest, *train, *val])
    if first_losses and highest > 1.5 * max(first_losses):  # a blow-up would flatten every other curve
        ax.set_ylim(top=1.5 * max(first_losses))
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_final_layer_std(runs: list[RunData], path: Path, title: str) -> bool:
    """Newest logged weight std vs layer index, one subplot per role, one line per run.

    Returns False (and writes nothing) when no run logged per-layer std.
    """
    finals = [final_layer_std(run.records) for run in runs]
    roles = order_roles({role for final in finals for role in final})
    if not roles:
        print("warning: no run logged weight_std/<role>/layer_<NN> (metrics.log_weight_std); "
              "skipping final_layer_std.png", file=sys.stderr)
        return False
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    ncols = min(3, len(roles))
    nrows = math.ceil(len(roles) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.5 * ncols, 3.5 * nrows), squeeze=False)
    for ax, role in zip(axes.flat, roles):
        for index, (run, final) in enumerate(zip(runs, finals)):
            layers = sorted(final.get(role, {}))
            if layers:
                ax.plot(layers, [final[role][layer] for layer in layers], marker="o", markersize=3,
                        color=f"C{index % 10}", label=run.name)
        ax.set(title=role, xlabel="layer", ylabel="weight std")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(roles):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize="small")
    fig.suptitle(f"{title}: final per-layer weight std")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))  # keep 0.5 inch for the title
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def unique_names(runs: list[RunData]) -> None:
    """Label runs by directory name, falling back to the path given when two names collide."""
    names = [run.name for run in runs]
    for run in runs:
        if names.count(run.name) > 1:
            run.name = str(run.path)


def report_text(runs: list[RunData], summaries: list[RunSummary], title: str, with_std_figure: bool) -> str:
    sources = "\n".join(f"- `{run.path}`" for run in runs)
    figures = "![loss curves](loss_curves.png)\n"
    if with_std_figure:
        figures += "\n![final per-layer weight std](final_layer_std.png)\n"
    return f"# {title}\n\nRuns:\n{sources}\n\n{markdown_table(summaries)}\n\n{COLUMN_NOTES}\n\n{figures}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="run directories (outputs/<run_name>/)")
    parser.add_argument("--out", type=Path, default=None, help="output directory (default docs/ablation_<time>)")
    parser.add_argument("--title", default="Ablation report", help="report heading and figure title")
    parser.add_argument("--overwrite", action="store_true", help="replace existing report files in --out")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = args.out or Path("docs") / f"ablation_{datetime.now():%Y%m%d-%H%M%S}"
    try:
        runs = [load_run(path) for path in args.run_dirs]
        unique_names(runs)
        summaries = [summarize_run(run, run_params(run)) for run in runs]
        prepare_out_dir(out_dir, OUTPUT_FILES, args.overwrite)
    except INPUT_ERRORS as exc:
        return error_exit(exc)
    plot_loss_curves(runs, out_dir / "loss_curves.png", args.title)
    with_std_figure = plot_final_layer_std(runs, out_dir / "final_layer_std.png", args.title)
    report = report_text(runs, summaries, args.title, with_std_figure)
    (out_dir / "report.md").write_text(report)
    write_summary_csv(summaries, out_dir / "summary.csv")
    print(report)
    print(f"wrote report.md, summary.csv and figures to {out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
