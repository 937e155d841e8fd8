"""Seed groups (docs/design.md §11): runs whose config.toml differ only in ``job.seed`` and in keys that name or
place a run, with the mean and 95 % interval of a metric over a group's seeds."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from components.config import PLACEMENT_KEYS
from components.run_dir import RunDir
from reporting.runs import metric_series
from reporting.stats import Band, band

# Config keys that name or place a run rather than define the experiment (components/config.py PLACEMENT_KEYS):
# runs that differ only in these and job.seed are seeds of one group.
NOT_EXPERIMENT_KEYS = {("job", "seed"), *(tuple(key.split(".")) for key in PLACEMENT_KEYS)}
SEED_SUFFIX = re.compile(r"_seed\d+$")


def run_seed(run: RunDir) -> int:
    return run.config_value("job", "seed")


@dataclass
class SeedGroup:
    """Runs of one experiment that differ only in ``job.seed``, sorted by seed."""

    name: str
    runs: list[RunDir]
    summaries: list[Any] = field(default_factory=list)  # a report's per-run rows, one per run, same order

    @property
    def seeds(self) -> list[int]:
        return [run_seed(run) for run in self.runs]


def experiment_key(run: RunDir, ignore: set[tuple[str, str]] = frozenset()) -> str:
    """The run's config without NOT_EXPERIMENT_KEYS (and ``ignore``) as canonical JSON: equal for the seeds of one
    experiment."""
    skip = NOT_EXPERIMENT_KEYS | set(ignore)
    tables = {section: {key: value for key, value in table.items() if (section, key) not in skip}
              for section, table in run.tables.items() if isinstance(table, dict)}
    return json.dumps(tables, sort_keys=True, default=str)


def group_name(names: list[str], taken: set[str]) -> str:
    """The run names without their ``_seed<k>`` suffix when that leaves one name, else the first name + count."""
    stems = {SEED_SUFFIX.sub("", name) for name in names}
    name = stems.pop() if len(stems) == 1 else f"{names[0]} +{len(names) - 1}"
    candidate, number = name, 2
    while candidate in taken:
        candidate, number = f"{name} #{number}", number + 1
    return candidate


def group_runs(runs: list[RunDir], key: Callable[[RunDir], str] = experiment_key) -> list[SeedGroup]:
    """Seed groups (runs sorted by seed) in order of first appearance; a repeated (config, seed) is an error.

    ``key`` says which runs belong together (default: equal configs but for NOT_EXPERIMENT_KEYS).
    """
    by_key: dict[str, list[RunDir]] = {}
    for run in runs:
        by_key.setdefault(key(run), []).append(run)
    groups: list[SeedGroup] = []
    for members in by_key.values():
        members.sort(key=run_seed)
        for a, b in zip(members, members[1:]):
            if run_seed(a) == run_seed(b):
                raise ValueError(f"{a.path} and {b.path} have the same config and job.seed {run_seed(a)}; "
                                 "pass only one of them")
        groups.append(SeedGroup(group_name([run.name for run in members], {g.name for g in groups}), members))
    return groups


def group_curve(group: SeedGroup, key: str, kind: str = "ci95") -> tuple[list[int], list[Band]]:
    """Mean over the group's seeds and its ``kind`` band (``reporting.stats.BANDS``; default the 95 % t-interval) at
    every step that all its runs logged ``key`` at."""
    per_run = [dict(zip(*metric_series(run.records, key))) for run in group.runs]
    steps = sorted(set.intersection(*(set(values) for values in per_run)))
    return steps, [band([values[step] for values in per_run], kind) for step in steps]
