"""An LR-sensitivity study against a baseline study of the same arms (docs/lr_sensitivity/README.md, L6 and L7):
did the gaps between arms at their own best lr shrink, and did each arm's best lr move?

Both studies are read as ``reporting/lr_sensitivity.py`` reads one (arms by name, each run's capped outcome).

*Gap at own best lr* of an arm: per seed, its capped outcome at its best lr minus the reference arm's at the
reference's best lr (``best_lr_differences``), mean and 95 % t-interval over shared seeds, in each study. The
verdict, pre-registered as L6: "shrank" when the study's mean |gap| is below the baseline's mean |gap| and the
study's interval excludes the baseline's mean; "grew" when the study's interval lies beyond the baseline's mean,
away from zero; else "not resolved"; no verdict below ``MIN_SEEDS_FOR_VERDICT`` shared seeds in the study.

*Best-lr move*, pre-registered as L7: the study's best lr (lowest seed-mean capped outcome) over the baseline's;
"down" when it is below the baseline's by more than ``half_step`` (a factor; L7: half the study grid's step),
"up" when above by more, else "not resolved"; no verdict below ``MIN_SEEDS_FOR_VERDICT`` seeds that ran every lr of
the arm in the study (a seed missing one has no best lr of its own). Each seed's own best lr in the study is listed
beside it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from reporting.lr_sensitivity import Arm
from reporting.stats import MIN_SEEDS_FOR_VERDICT, Interval, paired_difference, too_few_seeds

SHRANK, GREW, NOT_RESOLVED = "shrank", "grew", "not resolved"
DOWN, UP = "down", "up"


def gap_at_best(reference: Arm, arm: Arm) -> Interval:
    """``arm`` minus ``reference``, each at its own best lr, paired by seed."""
    return paired_difference(reference.at_best(), arm.at_best())[0]


def gap_verdict(baseline: Interval, study: Interval) -> str:
    """L6's verdict on the study's gap against the baseline's mean gap (module docstring)."""
    if study.n < MIN_SEEDS_FOR_VERDICT:
        return too_few_seeds(study.n)
    sign = 1.0 if baseline.mean >= 0 else -1.0
    if abs(study.mean) < abs(baseline.mean) and not study.low <= baseline.mean <= study.high:
        return SHRANK
    if min(sign * study.low, sign * study.high) > sign * baseline.mean:  # all of it farther from zero
        return GREW
    return NOT_RESOLVED


def lr_move_verdict(baseline_lr: float, study_lr: float, study_seeds: int, half_step: float) -> str:
    """L7's verdict on the best lr's move (module docstring)."""
    if study_seeds < MIN_SEEDS_FOR_VERDICT:
        return too_few_seeds(study_seeds)
    if study_lr < baseline_lr / half_step:
        return DOWN
    if study_lr > baseline_lr * half_step:
        return UP
    return NOT_RESOLVED


@dataclass(frozen=True)
class ArmChange:
    arm: str
    baseline_gap: Interval | None  # None for the reference arm
    study_gap: Interval | None
    gap_verdict: str
    baseline_lr: float
    study_lr: float
    study_seed_lrs: dict[int, float]
    lr_verdict: str


def compare(baseline: list[Arm], study: list[Arm], reference: str, half_step: float) -> list[ArmChange]:
    """One row per arm present in both studies (in the study's order); ValueError naming what is missing."""
    base, ours = {arm.name: arm for arm in baseline}, {arm.name: arm for arm in study}
    for name, arms in (("baseline", base), ("study", ours)):
        if reference not in arms:
            raise ValueError(f"--reference {reference}: no such arm in the {name} ({', '.join(arms)}); name one of "
                             "the arms both studies ran")
    shared = [name for name in ours if name in base]
    rows = []
    for name in shared:
        study_lr, baseline_lr = ours[name].best()[0], base[name].best()[0]
        if name == reference:
            gaps, verdict = (None, None), "reference"
        else:
            gaps = (gap_at_best(base[reference], base[name]), gap_at_best(ours[reference], ours[name]))
            verdict = gap_verdict(*gaps)
        rows.append(ArmChange(name, gaps[0], gaps[1], verdict, baseline_lr, study_lr, ours[name].seed_best(),
                              lr_move_verdict(baseline_lr, study_lr, len(ours[name].complete_seeds()), half_step)))
    return rows


def interval_text(interval: Interval | None) -> str:
    if interval is None:
        return "—"
    if interval.n < 2:
        return f"{interval.mean:+.3f} ({interval.n} seed)"
    return f"{interval.mean:+.3f} [{interval.low:+.3f}, {interval.high:+.3f}] ({interval.n} seeds)"


def table(rows: list[ArmChange], reference: str, baseline_label: str) -> str:
    lines = [f"## Against the baseline study ({baseline_label})", "",
             f"| arm | gap vs {reference} at own best lr, baseline | the same, this study | gap | best lr, baseline | "
             "best lr, this study (each seed's) | best lr |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        seeds = ", ".join(f"{seed}: {lr:g}" for seed, lr in sorted(r.study_seed_lrs.items()))
        lines.append(f"| {r.arm} | {interval_text(r.baseline_gap)} | {interval_text(r.study_gap)} | {r.gap_verdict} | "
                     f"{r.baseline_lr:g} | {r.study_lr:g} ({seeds}) | {r.lr_verdict} |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[ArmChange], path: Path) -> None:
    def cells(interval: Interval | None) -> list:
        return ["", "", "", ""] if interval is None else [interval.n, interval.mean, interval.low, interval.high]

    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["arm", "baseline_n", "baseline_gap", "baseline_low", "baseline_high", "study_n", "study_gap",
                         "study_low", "study_high", "gap_verdict", "baseline_best_lr", "study_best_lr", "lr_verdict"])
        for r in rows:
            writer.writerow([r.arm, *cells(r.baseline_gap), *cells(r.study_gap), r.gap_verdict, r.baseline_lr,
                             r.study_lr, r.lr_verdict])
