"""Where the time of a sweep's runs went when they shared one GPU (reporting/sweep_timing.py): per run the
training loop, its first step, every later step and the rest; over the sweep, the tokens per second the GPU
gave k runs in their loops at once. Prints a markdown report.

    python scripts/sweep_timing.py RUNS_DIR --summary SUMMARY.json

RUNS_DIR holds the run directories; SUMMARY.json (a sweep's ``.sweep/summary.json``) names the runs to time:
those it lists as "done" (launched and finished by that sweep invocation), and gives each one's seconds from
launch to exit. Exit 2 with one line on bad input.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python scripts/sweep_timing.py` puts scripts/, not the repo root, on sys.path
    sys.path.insert(0, str(REPO))

from reporting import cli, runs, sweep_timing  # noqa: E402


def done_points(summary: Path) -> dict[str, float]:
    """{run name: seconds from launch to exit} of the points a sweep summary lists as done."""
    try:
        outcomes = json.loads(summary.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{summary}: cannot read a sweep summary ({err}); give <output dir>/.sweep/summary.json") from None
    done = {o["name"]: o["seconds"] for o in outcomes if isinstance(o, dict) and o.get("status") == "done"}
    if not done:
        raise ValueError(f"{summary}: lists no point as done; give the summary of a sweep that ran points")
    return done


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def phase_rows(timings: list[sweep_timing.RunTiming], launched_s: list[float]) -> list[str]:
    """A table splitting launch to exit into train.py's timeline phases, over the runs whose finished.json has it."""
    phases = [p for t, s in zip(timings, launched_s) if (p := t.phases(s)) is not None]
    if not phases:
        return []
    names = [what for _, _, what in sweep_timing.PHASES] + ["process exit (launch to exit − the last mark)"]
    return ["", f"| launch to exit by phase (finished.json timeline_s, {len(phases)} runs), seconds | mean (min–max) |",
            "|---|---|", *(f"| {name} | {spread([p[i] for p in phases])} |" for i, name in enumerate(names))]


def report(timings: list[sweep_timing.RunTiming], launched_s: list[float]) -> list[str]:
    lines = [f"# {len(timings)} runs, {timings[0].tokens_per_step} tokens per step", "",
             "| per run, seconds | mean (min–max) |", "|---|---|",
             f"| launch to exit (summary.json) | {spread(launched_s)} |",
             f"| training loop (finished.json wall_s) | {spread([t.loop_s for t in timings])} |",
             f"| outside the loop (launch to exit − loop) | {spread([s - t.loop_s for s, t in zip(launched_s, timings)])} |",
             f"| first step (compilation) | {spread([t.first_step_s for t in timings])} |",
             f"| each later step | {spread([t.later_step_s for t in timings])} |",
             f"| rest of the loop (validation, logging) | {spread([t.rest_s for t in timings])} |",
             *phase_rows(timings, launched_s), ""]
    unplaced = sum(not t.intervals for t in timings)
    if unplaced == len(timings):
        return [*lines, f"No timeline: none of the {unplaced} runs has an end time in its provenance."]
    lines += ["| runs in their loops at once | fraction of the time | summed tokens/s |", "|---|---|---|"]
    for k, (fraction, rate) in sweep_timing.concurrency(timings).items():
        lines.append(f"| {k} | {fraction:.2f} | {rate:,.0f} |")
    return lines + ([f"({unplaced} runs without an end time are not on this timeline.)"] if unplaced else [])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs_dir", type=Path, help="folder of run directories")
    parser.add_argument("--summary", type=Path, required=True, help="the sweep's summary.json: which runs to time")
    args = parser.parse_args(argv)
    done = done_points(args.summary)
    missing = [name for name in done if not (args.runs_dir / name).is_dir()]
    if missing:
        raise ValueError(f"{args.runs_dir}: no run directory {missing[0]} (of {len(missing)} listed as done); "
                         "give the folder holding that sweep's runs")
    timings = [sweep_timing.run_timing(runs.load_run(args.runs_dir / name)) for name in done]
    print("\n".join(report(timings, list(done.values()))))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run_cli(main))
