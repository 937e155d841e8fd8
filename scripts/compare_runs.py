"""Ablation report over run directories: per-run and per-seed-group tables, paired differences, figures.

    python scripts/compare_runs.py outputs/<family>/* [--metric KEY ...] [--out DIR] [--title T] [--overwrite]

Runs whose ``config.toml`` files differ only in ``job.seed`` (and in where they were written:
``job.run_name``, ``job.output_dir``, ``job.description``, ``checkpoint.resume``) form one *group*,
named after their run name without a ``_seed<k>`` suffix (``scripts/sweep.py`` writes such
names). Per group: mean ± 95 % t-interval over seeds of the final train and val loss and of
the final value of every ``--metric``. Per pair of groups: the paired difference over the seeds
both have, its interval and a verdict ("differs" only when the interval excludes zero; one
seed gives no verdict); see ``scripts/stats.py``.

Writes to DIR (default ``outputs/reports/compare_<YYYYmmdd-HHMMSS>``): ``report.md`` (also
printed), ``summary.csv`` (one row per run, unrounded), ``groups.csv`` and ``differences.csv``
(the group tables, unrounded), ``loss_curves.png`` (per group the mean over seeds, train solid
and val dashed, with the 95 % band where a group has several seeds) and ``final_layer_std.png``
(newest logged per-layer weight std vs depth, one subplot per role, group mean with its band).
Column definitions are written under the tables.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import math
import re
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
from scripts.stats import Interval, mean_interval, paired_difference  # noqa: E402

FRACTIONS = (0.25, 0.5, 0.75)
OUTPUT_FILES = ["report.md", "summary.csv", "groups.csv", "differences.csv", "loss_curves.png",
                "final_layer_std.png"]
# Config keys that name or place a run rather than define the experiment: runs that differ only in these
# and job.seed are seeds of one group.
NOT_EXPERIMENT_KEYS = {("job", "seed"), ("job", "run_name"), ("job", "output_dir"), ("job", "description"),
                       ("checkpoint", "resume")}
SEED_SUFFIX = re.compile(r"_seed\d+$")


@dataclass
class RunSummary:
    """The table row of one run (raw numbers; formatting happens in ``markdown_table``)."""

    name: str
    seed: int
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
        seed=run_seed(run),
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


def markdown_rows(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def markdown_table(summaries: list[RunSummary]) -> str:
    header = ["run", "seed", "init", "params", "tokens", "final train", "final val",
              *[f"train @{round(f * 100)}%" for f in FRACTIONS], "tokens/s", "diverged?"]
    rows = [[s.name, str(s.seed), s.init, fmt_count(s.params), fmt_count(s.tokens), fmt_loss(s.final_train),
             fmt_loss(s.final_val), *[fmt_loss(s.train_at[f][1]) for f in FRACTIONS],
             fmt_count(s.tokens_per_sec), s.diverged or "no"] for s in summaries]
    return markdown_rows(header, rows)


COLUMN_NOTES = """\
Columns: *init* = scheme, `+ flag` for options switched on, `(key=value)` for other non-default
`[init]` options; *params* counts tied tensors once; *tokens* = last logged step x
global_batch_size x seq_len; *final train/val* = last logged value; *train @p%* = train loss at
the logged step nearest to p% of `training.steps` (the earlier on a tie; steps in summary.csv);
*tokens/s* = median of `throughput/tokens_per_sec` over logged steps except step 1 (warm-up and
compilation); *diverged?* = a non-finite train/val loss anywhere, or final train loss > the first
logged one."""

GROUP_NOTES = """\
A *group* is the runs whose config.toml differ only in `job.seed` (and run name, output dir,
description, `checkpoint.resume`). Values are mean ± half-width of the 95 % Student-t interval
over the group's seeds (mean ± t(0.975, n-1)·s/√n, s with ddof 1); one seed shows the value alone.
A train loss is one batch; a batch is a function of (seed, step), so groups compared on the same
seeds saw the same batches. *B − A* is the mean over the seeds both groups ran of
(B's value − A's value), with its 95 % t-interval (the paired t-test's); *verdict* "differs" when
that interval excludes zero, "not resolved" when it contains zero (no difference shown at this
number of seeds, which is not evidence of equality), no verdict with one shared seed or a
non-finite value."""


@dataclass
class SeedGroup:
    """Runs of one experiment that differ only in ``job.seed``, sorted by seed."""

    name: str
    runs: list[RunData]
    summaries: list[RunSummary] = field(default_factory=list)  # one per run, same order

    @property
    def seeds(self) -> list[int]:
        return [s.seed for s in self.summaries]


def experiment_key(run: RunData) -> str:
    """The run's config without NOT_EXPERIMENT_KEYS as canonical JSON: equal for the seeds of one experiment."""
    tables = {section: {key: value for key, value in table.items() if (section, key) not in NOT_EXPERIMENT_KEYS}
              for section, table in run.config.items() if isinstance(table, dict)}
    return json.dumps(tables, sort_keys=True, default=str)


def group_name(names: list[str], taken: set[str]) -> str:
    """The run names without their ``_seed<k>`` suffix when that leaves one name, else the first name + count."""
    stems = {SEED_SUFFIX.sub("", name) for name in names}
    name = stems.pop() if len(stems) == 1 else f"{names[0]} +{len(names) - 1}"
    candidate, number = name, 2
    while candidate in taken:
        candidate, number = f"{name} #{number}", number + 1
    return candidate


def group_runs(runs: list[RunData]) -> list[SeedGroup]:
    """Seed groups (runs sorted by seed) in order of first appearance; a repeated (config, seed) is an error.

    ``summaries`` are left empty for the caller to fill (so bad input stops before any model is rebuilt).
    """
    by_key: dict[str, list[RunData]] = {}
    for run in runs:
        by_key.setdefault(experiment_key(run), []).append(run)
    groups: list[SeedGroup] = []
    for members in by_key.values():
        members.sort(key=run_seed)
        for a, b in zip(members, members[1:]):
            if run_seed(a) == run_seed(b):
                raise ValueError(f"{a.path} and {b.path} have the same config and job.seed {run_seed(a)}; "
                                 "pass only one of them")
        groups.append(SeedGroup(group_name([run.name for run in members], {g.name for g in groups}), members))
    return groups


def run_seed(run: RunData) -> int:
    return run.config_value("job", "seed")


def final_value(records: list[dict], key: str) -> float:
    """Last logged value of ``key`` (nan if the run never logged it)."""
    _, values = metric_series(records, key)
    return values[-1] if values else math.nan


def quantity_names(groups: list[SeedGroup], metrics: list[str]) -> list[str]:
    """"final train", "final val" if any run logged one, and "final <key>" per requested metric."""
    with_val = any(s.final_val is not None for g in groups for s in g.summaries)
    return ["final train", *(["final val"] if with_val else []), *[f"final {key}" for key in metrics]]


def group_values(group: SeedGroup, quantity: str) -> dict[int, float]:
    """{seed: value} of one quantity (see ``quantity_names``); nan where a run lacks it."""
    if quantity == "final train":
        return {s.seed: s.final_train for s in group.summaries}
    if quantity == "final val":
        return {s.seed: math.nan if s.final_val is None else s.final_val for s in group.summaries}
    key = quantity.removeprefix("final ")
    return {s.seed: final_value(run.records, key) for run, s in zip(group.runs, group.summaries)}


def check_metrics(runs: list[RunData], metrics: list[str]) -> None:
    """A requested metric that no run logged is a one-line error naming a few keys that exist."""
    logged = {key for run in runs for record in run.records for key in record}
    for key in metrics:
        if key not in logged:
            examples = ", ".join(sorted(k for k in logged if not k.startswith("weight_std/"))[:6])
            raise ValueError(f"--metric {key}: no run logged it; logged keys include {examples}")


def value_format(quantity: str) -> str:
    return ".4f" if quantity in ("final train", "final val") else ".4g"


def groups_table(groups: list[SeedGroup], quantities: list[str]) -> str:
    header = ["group", "init", "seeds", *quantities, "diverged"]
    rows = []
    for group in groups:
        cells = [mean_interval(list(group_values(group, q).values())).text(value_format(q)) for q in quantities]
        diverged = sum(bool(s.diverged) for s in group.summaries)
        rows.append([group.name, group.summaries[0].init, ",".join(map(str, group.seeds)), *cells,
                     f"{diverged}/{len(group.runs)}"])
    return markdown_rows(header, rows)


def differences(groups: list[SeedGroup], quantities: list[str]) -> list[tuple[str, str, str, Interval, str]]:
    """(A, B, quantity, interval of B - A over shared seeds, verdict) for every pair of groups."""
    rows = []
    for first, second in itertools.combinations(groups, 2):
        for quantity in quantities:
            interval, verdict = paired_difference(group_values(first, quantity), group_values(second, quantity))
            rows.append((first.name, second.name, quantity, interval, verdict))
    return rows


def differences_table(rows: list[tuple[str, str, str, Interval, str]]) -> str:
    header = ["A", "B", "quantity", "shared seeds", "B − A", "95 % interval", "verdict"]
    cells = []
    for a, b, quantity, interval, verdict in rows:
        fmt = value_format(quantity)
        span = (f"[{interval.low:{fmt}}, {interval.high:{fmt}}]" if interval.n >= 2 and math.isfinite(interval.half_width)
                else "n/a")
        mean = "n/a" if interval.n == 0 else format(interval.mean, fmt)
        cells.append([a, b, quantity, str(interval.n), mean, span, verdict])
    return markdown_rows(header, cells)


def write_summary_csv(summaries: list[RunSummary], groups: list[SeedGroup], path: Path) -> None:
    """The per-run table's numbers unrounded, one row per run, with its group."""
    group_of = {id(s): g.name for g in groups for s in g.summaries}
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        pct = [round(f * 100) for f in FRACTIONS]
        writer.writerow(["run", "group", "seed", "init", "params", "tokens", "final_train_loss", "final_val_loss",
                         *[c for p in pct for c in (f"step_at_{p}pct", f"train_loss_at_{p}pct")],
                         "tokens_per_sec_median", "diverged"])
        for s in summaries:
            at = [v for f in FRACTIONS for v in s.train_at[f]]
            writer.writerow([s.name, group_of[id(s)], s.seed, s.init, "" if s.params is None else s.params, s.tokens,
                             repr(s.final_train), "" if s.final_val is None else repr(s.final_val),
                             *[repr(v) for v in at],
                             "" if s.tokens_per_sec is None else repr(s.tokens_per_sec), s.diverged or "no"])


def write_group_csvs(groups: list[SeedGroup], quantities: list[str], diff_rows: list, out_dir: Path) -> None:
    """groups.csv (one row per group and quantity) and differences.csv (one row per pair and quantity), unrounded."""
    with (out_dir / "groups.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["group", "quantity", "seeds", "n", "mean", "ci95_half_width", "ci95_low", "ci95_high"])
        for group in groups:
            for quantity in quantities:
                i = mean_interval(list(group_values(group, quantity).values()))
                writer.writerow([group.name, quantity, " ".join(map(str, group.seeds)), i.n, repr(i.mean),
                                 repr(i.half_width), repr(i.low), repr(i.high)])
    with (out_dir / "differences.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["a", "b", "quantity", "shared_seeds", "mean_b_minus_a", "ci95_half_width", "ci95_low",
                         "ci95_high", "verdict"])
        for a, b, quantity, i, verdict in diff_rows:
            writer.writerow([a, b, quantity, i.n, repr(i.mean), repr(i.half_width), repr(i.low), repr(i.high), verdict])


def group_curve(group: SeedGroup, key: str) -> tuple[list[int], list[Interval]]:
    """Mean and 95 % interval over the group's seeds at every step that all its runs logged ``key`` at."""
    per_run = [dict(zip(*metric_series(run.records, key))) for run in group.runs]
    steps = sorted(set.intersection(*(set(values) for values in per_run)))
    return steps, [mean_interval([values[step] for values in per_run]) for step in steps]


def plot_band(ax, xs: list[int], intervals: list[Interval], colour: str, **line_kwargs) -> list[float]:
    """The mean line (non-finite points left out) and, where defined, the 95 % band; returns the finite means."""
    import numpy as np

    mean = np.array([i.mean for i in intervals], dtype=float)
    half = np.array([i.half_width for i in intervals], dtype=float)
    finite = np.isfinite(mean)
    ax.plot(np.array(xs)[finite], mean[finite], color=colour, **line_kwargs)
    banded = finite & np.isfinite(half)
    if banded.any():
        ax.fill_between(xs, mean - half, mean + half, where=banded, color=colour, alpha=0.2, lw=0)
    return mean[finite].tolist()


def plot_loss_curves(groups: list[SeedGroup], path: Path, title: str) -> None:
    """Per group: mean train (solid) and val (dashed) loss vs step with the 95 % band over seeds."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    first_losses, highest = [], -math.inf
    for index, group in enumerate(groups):
        colour = f"C{index % 10}"
        label = group.name if len(group.runs) == 1 else f"{group.name} ({len(group.runs)} seeds)"
        train = plot_band(ax, *group_curve(group, "loss/train"), colour, label=f"{label} train")
        val_steps, val_intervals = group_curve(group, "loss/val")
        val = plot_band(ax, val_steps, val_intervals, colour, linestyle="--", marker="o", markersize=3,
                        label=f"{label} val") if val_steps else []
        first_losses += train[:1]
        highest = max([highest, *train, *val])
    if first_losses and highest > 1.5 * max(first_losses):  # a blow-up would flatten every other curve
        ax.set_ylim(top=1.5 * max(first_losses))
    ax.set(xlabel="step", ylabel="loss (mean over seeds, 95 % band)", title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def group_final_std(group: SeedGroup) -> dict[str, dict[int, Interval]]:
    """{role: {layer: interval over seeds}} of the newest logged per-layer weight std."""
    finals = [final_layer_std(run.records) for run in group.runs]
    roles = {role for final in finals for role in final}
    return {role: {layer: mean_interval([final.get(role, {}).get(layer, math.nan) for final in finals])
                   for layer in sorted({layer for final in finals for layer in final.get(role, {})})}
            for role in roles}


def plot_final_layer_std(groups: list[SeedGroup], path: Path, title: str) -> bool:
    """Newest logged weight std vs layer index, one subplot per role, group mean with its band.

    Returns False (and writes nothing) when no run logged per-layer std.
    """
    finals = [group_final_std(group) for group in groups]
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
        for index, (group, final) in enumerate(zip(groups, finals)):
            layers = sorted(final.get(role, {}))
            if layers:
                plot_band(ax, layers, [final[role][layer] for layer in layers], f"C{index % 10}",
                          marker="o", markersize=3, label=group.name)
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


def report_text(runs: list[RunData], summaries: list[RunSummary], groups: list[SeedGroup], quantities: list[str],
                diff_rows: list, title: str, with_std_figure: bool) -> str:
    sources = "\n".join(f"- `{run.path}`" for run in runs)
    figures = "![loss curves](loss_curves.png)\n"
    if with_std_figure:
        figures += "\n![final per-layer weight std](final_layer_std.png)\n"
    diff_section = (f"## Paired differences (B − A over shared seeds)\n\n{differences_table(diff_rows)}\n\n"
                    if diff_rows else "")
    return (f"# {title}\n\nRuns:\n{sources}\n\n## Groups (mean ± 95 % interval over seeds)\n\n"
            f"{groups_table(groups, quantities)}\n\n{diff_section}{GROUP_NOTES}\n\n## Runs\n\n"
            f"{markdown_table(summaries)}\n\n{COLUMN_NOTES}\n\n{figures}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="run directories (outputs/<run_name>/)")
    parser.add_argument("--metric", action="append", default=[], metavar="KEY",
                        help="also report the final value of this metrics.jsonl key per group (repeatable), "
                             "e.g. grad_norm_total or weight_std/attn.q/mean_over_layers")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default outputs/reports/compare_<time>)")
    parser.add_argument("--title", default="Ablation report", help="report heading and figure title")
    parser.add_argument("--overwrite", action="store_true", help="replace existing report files in --out")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = args.out or Path("outputs") / "reports" / f"compare_{datetime.now():%Y%m%d-%H%M%S}"
    try:
        runs = [load_run(path) for path in args.run_dirs]
        unique_names(runs)
        check_metrics(runs, args.metric)
        groups = group_runs(runs)
        prepare_out_dir(out_dir, OUTPUT_FILES, args.overwrite)
        summary_of = {id(run): summarize_run(run, run_params(run)) for run in runs}
    except INPUT_ERRORS as exc:
        return error_exit(exc)
    summaries = [summary_of[id(run)] for run in runs]
    for group in groups:
        group.summaries = [summary_of[id(run)] for run in group.runs]
    quantities = quantity_names(groups, args.metric)
    diff_rows = differences(groups, quantities)
    plot_loss_curves(groups, out_dir / "loss_curves.png", args.title)
    with_std_figure = plot_final_layer_std(groups, out_dir / "final_layer_std.png", args.title)
    report = report_text(runs, summaries, groups, quantities, diff_rows, args.title, with_std_figure)
    (out_dir / "report.md").write_text(report)
    write_summary_csv(summaries, groups, out_dir / "summary.csv")
    write_group_csvs(groups, quantities, diff_rows, out_dir)
    print(report)
    print(f"wrote report.md, summary.csv, groups.csv, differences.csv and figures to {out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
