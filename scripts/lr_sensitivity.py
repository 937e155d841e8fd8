"""LR-sensitivity report of a sweep over learning rate x arm x seed: best lr per arm, Wortsman et al.'s LR
sensitivity, divergence, arms compared at their own best lr, attention logits and residual RMS vs lr.

    python scripts/lr_sensitivity.py outputs/<sweep> [--arm-keys init.scheme,init.std_overrides]
        [--metric loss/val] [--init-loss auto|train-step1|ln-vocab] [--tolerance 0.1] [--out DIR] [--title T] [--overwrite]
        [--include-unfinished] [--baseline RUNS ... [--reference ARM]]

The arguments are run directories, or folders of them (a sweep's output directory).

An arm is a setting of the config keys named by ``--arm-keys`` (default: every key whose resolved value
differs between the runs, other than ``optimizer.lr``, ``job.seed`` and where a run was written). Each run's
outcome is its last logged ``--metric``, capped at its loss at init (Wortsman et al. 2023); definitions are
written under the tables and in ``reporting/lr_sensitivity.py``. Unfinished runs are left out with a warning
(``--include-unfinished``: kept, every run taken at the last step all runs that did not diverge reached),
folders that are no run directory are skipped with a note, and runs from different commits or devices are warned about
(``lr_sensitivity.csv`` names each run's device).

Writes to DIR (default ``outputs/reports/lr_sensitivity_<YYYYmmdd-HHMMSS>``): ``lr_sensitivity.md`` (also
printed), ``lr_sensitivity.csv`` (one row per run), ``arms.csv``, ``differences.csv``, ``lr_sensitivity.png``
and ``.pdf`` (capped final metric vs lr per arm, 95 % t-interval bands over seeds) and, when the runs logged
``metrics.log_variance_stats``, ``lr_activations.png`` and ``.pdf``.

``--baseline`` names the runs of an earlier study of the same arms (e.g. shorter runs): the report gains a section,
and ``baseline.csv``, comparing each arm's gap to ``--reference`` at its own best lr and each arm's best lr
between the two studies (``reporting/lr_baseline.py``; the best-lr move is judged against half the geometric
step of this study's lr grid).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = str(Path(__file__).resolve().parent.parent)
if REPO not in sys.path:  # `python scripts/lr_sensitivity.py` puts scripts/, not the repo root, on sys.path
    sys.path.insert(0, REPO)

from reporting import cli, lr_baseline  # noqa: E402
from reporting.lr_sensitivity import (  # noqa: E402
    INIT_LOSS_SOURCES,
    OUTPUT_FILES,
    best_lr_differences,
    build_arms,
    common_lrs,
    plot_activations,
    plot_sensitivity,
    report_text,
    write_csvs,
)
from reporting.runs import select_runs  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = cli.report_parser(__doc__, "run directories of the sweep, or the folder holding them (outputs/<sweep>)")
    parser.add_argument("--arm-keys", default=None, metavar="KEYS",
                        help="comma-separated config keys (section.key) whose values make an arm, e.g. "
                             "init.scheme,init.std_overrides (default: every key that differs between the runs "
                             "but optimizer.lr, job.seed and the run's name and place)")
    parser.add_argument("--metric", default="loss/val",
                        help="metrics.jsonl key whose last value is a run's outcome (default loss/val)")
    parser.add_argument("--init-loss", choices=list(INIT_LOSS_SOURCES), default="auto",
                        help="the loss at init ℓ0 that caps each run: auto (the step-0 value of --metric, else the "
                             "step-1 train loss, else ln(vocab)), train-step1 (the step-1 train loss, else ln(vocab)) "
                             "or ln-vocab")
    parser.add_argument("--tolerance", type=float, default=0.1,
                        help="nats above the best seed-mean outcome that still count as good, for the width of the "
                             "good lr range in decades (default 0.1)")
    parser.add_argument("--baseline", nargs="+", metavar="RUNS",
                        help="run directories (or their folder) of an earlier study of the same arms to compare with")
    parser.add_argument("--reference", default="depth_aware",
                        help="with --baseline: the arm the gaps are taken against (default depth_aware)")
    cli.add_output_options(parser, "lr_sensitivity", "LR sensitivity")
    return parser.parse_args(argv)


def baseline_rows(args: argparse.Namespace, keys: list[str], arms: list, lrs: list[float]) -> tuple[list, float]:
    """The --baseline comparison's rows and the best-lr factor they were judged with ([] without --baseline)."""
    if not args.baseline:
        return [], 1.0
    base_runs = select_runs(args.baseline, args.include_unfinished).runs
    _, base_arms = build_arms(base_runs, keys, args.metric, args.init_loss)
    half_step = (lrs[-1] / lrs[0]) ** (1 / (2 * (len(lrs) - 1))) if len(lrs) > 1 else 1.0
    return lr_baseline.compare(base_arms, arms, args.reference, half_step), half_step


def baseline_section(args: argparse.Namespace, rows: list, half_step: float, out_dir: Path) -> str:
    """Markdown of the --baseline comparison, and baseline.csv ('' and no file without --baseline)."""
    csv_path = out_dir / "baseline.csv"
    if not rows:
        csv_path.unlink(missing_ok=True)  # (only reached with --overwrite if it existed: not a stale comparison)
        return ""
    lr_baseline.write_csv(rows, csv_path)
    return "\n" + lr_baseline.table(rows, args.reference, ", ".join(args.baseline)) + (
        f"\nGap verdicts: reporting/lr_baseline.py (shrank / grew / not resolved; none below 3 seeds). Best-lr "
        f"verdicts: down / up when this study's best lr is beyond a factor {half_step:.3g} (half the geometric step "
        f"of this study's lr grid) of the baseline's.\n")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = cli.output_dir(args.out, "lr_sensitivity")
    if not args.tolerance > 0:
        return cli.error_exit(ValueError(f"--tolerance {args.tolerance} must be > 0 (nats above the best outcome)"))
    arm_keys = [key.strip() for key in args.arm_keys.split(",") if key.strip()] if args.arm_keys is not None else None
    try:
        selection = select_runs(args.run_dirs, args.include_unfinished)
        keys, arms = build_arms(selection.runs, arm_keys, args.metric, args.init_loss)
        lrs = common_lrs(arms)
        rows, half_step = baseline_rows(args, keys, arms, lrs)
        cli.prepare_out_dir(out_dir, [*OUTPUT_FILES, "baseline.csv"], args.overwrite)
    except cli.INPUT_ERRORS as exc:
        return cli.error_exit(exc)
    against_baseline = baseline_section(args, rows, half_step, out_dir)
    diff_rows = best_lr_differences(arms)
    plot_sensitivity(arms, args.metric, args.title, out_dir / "lr_sensitivity.png")
    with_activations = plot_activations(arms, args.title, out_dir / "lr_activations.png")
    report = report_text(selection, keys, arms, lrs, diff_rows, args.metric, args.title, with_activations,
                         args.tolerance) + against_baseline
    (out_dir / "lr_sensitivity.md").write_text(report)
    write_csvs(arms, lrs, diff_rows, out_dir, args.tolerance)
    print(report)
    print(f"wrote lr_sensitivity.md, lr_sensitivity.csv, arms.csv, differences.csv and figures to {out_dir}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
