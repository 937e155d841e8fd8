"""Learning-rate sensitivity of a sweep over lr x arm x seed (``scripts/lr_sensitivity.py``).

An *arm* is a setting of the config keys that are neither the learning rate, the seed, nor where a run
was written (e.g. ``init.scheme`` plus overrides); ``arm_keys`` names them, or they are the keys whose
resolved values differ between the runs. Per run, the outcome is the last logged value of a metric
(default ``loss/val``), *capped at the loss at init* ℓ0 as Wortsman et al. (2023) do: min(ℓ, ℓ0), and
ℓ0 for a run that diverged or logged a non-finite value. ℓ0 is the run's step-0 value of the metric when
it logged one (the loss of the initial weights), else its step-1 ``loss/train`` (computed by the forward
pass before the first update, on one batch), else ln(vocabulary size) (a uniform prediction's loss).

Per arm and lr: mean ± 95 % Student-t interval over seeds (``reporting/stats.py``). Per arm: the best lr
(lowest mean), the lowest lr at which a seed diverged, and the LR sensitivity of Wortsman et al. 2023
("Small-scale proxies for large-scale Transformer training instabilities", arXiv:2309.14322, §3.2):
E_η[min(ℓ(η), ℓ0) − ℓ*] over the lr range, ℓ* = min_η ℓ(η), computed per seed over the lrs every arm ran
and given as mean ± interval over seeds. Between arms: the paired difference (same seed) of the capped
outcome, each arm at its own best lr; that best lr is picked on the same seeds, so the difference favours
arms whose best lr is noisy (the selection is not corrected for).
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from components.config import PLACEMENT_KEYS
from components.run_dir import RunDir
from reporting.groups import SEED_SUFFIX
from reporting.runs import device_counts, devices_text, metric_series, model_vocab, run_device
from reporting.stats import Band, Interval, mean_interval, paired_difference
from roles import parse_tag

LR_KEY = "optimizer.lr"
SEED_KEY = "job.seed"
SWEEP_COORDS = re.compile(r"_lr[0-9.e+-]+(?=_|$)")  # the lr coordinate of scripts/sweep.py's run names
LOGIT_MAX_FAMILY = "attn_logit_max"  # components/activation_stats.py's families (tags: roles.format_tag)
RESIDUAL_FAMILY = "act_rms/residual"


@dataclass
class Point:
    """One run of the sweep: its coordinates and outcome."""

    run: RunDir
    arm: str
    lr: float
    seed: int
    final: float  # last logged value of the metric (nan if none)
    init_loss: float  # ℓ0
    init_source: str  # where ℓ0 came from (module docstring)
    diverged: str  # '' or why
    logit_max: float = math.nan  # max over layers of attn_logit_max at its last logged step
    residual_rms: float = math.nan  # act_rms/residual of the last block at its last logged step
    peak_train: float = math.nan  # highest finite loss/train logged (a spike above ℓ0 that recovered shows here)

    @property
    def capped(self) -> float:
        """min(final, ℓ0); ℓ0 for a diverged run or a non-finite value (Wortsman et al. 2023)."""
        if self.diverged or not math.isfinite(self.final):
            return self.init_loss
        return min(self.final, self.init_loss)


@dataclass
class Arm:
    name: str
    setting: dict[str, Any]  # arm key -> value
    points: dict[float, dict[int, Point]] = field(default_factory=dict)  # lr -> seed -> point

    @property
    def lrs(self) -> list[float]:
        return sorted(self.points)

    def curve(self, value=lambda p: p.capped, finite_only: bool = False) -> dict[float, Interval]:
        """Per lr: mean and 95 % interval over seeds of ``value(point)`` (default the capped outcome); with
        ``finite_only``, over the seeds whose value is finite."""
        def values(lr: float) -> list[float]:
            found = [value(p) for _, p in sorted(self.points[lr].items())]
            return [v for v in found if math.isfinite(v)] if finite_only else found
        return {lr: mean_interval(values(lr)) for lr in self.lrs}

    def best_without(self, seed: int) -> float:
        """The best lr chosen on the other seeds (lowest mean capped outcome over them; the lower lr on a tie)."""
        means = {lr: [p.capped for s, p in per_seed.items() if s != seed] for lr, per_seed in self.points.items()}
        return min((lr for lr in self.lrs if means[lr]), key=lambda lr: (math.fsum(means[lr]) / len(means[lr]), lr))

    def lrs_run(self) -> dict[int, int]:
        """Each seed -> how many of this arm's lrs it ran (ascending seeds)."""
        return dict(sorted(Counter(seed for per_seed in self.points.values() for seed in per_seed).items()))

    def complete_seeds(self) -> list[int]:
        """The seeds that ran every lr of this arm: only their curves have an argmin."""
        return [seed for seed, n in self.lrs_run().items() if n == len(self.points)]

    def incomplete_seeds(self) -> dict[int, int]:
        """Seeds missing some lr of this arm -> how many of its lrs they ran."""
        return {seed: n for seed, n in self.lrs_run().items() if n < len(self.points)}

    def seed_best(self) -> dict[int, float]:
        """Each complete seed's own best lr (a seed missing an lr has none: its argmin could be the missing one)."""
        return {seed: min(self.lrs, key=lambda lr: (self.points[lr][seed].capped, lr))
                for seed in self.complete_seeds()}

    def tolerance_width(self, tolerance: float) -> tuple[float, bool]:
        """(width in decades of lr of the range where the seed-mean capped outcome stays within ``tolerance`` of its
        minimum, interpolated linearly in log10 lr between grid points; True when that range reaches an end of
        the grid, so the width is a lower bound)."""
        curve = self.curve()
        return window_width(self.lrs, [curve[lr].mean for lr in self.lrs], tolerance)

    def seed_tolerance_widths(self, tolerance: float, lrs: list[float]) -> tuple[Interval, bool, list[int]]:
        """``window_width`` of each seed's own capped outcomes over ``lrs`` (per seed that ran them all): (mean and
        95 % interval over those seeds, True when some seed's range reaches an end of the grid, those seeds)."""
        seeds = sorted(set.intersection(*(set(self.points[lr]) for lr in lrs)))
        widths = [window_width(lrs, [self.points[lr][seed].capped for lr in lrs], tolerance) for seed in seeds]
        return mean_interval([w for w, _ in widths]), any(edge for _, edge in widths), seeds

    def at_cap(self) -> list[tuple[float, int]]:
        """(lr, seed) of runs that stayed finite but ended no better than ℓ0 (capped, not diverged)."""
        return [(lr, seed) for lr in self.lrs for seed, p in sorted(self.points[lr].items())
                if not p.diverged and math.isfinite(p.final) and p.final >= p.init_loss]

    def best(self) -> tuple[float, Interval]:
        """(lr of the lowest mean capped outcome, its interval over every seed at that lr); the lower lr on a tie.
        The mean is over the complete seeds (``complete_seeds``), so that no lr wins by missing a seed's run; over
        every seed at each lr only when no seed is complete."""
        curve, seeds = self.curve(), self.complete_seeds()
        means = ({lr: math.fsum(self.points[lr][seed].capped for seed in seeds) / len(seeds) for lr in self.lrs}
                 if seeds else {lr: curve[lr].mean for lr in self.lrs})
        lr = min(self.lrs, key=lambda x: (means[x], x))
        return lr, curve[lr]

    def at_best(self) -> dict[int, float]:
        """Each seed's capped outcome at the arm's best lr (``best``): what arms are compared by."""
        return {seed: p.capped for seed, p in self.points[self.best()[0]].items()}

    def divergence_lr(self) -> float | None:
        """The lowest lr at which any seed diverged (None if none did)."""
        return next((lr for lr in self.lrs if any(p.diverged for p in self.points[lr].values())), None)

    def sensitivity(self, lrs: list[float]) -> tuple[Interval, list[int]]:
        """Wortsman et al.'s LR sensitivity over ``lrs`` per seed that ran them all; (interval, those seeds)."""
        seeds = sorted(set.intersection(*(set(self.points[lr]) for lr in lrs)))
        values = []
        for seed in seeds:
            capped = [self.points[lr][seed].capped for lr in lrs]
            values.append(math.fsum(capped) / len(capped) - min(capped))
        return mean_interval(values), seeds


def window_width(lrs: list[float], values: list[float], tolerance: float) -> tuple[float, bool]:
    """(width in decades of the lr range around the lowest of ``values`` (one per grid lr, ascending) where they stay
    within ``tolerance`` of that minimum, interpolated linearly in log10 lr to where the curve crosses the level;
    True when the range reaches an end of the grid, so the width is a lower bound)."""
    x, y = [math.log10(lr) for lr in lrs], values
    best = min(range(len(y)), key=lambda i: (y[i], i))
    level = y[best] + tolerance

    def crossing(step: int) -> tuple[float, bool]:
        i = best
        while 0 <= i + step < len(y) and y[i + step] <= level:
            i += step
        if not 0 <= i + step < len(y):
            return x[i], True
        above = i + step  # the first grid point past the range: interpolate between it and x[i]
        return x[above] + (level - y[above]) / (y[i] - y[above]) * (x[i] - x[above]), False

    (left, left_edge), (right, right_edge) = crossing(-1), crossing(1)
    return right - left, left_edge or right_edge


def flat_value(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def derive_arm_keys(runs: list[RunDir], arm_keys: list[str] | None) -> list[str]:
    """``arm_keys`` checked against the configs, or (None) the keys whose values differ between the runs."""
    flats = [run.flat_config for run in runs]
    known = set(flats[0])
    for key in arm_keys or []:
        if key not in known:
            raise ValueError(f"--arm-keys {key}: no such config key; name keys as section.key, e.g. init.scheme")
    differing = sorted(key for key in known - set(PLACEMENT_KEYS) - {LR_KEY, SEED_KEY}
                       if len({flat_value(flat.get(key)) for flat in flats}) > 1)
    if arm_keys is None:
        return differing
    unnamed = [key for key in differing if key not in arm_keys]
    if unnamed:
        example = next(run.path for run in runs if flat_value(run.flat_config.get(unnamed[0])) !=
                       flat_value(flats[0].get(unnamed[0])))
        raise ValueError(f"the runs also differ in {unnamed[0]} ({runs[0].path} vs {example}), which is not an arm "
                         f"key; add it to --arm-keys or leave those runs out")
    return list(arm_keys)


def arm_label(setting: dict[str, Any]) -> str:
    """``mitchell`` for one key; ``scheme=mitchell, lr_warmup=...`` (last key part) for several; ``all`` for none."""
    def text(value: Any) -> str:
        return value if isinstance(value, str) else flat_value(value)

    if not setting:
        return "all"
    if len(setting) == 1:
        return text(next(iter(setting.values())))
    return ", ".join(f"{key.rsplit('.', 1)[-1]}={text(value)}" for key, value in setting.items())


INIT_LOSS_SOURCES = ("auto", "train-step1", "ln-vocab")
"""How ℓ0 is found: auto = the step-0 value of the metric, else the step-1 train loss, else ln(vocab);
train-step1 = the step-1 train loss, else ln(vocab); ln-vocab = ln(vocabulary size) for every run."""


def init_loss(run: RunDir, metric: str, source: str = "auto") -> tuple[float, str]:
    """ℓ0 of a run and where it came from (``INIT_LOSS_SOURCES``)."""
    if source == "auto":
        steps, values = metric_series(run.original.records, metric)
        if steps and steps[0] == 0 and math.isfinite(values[0]):
            return values[0], f"step-0 {metric}"
    if source in ("auto", "train-step1"):
        steps, values = metric_series(run.original.records, "loss/train")
        if steps and steps[0] == 1 and math.isfinite(values[0]):
            return values[0], "step-1 loss/train"
    return math.log(model_vocab(run.config)), "ln(vocab)"


def last_layer_value(records: list[dict[str, Any]], family: str, reduce) -> float:
    """``reduce`` over the blocks' ``<family>/layer_NN`` values, in depth order, of the last record that logged any
    (nan if none)."""
    for record in reversed(records):
        layers = {tag.layer: value for key, value in record.items()
                  if (tag := parse_tag(key)) is not None and tag.family == family and tag.layer is not None}
        if layers:
            return reduce([math.nan if layers[layer] is None else float(layers[layer]) for layer in sorted(layers)])
    return math.nan


def make_point(run: RunDir, arm: str, metric: str, init_source: str = "auto") -> Point:
    _, values = metric_series(run.records, metric)
    ell0, source = init_loss(run, metric, init_source)
    return Point(run=run, arm=arm, lr=float(run.config.optimizer.lr), seed=run.config.job.seed,
                 final=values[-1] if values else math.nan, init_loss=ell0, init_source=source,
                 diverged=run.original.diverged,
                 logit_max=last_layer_value(run.records, LOGIT_MAX_FAMILY, max),
                 residual_rms=last_layer_value(run.records, RESIDUAL_FAMILY, lambda v: v[-1]),
                 peak_train=max((v for v in metric_series(run.records, "loss/train")[1] if math.isfinite(v)),
                                default=math.nan))


def sweep_names(runs: list[RunDir], keys: list[str]) -> dict[str, str]:
    """{key-value label: name} where every run of an arm is named ``<name>_lr<lr>[...]_seed<k>`` (scripts/sweep.py's
    names) with one ``<name>`` per arm and distinct names across arms; {} otherwise."""
    stems: dict[str, set[str]] = {}
    for run in runs:
        label = arm_label({key: run.flat_config.get(key) for key in keys})
        stems.setdefault(label, set()).add(SWEEP_COORDS.sub("", SEED_SUFFIX.sub("", run.name)))
    names = {label: next(iter(found)) for label, found in stems.items() if len(found) == 1}
    return names if len(names) == len(stems) and len(set(names.values())) == len(names) else {}


def build_arms(runs: list[RunDir], arm_keys: list[str] | None, metric: str,
               init_source: str = "auto") -> tuple[list[str], list[Arm]]:
    """(arm keys, arms in order of first appearance); a repeated (arm, lr, seed) is an error. An arm is named
    after its runs' names when scripts/sweep.py named them (``<arm>_lr<lr>_seed<k>``), else by its setting."""
    if not any(metric in record for run in runs for record in run.records):
        raise ValueError(f"--metric {metric}: no run logged it; pass --metric loss/train, or runs with validation "
                         "(metrics.val_freq > 0)")
    keys = derive_arm_keys(runs, arm_keys)
    names = sweep_names(runs, keys)
    arms: dict[str, Arm] = {}
    for run in runs:
        setting = {key: run.flat_config.get(key) for key in keys}
        name = names.get(arm_label(setting), arm_label(setting))
        arm = arms.setdefault(name, Arm(name, setting))
        point = make_point(run, name, metric, init_source)
        seeds = arm.points.setdefault(point.lr, {})
        if point.seed in seeds:
            raise ValueError(f"{seeds[point.seed].run.path} and {run.path} are both arm {name}, lr {point.lr:g}, seed "
                             f"{point.seed}; pass only one of them")
        seeds[point.seed] = point
    return keys, list(arms.values())


def common_lrs(arms: list[Arm]) -> list[float]:
    """The lrs every arm ran (the range the sensitivity is averaged over)."""
    shared = set.intersection(*(set(arm.lrs) for arm in arms))
    if not shared:
        raise ValueError("no lr is shared by all arms, so their LR sensitivities are not comparable; sweep the same "
                         "lrs for every arm")
    return sorted(shared)


def all_lrs(arms: list[Arm]) -> list[float]:
    """Every lr any arm ran, ascending."""
    return sorted({lr for arm in arms for lr in arm.lrs})


def all_points(arms: list[Arm]) -> list[Point]:
    """Every run of every arm."""
    return [p for arm in arms for per_seed in arm.points.values() for p in per_seed.values()]


def multi_seed_lrs(arms: list[Arm], lrs: list[float]) -> list[float]:
    """Of ``lrs``, those at which every arm ran more than one seed: the range over which the LR sensitivity has an
    interval over seeds when some lrs were run with one seed only."""
    return [lr for lr in lrs if all(len(arm.points[lr]) > 1 for arm in arms)]


def best_lr_differences(arms: list[Arm]) -> list[tuple]:
    """Per pair of arms: (A, B, A's best lr, B's best lr, interval of B − A over shared seeds, verdict, and the
    same interval and verdict with each seed's lr* chosen on the other seeds: leave-one-seed-out)."""
    rows = []
    for first, second in itertools.combinations(arms, 2):
        lr_a, lr_b = first.best()[0], second.best()[0]
        a, b = first.at_best(), second.at_best()
        interval, verdict = paired_difference(a, b)
        loso_a, loso_b = {}, {}
        for seed in sorted(set(a) & set(b)):
            lr_a_k, lr_b_k = first.best_without(seed), second.best_without(seed)
            if seed in first.points[lr_a_k] and seed in second.points[lr_b_k]:
                loso_a[seed], loso_b[seed] = first.points[lr_a_k][seed].capped, second.points[lr_b_k][seed].capped
        loso, loso_verdict = paired_difference(loso_a, loso_b)
        rows.append((first.name, second.name, lr_a, lr_b, interval, verdict, loso, loso_verdict))
    return rows


def neighbour_differences(arms: list[Arm]) -> list[tuple]:
    """Per arm: (arm, best lr, a neighbouring grid lr, interval of neighbour − best over the seeds both ran,
    verdict): whether the best lr is resolved from the lrs next to it."""
    rows = []
    for arm in arms:
        lr, _ = arm.best()
        index = arm.lrs.index(lr)
        for other in arm.lrs[max(index - 1, 0):index] + arm.lrs[index + 1:index + 2]:
            best = {seed: p.capped for seed, p in arm.points[lr].items()}
            interval, verdict = paired_difference(best, {seed: p.capped for seed, p in arm.points[other].items()})
            rows.append((arm.name, lr, other, interval, verdict))
    return rows


def neighbours_table(arms: list[Arm]) -> str:
    from reporting.tables import markdown_rows

    cells = [[name, f"{lr:g}", f"{other:g}", str(i.n), *interval_cells(i), verdict]
             for name, lr, other, i, verdict in neighbour_differences(arms)]
    return markdown_rows(["arm", "best lr", "neighbouring lr", "shared seeds", "neighbour − best", "95 % interval",
                          "verdict"], cells)


# ------------------------------------------------------------------------------------------- output
OUTPUT_FILES = ["lr_sensitivity.md", "lr_sensitivity.csv", "arms.csv", "differences.csv", "lr_sensitivity.png",
                "lr_sensitivity.pdf", "lr_activations.png", "lr_activations.pdf"]
BAND_NOTE = "mean ± 95 % Student-t interval over seeds"


def fmt(value: float, spec: str = ".4f") -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, spec)


def arms_table(arms: list[Arm], lrs: list[float], metric: str, tolerance: float = 0.1) -> str:
    from reporting.tables import markdown_rows

    narrow = multi_seed_lrs(arms, lrs)
    narrow = narrow if narrow and narrow != lrs else []
    rows = []
    for arm in arms:
        lr, at_best = arm.best()
        sens, seeds = arm.sensitivity(lrs)
        if narrow:
            sens_n, seeds_n = arm.sensitivity(narrow)
        div = arm.divergence_lr()
        runs = all_points([arm])
        n_div, n_runs = sum(bool(p.diverged) for p in runs), len(runs)
        per_seed = ", ".join([f"{seed}: {best:g}" for seed, best in arm.seed_best().items()]
                             + [f"{seed}: none ({n} of {len(arm.lrs)} lrs)" for seed, n in arm.incomplete_seeds().items()])
        capped = ", ".join(f"lr {lr:g} seed {seed}" for lr, seed in arm.at_cap()) or "none"
        width, at_edge = arm.tolerance_width(tolerance)
        seed_width, seed_edge, width_seeds = arm.seed_tolerance_widths(tolerance, lrs)
        row = [arm.name, f"{lr:g}", per_seed, at_best.text(), sens.text(), ",".join(map(str, seeds))]
        row += [sens_n.text(), ",".join(map(str, seeds_n))] if narrow else []
        rows.append([*row, f"{'≥ ' if at_edge else ''}{width:.2f}",
                     f"{'≥ ' if seed_edge else ''}{seed_width.text('.2f')} ({','.join(map(str, width_seeds))})",
                     "none" if div is None else f"{div:g}", f"{n_div}/{n_runs}", capped])
    header = ["arm", "best lr", "each seed's best lr", f"capped final {metric} at best lr", "LR sensitivity",
              "seeds (sensitivity)"]
    if narrow:
        span = f"{narrow[0]:g}–{narrow[-1]:g}"
        header += [f"LR sensitivity over {span}", f"seeds ({span})"]
    header += [f"decades of lr within {tolerance:g} of the best", "the same per seed (seeds)",
               "lowest lr with a divergence", "diverged runs", "finite but ≥ ℓ0"]
    return markdown_rows(header, rows)


def points_table(arms: list[Arm], with_activations: bool) -> str:
    from reporting.tables import markdown_rows

    header = ["arm", "lr", "seeds", "capped final", "diverged", "ℓ0 (mean)"]
    header += ["attn logit max", "residual RMS"] * with_activations + ["peak train loss"]
    rows = []
    for arm in arms:
        curve = arm.curve()
        logits = arm.curve(lambda p: p.logit_max, finite_only=True)
        rms = arm.curve(lambda p: p.residual_rms, finite_only=True)
        init = arm.curve(lambda p: p.init_loss)
        for lr in arm.lrs:
            points = arm.points[lr]
            row = [arm.name, f"{lr:g}", ",".join(map(str, sorted(points))), curve[lr].text(),
                   f"{sum(bool(p.diverged) for p in points.values())}/{len(points)}", fmt(init[lr].mean)]
            row += [logits[lr].text(".3g"), rms[lr].text(".3g")] * with_activations
            rows.append([*row, fmt(max(p.peak_train for p in points.values()), ".2f")])
    return markdown_rows(header, rows)


def seeds_table(arms: list[Arm], lrs: list[float], metric: str) -> str:
    """Each run's last logged ``metric``, uncapped, one row per arm and one column per lr, the seeds side by side
    in ascending order ("—": not run or not finished; "diverged": stopped on a non-finite value; the best lr's
    cell in bold)."""
    from reporting.tables import markdown_rows

    seeds = sorted({p.seed for p in all_points(arms)})
    best = {arm.name: arm.best()[0] for arm in arms}

    def cell(arm: Arm, lr: float) -> str:
        points = arm.points.get(lr, {})
        text = " / ".join("—" if seed not in points else "diverged" if points[seed].diverged
                          else fmt(points[seed].final, ".3f") for seed in seeds)
        return f"**{text}**" if lr == best[arm.name] else text

    header = [f"arm, {metric} of seeds {' / '.join(map(str, seeds))}", *(f"{lr:g}" for lr in lrs)]
    return markdown_rows(header, [[arm.name, *(cell(arm, lr) for lr in lrs)] for arm in arms])


def interval_cells(i: Interval) -> list[str]:
    return [fmt(i.mean), f"[{fmt(i.low)}, {fmt(i.high)}]" if i.n >= 2 and math.isfinite(i.half_width) else "n/a"]


def differences_table(rows: list[tuple]) -> str:
    from reporting.tables import markdown_rows

    cells = [[a, b, f"{lr_a:g}", f"{lr_b:g}", str(i.n), *interval_cells(i), verdict, *interval_cells(loso),
              loso_verdict] for a, b, lr_a, lr_b, i, verdict, loso, loso_verdict in rows]
    return markdown_rows(["A", "B", "A's best lr", "B's best lr", "shared seeds", "B − A", "95 % interval", "verdict",
                          "B − A, lr* from the other seeds", "95 % interval", "verdict"], cells)


def notes(metric: str, lrs: list[float], arms: list[Arm]) -> str:
    sources = sorted({p.init_source for p in all_points(arms)})
    return (f"Outcome: the last logged `{metric}` of each run, capped at its loss at init ℓ0 (min(ℓ, ℓ0); ℓ0 for a "
            f"run that diverged or logged a non-finite value), as Wortsman et al. 2023 (arXiv:2309.14322, §3.2) do. "
            f"ℓ0 here: {', '.join(sources)} (--init-loss; auto prefers the step-0 value of the metric, then the step-1 "
            "train loss, which the forward pass of the initial weights computes on one batch, then ln(vocabulary "
            "size)). Values are "
            f"{BAND_NOTE} (mean ± t(0.975, n-1)·s/√n). *LR sensitivity* = mean over the lrs "
            f"{', '.join(f'{lr:g}' for lr in lrs)} (those every arm ran) of (capped outcome − its minimum over them), "
            "per seed that ran them all, then mean ± interval over those seeds; where some of those lrs were run with one "
            "seed only, also over the lrs at which every arm ran two or more seeds (the second column pair, with an "
            "interval). *Lowest lr with a divergence*: "
            "the lowest lr at which any seed stopped on a non-finite loss. *B − A*: per seed, B's capped outcome at "
            "B's best lr minus A's at A's best lr (best = lowest mean over seeds); 'differs' only when the interval "
            "excludes zero. The best lrs are picked on the same seeds, which favours an arm with a noisy minimum; "
            "the leave-one-seed-out columns pick each seed's lr* on the other seeds instead. A seed that misses "
            "some lr of an arm ('none (k of n lrs)' under each seed's best lr) has no best lr of its own, and the "
            "arm's best lr is chosen on the seeds that ran all of its lrs; every other number uses the seeds present "
            "at its lr (their counts are in the tables). The lr grid's spacing "
            "bounds how well a best lr is located. *finite but ≥ ℓ0*: runs that did not diverge but ended no "
            "better than their loss at init (capped like a divergence). *Decades of lr within t of the best*: the "
            "width of the lr range whose seed-mean capped outcome is within t (nats) of the best, interpolated "
            "linearly in log10 lr between grid points ('≥' where it reaches an end of the grid); *the same per seed*: that "
            "width of each seed's own curve over the lrs of the LR sensitivity (within t of that seed's best), mean ± "
            "interval over the seeds that ran them all ('≥' where some seed's range reaches an end). *attn logit max* = max over layers of "
            "`attn_logit_max/layer_NN`, *residual RMS* = `act_rms/residual` of the last block, both at the last "
            "step that logged them (a diverged run's last before its stop; metrics.log_variance_stats), over the "
            "seeds with a finite value: in the table mean ± t-interval, in the figure (they span decades) the "
            "geometric mean with the exponentiated t-interval of the log. *peak train loss*: the highest finite "
            "`loss/train` any seed logged (above ℓ0: a loss spike the run recovered from or stopped on). *neighbour "
            "− best*: per seed, the capped outcome at the grid lr next to the best lr minus that at the best lr.")


def write_csvs(arms: list[Arm], lrs: list[float], diff_rows: list, out_dir, tolerance: float = 0.1) -> None:
    import csv

    with (out_dir / "lr_sensitivity.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["arm", "lr", "seed", "run", "status", "final", "init_loss", "init_loss_source", "capped",
                         "diverged", "attn_logit_max", "residual_rms", "peak_train_loss", "device"])
        for arm in arms:
            for lr in arm.lrs:
                for seed, p in sorted(arm.points[lr].items()):
                    writer.writerow([arm.name, repr(lr), seed, str(p.run.path), p.run.original.status, repr(p.final),
                                     repr(p.init_loss), p.init_source, repr(p.capped), p.diverged or "no",
                                     repr(p.logit_max), repr(p.residual_rms), repr(p.peak_train),
                                     run_device(p.run)])
    with (out_dir / "arms.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["arm", "best_lr", "n", "mean_at_best", "ci95_half_width", "sensitivity", "sensitivity_ci95",
                         "sensitivity_seeds", "multiseed_lrs", "multiseed_sensitivity", "multiseed_sensitivity_ci95",
                         "multiseed_sensitivity_seeds", "lowest_divergent_lr", "tolerance_width_decades",
                         "width_at_grid_edge", "seed_width_decades", "seed_width_ci95", "seed_width_at_grid_edge",
                         "seed_width_seeds"])
        narrow = multi_seed_lrs(arms, lrs)
        for arm in arms:
            lr, best = arm.best()
            sens, seeds = arm.sensitivity(lrs)
            sens_n, seeds_n = arm.sensitivity(narrow) if narrow else (Interval(math.nan, math.nan, 0), [])
            div = arm.divergence_lr()
            width, at_edge = arm.tolerance_width(tolerance)
            seed_width, seed_edge, width_seeds = arm.seed_tolerance_widths(tolerance, lrs)
            writer.writerow([arm.name, repr(lr), best.n, repr(best.mean), repr(best.half_width), repr(sens.mean),
                             repr(sens.half_width), " ".join(map(str, seeds)), " ".join(map(repr, narrow)),
                             repr(sens_n.mean), repr(sens_n.half_width), " ".join(map(str, seeds_n)),
                             "" if div is None else repr(div), repr(width), at_edge, repr(seed_width.mean),
                             repr(seed_width.half_width), seed_edge, " ".join(map(str, width_seeds))])
    with (out_dir / "differences.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["a", "b", "best_lr_a", "best_lr_b", "shared_seeds", "mean_b_minus_a", "ci95_half_width",
                         "ci95_low", "ci95_high", "verdict", "loso_seeds", "loso_mean_b_minus_a", "loso_ci95_half_width",
                         "loso_verdict"])
        for a, b, lr_a, lr_b, i, verdict, loso, loso_verdict in diff_rows:
            writer.writerow([a, b, repr(lr_a), repr(lr_b), i.n, repr(i.mean), repr(i.half_width), repr(i.low),
                             repr(i.high), verdict, loso.n, repr(loso.mean), repr(loso.half_width), loso_verdict])


def seed_counts(arm: Arm) -> str:
    """'3 seeds', or '1–3 seeds' when the lrs were run with different numbers of seeds."""
    counts = sorted({len(per_seed) for per_seed in arm.points.values()})
    return f"{counts[0]} seed{'s' * (counts[0] > 1)}" if len(counts) == 1 else f"{counts[0]}–{counts[-1]} seeds"


def device_note(arms: list[Arm]) -> str:
    """A figure title's last lines naming the devices when the runs ran on more than one ("" otherwise), wrapped to
    the width of the narrower figure."""
    import textwrap

    devices = device_counts([p.run for p in all_points(arms)])
    if len(devices) <= 1:
        return ""
    return "\n" + textwrap.fill(f"runs on different devices ({devices_text(devices)})", 80)


def plot_sensitivity(arms: list[Arm], metric: str, title: str, path) -> None:
    """Capped final metric vs lr (log axis), a line per arm with its band, best lr starred, divergences crossed,
    points with one seed (no band) open; the ℓ0 line only when some run reached the cap."""
    from reporting.figures import plot_band, pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    points = all_points(arms)
    init = math.fsum(p.init_loss for p in points) / len(points)
    for index, arm in enumerate(arms):
        colour, curve = f"C{index % 10}", arm.curve()
        plot_band(ax, arm.lrs, [curve[lr] for lr in arm.lrs], colour, marker="o", markersize=4,
                  label=f"{arm.name} ({seed_counts(arm)})")
        single = [lr for lr in arm.lrs if len(arm.points[lr]) == 1]
        ax.plot(single, [curve[lr].mean for lr in single], marker="o", markersize=7, markerfacecolor="white",
                color=colour, linestyle="none")
        lr, best = arm.best()
        ax.plot([lr], [best.mean], marker="*", markersize=14, color=colour, markeredgecolor="black", linestyle="none")
        diverged = [lr for lr in arm.lrs if any(p.diverged for p in arm.points[lr].values())]
        ax.plot(diverged, [curve[lr].mean for lr in diverged], marker="X", markersize=11, color=colour,
                markeredgecolor="black", linestyle="none")
    if any(p.capped >= p.init_loss for p in points):
        ax.axhline(init, color="grey", linestyle=":", lw=1, label="loss at init ℓ0 (mean; the cap)")
        cap_note = ""
    else:
        cap_note = f"; no run reached the cap ℓ0 (mean {init:.2f})"
    ax.set_xscale("log")
    ax.set(xlabel="learning rate (optimizer.lr)", ylabel=f"final {metric}, capped at ℓ0",
           title=f"{title}\n{BAND_NOTE}\n★ best lr, × a seed diverged, ○ one seed{cap_note}{device_note(arms)}")
    ax.title.set_fontsize("small")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small", loc="best")
    fig.tight_layout()
    save_figure(fig, path, pdf=True)


def geometric_curve(arm: Arm, name: str) -> list[Band]:
    """Per lr of ``arm``: the geometric mean over seeds of a positive quantity and the 95 % t-interval of its log,
    exponentiated (a band that stays positive on a log axis however few the seeds); non-positive values left out."""
    bands = []
    for lr in arm.lrs:
        logs = [math.log(v) for p in arm.points[lr].values() if math.isfinite(v := getattr(p, name)) and v > 0]
        i = mean_interval(logs)
        bands.append(Band(*(math.exp(x) if math.isfinite(x) else math.nan for x in (i.mean, i.low, i.high)), i.n))
    return bands


def plot_activations(arms: list[Arm], title: str, path) -> bool:
    """Final attention-logit max and last-block residual RMS vs lr (log-log), per arm the geometric mean over seeds
    with the exponentiated 95 % t-interval of the log; False (nothing written) when no run logged them."""
    from reporting.figures import plot_band, pyplot, save_figure

    panels = [("logit_max", "max attention logit (over layers)"), ("residual_rms", "residual RMS, last block")]
    logged = [name for name, _ in panels
              if any(math.isfinite(getattr(p, name)) for arm in arms for s in arm.points.values() for p in s.values())]
    if not logged:
        return False
    plt = pyplot()
    from matplotlib.ticker import ScalarFormatter

    fig, axes = plt.subplots(1, len(logged), figsize=(5.2 * len(logged), 4.2), squeeze=False)
    for ax, name in zip(axes.flat, logged):
        for index, arm in enumerate(arms):
            plot_band(ax, arm.lrs, geometric_curve(arm, name), f"C{index % 10}", marker="o", markersize=4,
                      label=f"{arm.name} ({seed_counts(arm)})")
        ax.set_xscale("log")
        ax.set_yscale("log")
        low, high = ax.get_ylim()
        if high / low < 10:  # within a decade the log axis has no labelled tick of its own
            ax.yaxis.set_major_formatter(ScalarFormatter())
            ax.yaxis.set_minor_formatter(ScalarFormatter())
        ax.set(xlabel="learning rate (optimizer.lr)", ylabel=dict(panels)[name])
        ax.grid(alpha=0.3, which="major")
    axes.flat[0].legend(fontsize="small")
    fig.suptitle(f"{title}: at the last logged step (a diverged run's last before its stop)\ngeometric mean over "
                 f"seeds, band = 95 % Student-t interval of the log{device_note(arms)}", fontsize="medium")
    fig.tight_layout()
    save_figure(fig, path, pdf=True)
    return True


def report_text(selection, keys: list[str], arms: list[Arm], lrs: list[float], diff_rows: list, metric: str,
                title: str, with_activations: bool, tolerance: float = 0.1) -> str:
    from reporting.runs import selection_text

    arm_keys = ", ".join(f"`{key}`" for key in keys) or "none (one arm)"
    figures = "![capped final loss vs lr](lr_sensitivity.png)\n"
    if with_activations:
        figures += "\n![attention logit max and residual RMS vs lr](lr_activations.png)\n"
    diffs = f"## Arms at their own best lr (paired by seed)\n\n{differences_table(diff_rows)}\n\n" if diff_rows else ""
    return (f"# {title}\n\n{len(selection.runs)} runs; arm keys: {arm_keys}; lr key `{LR_KEY}`.\n"
            f"{selection_text(selection)}\n## Arms\n\n{arms_table(arms, lrs, metric, tolerance)}\n\n{diffs}"
            f"## Each arm's best lr vs its neighbouring grid lrs (paired by seed)\n\n{neighbours_table(arms)}\n\n"
            f"## Per arm and lr\n\n{points_table(arms, with_activations)}\n\n"
            f"## Each run's final {metric}, per seed\n\n{seeds_table(arms, all_lrs(arms), metric)}\n\n"
            f"{notes(metric, lrs, arms)}\n\n{figures}")
