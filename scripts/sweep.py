"""Run a sweep: a base config x a grid of config keys x named arms, one run directory per point.

    python scripts/sweep.py SWEEP.toml [--grid KEY=V1,V2 ...] [--arms A,B] [--output-dir DIR] [--parallel N] [--prestart K]
        [--launcher "torchrun --standalone --nproc_per_node=8"] [--fail-fast] [--dry-run] [--section.key value ...]
    python scripts/sweep.py --config A.toml [B.toml ...] [--config C.toml ...] --grid job.seed=0-2 ...
        [--deadline SECONDS] [--start-by SECONDS] [--archive OUT.tar.gz] [--previous DIR_OR_TAR_GZ] [--keep-free-gb GIB]

The sweep file format, run names and what is skipped or resumed: components/sweep.py. ``--grid`` adds an
axis or replaces the file's (e.g. ``--grid job.seed=1,2`` runs a subset of the seeds); ``--arms`` keeps the
named arms only; other ``--section.key value`` pairs go to every point. ``--parallel N`` runs N points at once
(on one device: for models small enough to share it); ``--prestart K`` starts up to K more, whose start-up (imports,
data, model) runs while the N train: each waits, once built, until one of the N ends (components/training_slots.py;
single-process runs, so not with ``--launcher``).
``--dry-run`` lists the points, their state and
commands, and launches nothing. Ends with a summary (done / skipped / diverged / failed, each failure with
its one-line error) and ``<output dir>/.sweep/summary.json``; exit 1 if a point failed (a divergence is a
result, not a failure), 2 on bad input. ``--fail-fast`` stops launching after the first failure. For a machine lent for a fixed time: ``--deadline``
stops the sweep in time (running points are interrupted, resumable by the same command), ``--start-by`` starts
no point after that time (so none is begun that cannot finish before the deadline), ``--archive``
packs what a report needs into one file, ``--previous`` makes a later call skip the points an earlier one
finished (and continues its logs, so the later archive holds every launch). ``--keep-free-gb`` (default 1): no
point is started that could leave less free disk than that, judged by the largest finished run directory (a
llama_150m run keeps 0.8 GB of final weights); the sweep stops with that point failed and says how much is free.
Compare with ``python scripts/compare_runs.py <output dir>/*``.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python scripts/sweep.py` puts scripts/, not the repo root, on sys.path
    sys.path.insert(0, str(REPO))

from components import sweep  # noqa: E402


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    """(this script's options, the ``--section.key value`` overrides for every point)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("sweep_file", nargs="?", type=Path, help="sweep TOML ([sweep] base, [grid], [arms.<name>])")
    parser.add_argument("--config", type=Path, action="extend", nargs="+", default=[],
                        help="without a sweep file: config files, one arm each, named by the file's stem "
                             "(repeatable; one --config takes several, e.g. a shell glob: --config dir/*.toml)")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2", help="an axis (repeatable)")
    parser.add_argument("--arms", help="comma-separated arm names to run (default: all)")
    parser.add_argument("--output-dir", type=Path, help="where the run directories go (default: the sweep file's)")
    parser.add_argument("--parallel", type=int, default=1,
                        help="points run at once (default 1); lowered for the rest of the sweep when a point runs out "
                             "of GPU memory beside others, and that point is retried")
    parser.add_argument("--prestart", type=int, default=0, metavar="K",
                        help="start up to K points more than --parallel; each waits, once built, for one of the "
                             "--parallel training slots, so start-up overlaps training (default 0)")
    parser.add_argument("--launcher", default="", help='e.g. "torchrun --standalone --nproc_per_node=8" (default: python)')
    parser.add_argument("--fail-fast", action="store_true", help="launch nothing more after a failed point")
    parser.add_argument("--dry-run", action="store_true", help="list points and commands, launch nothing")
    parser.add_argument("--deadline", type=float, metavar="SECONDS",
                        help="after SECONDS start nothing more and stop running points (SIGTERM): they are 'interrupted'")
    parser.add_argument("--start-by", type=float, metavar="SECONDS",
                        help="after SECONDS start no point; the running ones go on (to their end or --deadline)")
    parser.add_argument("--keep-free-gb", type=float, default=1.0, metavar="GIB",
                        help="start no point that could leave less than GIB GiB free on the output directory's "
                             "disk, judged by the largest finished run directory (default 1)")
    parser.add_argument("--archive", type=Path, metavar="TAR_GZ",
                        help="at the end, pack the small files of every run directory (configs, metrics.jsonl, "
                             "finished/diverged/init_stds.json) and the sweep's logs and summary into this .tar.gz")
    parser.add_argument("--previous", type=Path, metavar="DIR_OR_TAR_GZ",
                        help="first copy in the finished/diverged run directories of an earlier call, so they are skipped, "
                             "and its logs, which this sweep continues")
    own, overrides = sweep.split_overrides(sys.argv[1:] if argv is None else argv)
    return parser.parse_args(own), overrides


def build_spec(args: argparse.Namespace, overrides: list[str]) -> sweep.SweepSpec:
    if (args.sweep_file is None) == (not args.config):
        raise sweep.SweepError("give a sweep file or --config FILE.toml ... (one of them)")
    if args.sweep_file is not None:
        spec = sweep.load_sweep_file(args.sweep_file)
    else:
        stems = [config.stem for config in args.config]
        twice = [stem for stem in stems if stems.count(stem) > 1]
        if twice:
            raise sweep.SweepError(f"two configs share the stem {twice[0]!r}, which names their runs; rename one")
        arms = {config.stem: {sweep.ARM_CONFIG: config.resolve()} for config in args.config}
        spec = sweep.SweepSpec(None, Path("outputs") / args.config[0].resolve().parent.name, arms=arms)
    spec.grid.update(sweep.parse_axis(text) for text in args.grid)
    if args.arms:
        spec.arms = sweep.select_arms(spec.arms, args.arms)
    spec.output_dir = args.output_dir or spec.output_dir
    for flag in overrides[::2]:
        if not flag.startswith("--") or "." not in flag:
            raise sweep.SweepError(f"unexpected argument {flag!r}; extra arguments are --section.key value pairs")
        if flag[2:].split("=")[0] in sweep.MANAGED_KEYS:
            raise sweep.SweepError(f"{flag} is set by the sweep per point; use --output-dir instead")
    if len(overrides) % 2:
        raise sweep.SweepError(f"{overrides[-1]} has no value; extra arguments are --section.key value pairs")
    spec.overrides = overrides
    if not args.keep_free_gb >= 0:
        raise sweep.SweepError(f"--keep-free-gb {args.keep_free_gb:g}: must be >= 0 (GiB left free on the disk)")
    if args.parallel < 1:
        raise sweep.SweepError(f"--parallel {args.parallel}: must be >= 1")
    if args.prestart < 0:
        raise sweep.SweepError(f"--prestart {args.prestart}: must be >= 0 (points started beyond --parallel)")
    if args.prestart and args.launcher:
        raise sweep.SweepError(f"--prestart {args.prestart} with --launcher: pre-started runs must be single processes "
                               "(the ranks of a multi-process launch would wait for a slot in a barrier that the "
                               "process group's timeout ends); drop --prestart or --launcher")
    if args.start_by is not None and args.deadline is not None and not 0 <= args.start_by <= args.deadline:
        raise sweep.SweepError(f"--start-by {args.start_by:g}: must be between 0 and --deadline {args.deadline:g}")
    return spec


def main(argv: list[str] | None = None) -> int:
    args, overrides = parse_args(argv)
    launcher = shlex.split(args.launcher) if args.launcher else [sys.executable]
    try:
        spec = build_spec(args, overrides)
        points = sweep.plan(spec)
    except sweep.SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.previous is not None:
        try:
            copied = sweep.import_previous(args.previous, spec.output_dir)
        except sweep.SweepError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"previous: {len(copied)} finished or diverged run(s) copied from {args.previous}", flush=True)
    if args.dry_run:
        for index, point in enumerate(points, start=1):
            state, note = sweep.point_state(point)
            print(f"[{index}/{len(points)}] {point.name} ({state}{': ' + note if note else ''}): "
                  f"{shlex.join(sweep.command(point, launcher))}")
        return 0
    outcomes = sweep.execute(points, launcher, spec.output_dir, args.parallel, args.fail_fast,
                             say=lambda line: print(line, flush=True), deadline_s=args.deadline,
                             start_by_s=args.start_by, keep_free_bytes=int(args.keep_free_gb * sweep.GIB),
                             prestart=args.prestart)
    for line in sweep.summary(outcomes, len(points), spec.output_dir):
        print(line)
    print(f"summary: {sweep.write_summary(outcomes, spec.output_dir)}; compare with: "
          f"python scripts/compare_runs.py {spec.output_dir}/*")
    if args.archive is not None:
        print(f"archive: {args.archive} ({sweep.write_archive(spec.output_dir, args.archive)} files)")
    return 1 if any(o.status == "failed" for o in outcomes) else 0


if __name__ == "__main__":
    sys.exit(main())
