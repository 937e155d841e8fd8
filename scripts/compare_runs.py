"""Ablation report over run directories: per-run and per-seed-group tables, paired differences, figures.

    python scripts/compare_runs.py outputs/<family>/* [--metric KEY ...] [--out DIR] [--title T] [--overwrite]
        [--include-unfinished] [--band ci95|se|minmax]

Runs whose ``config.toml`` files differ only in ``job.seed`` (and in where they were written:
``job.run_name``, ``job.output_dir``, ``job.description``, ``checkpoint.resume``) form one *group*,
named after their run name without a ``_seed<k>`` suffix (``scripts/sweep.py`` writes such
names). Per group: mean ± 95 % t-interval over seeds of the final train and val loss and of
the final value of every ``--metric``. Per pair of groups: the paired difference over the seeds
both have, its interval and a verdict ("differs" only when the interval excludes zero; one
seed gives no verdict); see ``reporting/stats.py``.

Which runs count: a finished run (finished.json, or its last step logged) and a diverged one (stopped
on a non-finite loss: a result). An unfinished run (killed, or still running) is left out of the
statistics with a warning naming it and its steps done / planned; ``--include-unfinished`` keeps it,
and then every run's values are taken at the last step all runs that did not diverge reached. A
folder among the arguments that is no run directory (no config.toml, no metrics.jsonl) is skipped
with a note. Each run's and group's commit (the provenance the trainer records; "unknown" for older
runs) is shown, with a warning when the runs come from different commits or ran on different devices.

Writes to DIR (default ``outputs/reports/compare_<YYYYmmdd-HHMMSS>``): ``report.md`` (also
printed), ``summary.csv`` (one row per run, unrounded), ``groups.csv`` and ``differences.csv``
(the group tables, unrounded), ``loss_curves.png`` and ``.pdf`` (train and validation loss in two
panels, per group the mean over seeds with a band where a group has several seeds: the 95 % t-interval,
or with ``--band`` the standard error or the seeds' range; the loss at init, the step-0 row, dotted)
and ``final_layer_std.png`` and ``.pdf`` (newest logged per-layer weight std vs depth, one subplot per
role, group mean with its band).
Column definitions are written under the tables.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = str(Path(__file__).resolve().parent.parent)
if REPO not in sys.path:  # `python scripts/compare_runs.py` puts scripts/, not the repo root, on sys.path
    sys.path.insert(0, REPO)

from reporting import cli  # noqa: E402
from reporting.compare import (  # noqa: E402
    OUTPUT_FILES,
    check_metrics,
    differences,
    plot_final_layer_std,
    plot_loss_curves,
    quantity_names,
    report_text,
    run_params,
    summarize_run,
    write_group_csvs,
    write_summary_csv,
)
from reporting.groups import group_runs  # noqa: E402
from reporting.runs import select_runs, unique_names  # noqa: E402
from reporting.stats import BANDS  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.report_parser(__doc__, "run directories (outputs/<run_name>/)")
    parser.add_argument("--metric", action="append", default=[], metavar="KEY",
                        help="also report the final value of this metrics.jsonl key per group (repeatable), "
                             "e.g. grad_norm_total or weight_std/attn.q/mean_over_layers")
    parser.add_argument("--band", choices=list(BANDS), default="ci95",
                        help="band around the mean over seeds in the figures: ci95 (95 %% Student-t interval, the "
                             "default; wide with 2-3 seeds), se (± 1 standard error) or minmax (the seeds' range); "
                             "the tables always give 95 %% t-intervals")
    cli.add_output_options(parser, "compare", "Ablation report")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = cli.output_dir(args.out, "compare")
    try:
        selection = select_runs(args.run_dirs, args.include_unfinished)
        runs = selection.runs
        unique_names(runs)
        check_metrics(runs, args.metric)
        groups = group_runs(runs)
        cli.prepare_out_dir(out_dir, OUTPUT_FILES, args.overwrite)
        summary_of = {id(run): summarize_run(run, run_params(run)) for run in runs}
    except cli.INPUT_ERRORS as exc:
        return cli.error_exit(exc)
    summaries = [summary_of[id(run)] for run in runs]
    for group in groups:
        group.summaries = [summary_of[id(run)] for run in group.runs]
    quantities = quantity_names(groups, args.metric)
    diff_rows = differences(groups, quantities)
    plot_loss_curves(groups, out_dir / "loss_curves.png", args.title, args.band)
    with_std_figure = plot_final_layer_std(groups, out_dir / "final_layer_std.png", args.title, args.band)
    report = report_text(selection, summaries, groups, quantities, diff_rows, args.title, with_std_figure, args.band)
    (out_dir / "report.md").write_text(report)
    write_summary_csv(summaries, groups, out_dir / "summary.csv")
    write_group_csvs(groups, quantities, diff_rows, out_dir)
    print(report)
    print(f"wrote report.md, summary.csv, groups.csv, differences.csv and figures to {out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
