"""The ablation report of ``scripts/compare_runs.py``: per-run and per-seed-group tables, paired differences,
figures (the column definitions are ``COLUMN_NOTES`` and ``GROUP_NOTES``)."""

from __future__ import annotations

import csv
import itertools
import math
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from components.run_dir import RunDir
from reporting.figures import plot_band, pyplot, save_figure
from reporting.groups import SeedGroup, group_curve, run_seed
from reporting.layers import final_layer_std, order_roles
from reporting.runs import RunSelection, config_defaults, count_run_params, final_value, metric_series, selection_text
from reporting.stats import BANDS, Band, Interval, band, mean_interval, paired_difference
from reporting.tables import fmt_count, fmt_loss, markdown_rows

FRACTIONS = (0.25, 0.5, 0.75)
OUTPUT_FILES = ["report.md", "summary.csv", "groups.csv", "differences.csv", "loss_curves.png", "loss_curves.pdf",
                "final_layer_std.png", "final_layer_std.pdf"]


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
    steps_done: int = 0  # of the whole run (a report may cut its records earlier)
    steps_planned: int = 0
    status: str = ""  # RunDir.status: finished | diverged | unfinished
    commits: str = "unknown"  # the code version(s) of the run's starts


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


def divergence(run: RunDir) -> str:
    """Why the run counts as diverged ('' if it does not): a non-finite loss, or final train loss > initial."""
    for key in ("loss/train", "loss/val"):
        for step, value in zip(*metric_series(run.records, key)):
            if not math.isfinite(value):
                return f"yes: {key} = {value} at step {step}"
    _, train = metric_series(run.records, "loss/train")
    if len(train) > 1 and train[-1] > train[0]:
        return f"yes: final train loss {train[-1]:.4f} > initial {train[0]:.4f}"
    return ""


def run_params(run: RunDir) -> int | None:
    """Parameter count, or None (with a one-line warning) when the model cannot be rebuilt here."""
    try:
        return count_run_params(run)
    except (ValueError, ImportError, OSError) as exc:
        print(f"warning: {run.name}: parameter count unavailable ({str(exc).splitlines()[0]})", file=sys.stderr)
        return None


def summarize_run(run: RunDir, params: int | None) -> RunSummary:
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
        init=init_description(run.tables.get("init", {})),
        params=params,
        tokens=run.last_step * tokens_per_step,
        final_train=train[-1],
        final_val=val[-1] if val else None,
        train_at={f: loss_at_fraction(steps, train, total_steps, f) for f in FRACTIONS},
        tokens_per_sec=statistics.median(tput_after_first) if tput_after_first else None,
        diverged=divergence(run),
        steps_done=run.original.steps_done,
        steps_planned=run.original.steps_planned,
        status=run.original.status,
        commits=", ".join(run.commits),
    )


def markdown_table(summaries: list[RunSummary]) -> str:
    header = ["run", "seed", "init", "params", "tokens", "final train", "final val",
              *[f"train @{round(f * 100)}%" for f in FRACTIONS], "tokens/s", "diverged?", "steps", "status", "commit"]
    rows = [[s.name, str(s.seed), s.init, fmt_count(s.params), fmt_count(s.tokens), fmt_loss(s.final_train),
             fmt_loss(s.final_val), *[fmt_loss(s.train_at[f][1]) for f in FRACTIONS],
             fmt_count(s.tokens_per_sec), s.diverged or "no", f"{s.steps_done}/{s.steps_planned}", s.status,
             s.commits] for s in summaries]
    return markdown_rows(header, rows)


COLUMN_NOTES = """\
Columns: *init* = scheme, `+ flag` for options switched on, `(key=value)` for other non-default
`[init]` options; *params* counts tied tensors once; *tokens* = last logged step x
global_batch_size x seq_len; *final train/val* = last logged value; *train @p%* = train loss at
the logged step nearest to p% of `training.steps` (the earlier on a tie; steps in summary.csv);
*tokens/s* = median of `throughput/tokens_per_sec` over logged steps except step 1 (warm-up and
compilation); *diverged?* = a non-finite train/val loss anywhere, or final train loss > the first
logged one; *steps* = steps done / `training.steps`; *status* = finished (finished.json, or the last
step logged), diverged (stopped on a non-finite loss: a result, kept) or unfinished (left out
unless --include-unfinished); *commit* = the code version the run recorded (provenance), unknown
for runs from before it was recorded."""

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


def check_metrics(runs: list[RunDir], metrics: list[str]) -> None:
    """A requested metric that no run logged is a one-line error naming a few keys that exist."""
    logged = {key for run in runs for record in run.records for key in record}
    for key in metrics:
        if key not in logged:
            examples = ", ".join(sorted(k for k in logged if not k.startswith("weight_std/"))[:6])
            raise ValueError(f"--metric {key}: no run logged it; logged keys include {examples}")


def value_format(quantity: str) -> str:
    return ".4f" if quantity in ("final train", "final val") else ".4g"


def groups_table(groups: list[SeedGroup], quantities: list[str]) -> str:
    header = ["group", "init", "seeds", *quantities, "diverged", "commit"]
    rows = []
    for group in groups:
        cells = [mean_interval(list(group_values(group, q).values())).text(value_format(q)) for q in quantities]
        diverged = sum(bool(s.diverged) for s in group.summaries)
        commits = dict.fromkeys(commit for run in group.runs for commit in run.commits)
        rows.append([group.name, group.summaries[0].init, ",".join(map(str, group.seeds)), *cells,
                     f"{diverged}/{len(group.runs)}", ", ".join(commits)])
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
                         "tokens_per_sec_median", "diverged", "steps_done", "steps_planned", "status", "commit"])
        for s in summaries:
            at = [v for f in FRACTIONS for v in s.train_at[f]]
            writer.writerow([s.name, group_of[id(s)], s.seed, s.init, "" if s.params is None else s.params, s.tokens,
                             repr(s.final_train), "" if s.final_val is None else repr(s.final_val),
                             *[repr(v) for v in at],
                             "" if s.tokens_per_sec is None else repr(s.tokens_per_sec), s.diverged or "no",
                             s.steps_done, s.steps_planned, s.status, s.commits])


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


def init_loss(group: SeedGroup, band_kind: str) -> list[float]:
    """[the group's mean step-0 loss] (validation preferred: the trainer logs it at step 0, before any update), or
    [] when its runs logged no step-0 loss."""
    for key in ("loss/val", "loss/train"):
        steps, bands = group_curve(group, key, band_kind)
        if steps and steps[0] == 0 and math.isfinite(bands[0].mean):
            return [bands[0].mean]
    return []


def loss_panels(groups: list[SeedGroup]) -> list[str]:
    """The loss keys that get a panel: loss/train, and loss/val when any run logged it (no empty panel)."""
    return [key for key in ("loss/train", "loss/val")
            if any(key in record for group in groups for run in group.runs for record in run.records)]


def plot_loss_curves(groups: list[SeedGroup], path: Path, title: str, band_kind: str = "ci95") -> list[Path]:
    """Train and validation loss vs step in two panels (the second only when a run logged validation), per group
    the mean over seeds with a ``band_kind`` band (``reporting.stats.BANDS``), and the group's loss at init (its
    step-0 row, where logged) as a dotted line; PNG and PDF."""
    keys = loss_panels(groups)
    plt = pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(6.2 * len(keys), 4.6), squeeze=False, sharex=True, sharey=True)
    for ax, key in zip(axes.flat, keys):
        starts, highest = [], -math.inf
        for index, group in enumerate(groups):
            colour = f"C{index % 10}"
            label = group.name if len(group.runs) == 1 else f"{group.name} ({len(group.runs)} seeds)"
            steps, bands = group_curve(group, key, band_kind)
            after_init = [(step, b) for step, b in zip(steps, bands) if step > 0]
            means = plot_band(ax, [s for s, _ in after_init], [b for _, b in after_init], colour, label=label,
                              **({"marker": "o", "markersize": 3} if key == "loss/val" else {}))
            at_init = init_loss(group, band_kind)
            if at_init:
                ax.axhline(at_init[0], color=colour, linestyle=":", lw=1)
            starts += at_init or means[:1]
            highest = max([highest, *means])
        if starts and highest > 1.5 * max(starts):  # a blow-up would flatten every other curve
            ax.set_ylim(top=1.5 * max(starts))
        ax.set(xlabel="step", title=f"{'train' if key == 'loss/train' else 'validation'} loss ({key})")
        ax.grid(alpha=0.3)
    axes.flat[0].set_ylabel(f"loss: mean over seeds, band = {BANDS[band_kind]}")
    axes.flat[0].legend(fontsize="small", title="dotted: loss at init (step 0)" if any(
        init_loss(group, band_kind) for group in groups) else None, title_fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, pdf=True)


def group_final_std(group: SeedGroup, band_kind: str = "ci95") -> dict[str, dict[int, Band]]:
    """{role: {layer: mean and band over seeds}} of the newest logged per-layer weight std."""
    finals = [final_layer_std(run.records) for run in group.runs]
    roles = {role for final in finals for role in final}
    return {role: {layer: band([final.get(role, {}).get(layer, math.nan) for final in finals], band_kind)
                   for layer in sorted({layer for final in finals for layer in final.get(role, {})})}
            for role in roles}


def plot_final_layer_std(groups: list[SeedGroup], path: Path, title: str, band_kind: str = "ci95") -> bool:
    """Newest logged weight std vs layer index, one subplot per role, group mean with its ``band_kind`` band;
    PNG and PDF. Returns False (and writes nothing) when no run logged per-layer std.
    """
    finals = [group_final_std(group, band_kind) for group in groups]
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
    fig.suptitle(f"{title}: final per-layer weight std (mean over seeds, band = {BANDS[band_kind]})")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / fig.get_figheight()))  # keep 0.5 inch for the title
    save_figure(fig, path, pdf=True)
    return True


def report_text(selection: RunSelection, summaries: list[RunSummary], groups: list[SeedGroup], quantities: list[str],
                diff_rows: list, title: str, with_std_figure: bool, band_kind: str = "ci95") -> str:
    runs = selection.runs
    sources = "\n".join(f"- `{run.path}`" for run in runs) + "\n" + selection_text(selection)
    figures = (f"Figures (PNG, and PDF next to them): lines are means over a group's seeds, bands the "
               f"{BANDS[band_kind]} over them (none for one seed); dotted lines the loss at init (the step-0 row, "
               "where logged).\n\n![loss curves](loss_curves.png)\n")
    if with_std_figure:
        figures += "\n![final per-layer weight std](final_layer_std.png)\n"
    diff_section = (f"## Paired differences (B − A over shared seeds)\n\n{differences_table(diff_rows)}\n\n"
                    if diff_rows else "")
    return (f"# {title}\n\nRuns:\n{sources}\n## Groups (mean ± 95 % interval over seeds)\n\n"
            f"{groups_table(groups, quantities)}\n\n{diff_section}{GROUP_NOTES}\n\n## Runs\n\n"
            f"{markdown_table(summaries)}\n\n{COLUMN_NOTES}\n\n{figures}")
