"""Per-layer weight-std growth by depth over seed groups: do shallow layers' Q/K/V spreads grow faster?

    python scripts/layer_growth.py <run_dir> ... [--roles attn.q,attn.k,attn.v] [--out DIR] [--overwrite]

The question is claim 4 of docs/paper_reproduction.md (Han, "Weight Initialization and Variance
Dynamics in Deep Neural Networks and Large Language Models": in a 12-layer GPT-2 the shallow layers'
Q/K/V weight std expands faster than the deep layers'), asked over seeds. Runs are grouped by
``scripts/compare_runs.py``'s rule (configs equal but for ``job.seed``). Per run, role and layer l,
from ``weight_std/<role>/layer_<NN>`` in metrics.jsonl:

    growth_l(t) = std_l(t) / std_l(t0) - 1,   t0 = the first logged step (step 1: one AdamW step
                                               after init), t = the last logged step

Relative growth, so schemes whose init std depends on depth (the Lingua bug) are compared fairly.
Per run and role, two numbers: the least-squares slope of growth_l vs l (per layer; negative =
shallow layers grow more) and the shallow-half minus deep-half difference (mean growth of layers
l < L/2 minus that of l >= L/2; positive = shallow layers grow more). Per group: mean ± 95 %
Student-t interval over seeds and the verdict of ``reporting/stats.py`` ("differs" from zero only
when the interval excludes zero).

It also reports the depth profile at the first and last logged step of the activation statistics
(``metrics.log_variance_stats``, docs/variance_dynamics.md): ``act_rms/residual/layer_NN`` and
``attn_logit_max/layer_NN`` (and ``act_rms/residual/embedding``), per group the mean ± interval over seeds.

Writes to DIR (default ``outputs/reports/layer_growth``): ``layer_growth.md`` (also printed),
``growth.csv`` (run, seed, role, layer, std at t0 and t, growth), ``growth_summary.csv`` (group,
role, quantity, interval), ``depth_profile.csv`` (group, statistic, layer, interval) and
``layer_growth.png`` (top row: final growth vs layer per role, a line per group with its seed band;
bottom row: shallow-half minus deep-half growth vs step).
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from pathlib import Path

REPO = str(Path(__file__).resolve().parent.parent)
if REPO not in sys.path:  # `python scripts/layer_growth.py` puts scripts/, not the repo root, on sys.path
    sys.path.insert(0, REPO)

import numpy as np  # noqa: E402

from components.run_dir import RunDir  # noqa: E402
from reporting.cli import INPUT_ERRORS, error_exit, prepare_out_dir  # noqa: E402
from reporting.figures import plot_band, pyplot  # noqa: E402
from reporting.groups import SeedGroup, group_runs, run_seed  # noqa: E402
from reporting.layers import layer_std_matrix, std_roles  # noqa: E402
from reporting.runs import load_run, metric_series, unique_names  # noqa: E402
from reporting.stats import Interval, mean_interval, verdict  # noqa: E402

OUTPUT_FILES = ["layer_growth.md", "growth.csv", "growth_summary.csv", "depth_profile.csv", "layer_growth.png"]
DEPTH_STATISTICS = ("act_rms/residual", "attn_logit_max")
EMBEDDING = -1  # layer index of a statistic's "/embedding" key (the residual before block 0)
SLOPE, SHALLOW_MINUS_DEEP = "slope per layer", "shallow half - deep half"


def growth_matrix(run: RunDir, role: str) -> tuple[list[int], list[int], np.ndarray, np.ndarray]:
    """(steps [S], layers [L], std [L, S], growth [L, S] = std / std at the first step - 1) of one role."""
    steps, layers, std = layer_std_matrix(run.records, role)
    std = np.asarray(std, dtype=float)
    if not layers or std.shape[1] < 2:
        raise ValueError(f"{run.path}: weight_std/{role}/layer_NN is logged at fewer than 2 steps; "
                         "train with metrics.log_weight_std = true for at least two logging steps")
    if not np.isfinite(std).all():
        raise ValueError(f"{run.path}: weight_std/{role} has a missing or non-finite value; "
                         "pass runs that logged every layer at every logging step")
    return steps, layers, std, std / std[:, :1] - 1


def slope(layers: list[int], growth: np.ndarray) -> float:
    """Least-squares slope of growth [L] against the layer index (growth per layer)."""
    return float(np.polyfit(np.asarray(layers, dtype=float), growth, 1)[0])


def shallow_minus_deep(growth: np.ndarray) -> np.ndarray:
    """Mean growth of the first L // 2 layers minus that of the rest; growth [L, ...] -> [...]."""
    half = growth.shape[0] // 2
    return growth[:half].mean(axis=0) - growth[half:].mean(axis=0)


def group_growth(group: SeedGroup, role: str) -> dict:
    """Per seed: final growth [L], its slope and shallow-deep gap, and the gap over steps, for one role."""
    per_seed = {}
    for run in group.runs:
        steps, layers, std, growth = growth_matrix(run, role)
        per_seed[run_seed(run)] = {"steps": steps, "layers": layers, "std": std, "growth": growth,
                                   SLOPE: slope(layers, growth[:, -1]),
                                   SHALLOW_MINUS_DEEP: float(shallow_minus_deep(growth[:, -1]))}
    return per_seed


def summary_rows(groups: list[SeedGroup], roles: list[str], growth: dict) -> list[tuple[str, str, str, Interval]]:
    """(group, role, quantity, interval over seeds) for the slope and the shallow-deep gap."""
    return [(group.name, role, quantity, mean_interval([seed[quantity] for seed in growth[group.name, role].values()]))
            for group in groups for role in roles for quantity in (SLOPE, SHALLOW_MINUS_DEEP)]


def step_profile(run: RunDir, statistic: str, last: bool) -> dict[int, float]:
    """{layer: value} of ``<statistic>/layer_NN`` (and ``<statistic>/embedding`` as layer EMBEDDING) at
    the run's first or last step that logged it."""
    keys = {int(m[1]) if m[1] else EMBEDDING: key for record in run.records for key in record
            if (m := re.fullmatch(rf"{re.escape(statistic)}/(?:layer_(\d+)|embedding)", key))}
    return {layer: metric_series(run.records, key)[1][-1 if last else 0] for layer, key in keys.items()}


def depth_profiles(groups: list[SeedGroup]) -> list[tuple[str, str, str, int, Interval]]:
    """(group, statistic, "first"/"last" logged step, layer, interval over seeds) of DEPTH_STATISTICS."""
    rows = []
    for group in groups:
        for statistic in DEPTH_STATISTICS:
            for when in ("first", "last"):
                profiles = [step_profile(run, statistic, when == "last") for run in group.runs]
                for layer in sorted(set.intersection(*(set(p) for p in profiles))):
                    rows.append((group.name, statistic, when, layer, mean_interval([p[layer] for p in profiles])))
    return rows


def pct(interval: Interval, fmt: str = ".2f") -> str:
    """An interval of fractions as percent: ``"-1.23 ± 0.45 %"``."""
    return f"{Interval(100 * interval.mean, 100 * interval.half_width, interval.n).text(fmt)} %"


def growth_table(rows: list[tuple[str, str, str, Interval]], growth: dict) -> str:
    """Markdown: per (group, role) the mean final growth of layer 0 and of the last layer, slope and gap."""
    lines = ["| group | role | seeds | growth layer 0 | growth last layer | slope per layer | verdict "
             "| shallow half − deep half | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for index in range(0, len(rows), 2):
        (name, role, _, slope_i), (_, _, _, gap_i) = rows[index], rows[index + 1]
        seeds = growth[name, role]
        first = mean_interval([seed["growth"][0, -1] for seed in seeds.values()])
        last = mean_interval([seed["growth"][-1, -1] for seed in seeds.values()])
        lines.append(f"| {name} | {role} | {','.join(map(str, seeds))} | {pct(first)} | {pct(last)} | "
                     f"{pct(slope_i, '.3f')} | {verdict(slope_i)} | {pct(gap_i, '.3f')} | {verdict(gap_i)} |")
    return "\n".join(lines)


def profile_table(rows: list[tuple[str, str, str, int, Interval]]) -> str:
    """Markdown: per (statistic, group, first/last step) the value at the embedding, first, quartile, last layers."""
    cells: dict[tuple[str, str, str], dict[int, Interval]] = {}
    for name, statistic, when, layer, interval in rows:
        cells.setdefault((statistic, name, when), {})[layer] = interval
    if not cells:
        return "(no run logged act_rms/residual or attn_logit_max: train with metrics.log_variance_stats = true)"
    n_layers = max(layer for by_layer in cells.values() for layer in by_layer) + 1
    shown = [EMBEDDING, *sorted({0, n_layers // 4, n_layers // 2, 3 * n_layers // 4, n_layers - 1})]
    lines = ["| statistic | group | step | " + " | ".join("embedding" if layer == EMBEDDING else f"layer {layer}"
                                                      for layer in shown) + " |",
             "|---|---|---|" + "---|" * len(shown)]
    for (statistic, name, when), by_layer in cells.items():
        values = " | ".join(by_layer[layer].text(".2f") if layer in by_layer else "" for layer in shown)
        lines.append(f"| {statistic} | {name} | {when} | {values} |")
    return "\n".join(lines)


def plot_growth(groups: list[SeedGroup], roles: list[str], growth: dict, path: Path) -> None:
    """Top row: final growth vs layer; bottom row: shallow-half minus deep-half growth vs step (mean, band)."""
    plt = pyplot()
    fig, axes = plt.subplots(2, len(roles), figsize=(4.5 * len(roles), 7), squeeze=False)
    for column, role in enumerate(roles):
        for index, group in enumerate(groups):
            seeds = list(growth[group.name, role].values())
            colour, label = f"C{index % 10}", f"{group.name} ({len(seeds)} seeds)"
            layers = seeds[0]["layers"]
            plot_band(axes[0, column], layers, [mean_interval([100 * s["growth"][i, -1] for s in seeds])
                                                for i in range(len(layers))], colour, marker="o", markersize=3,
                      label=label)
            steps = sorted(set.intersection(*(set(s["steps"]) for s in seeds)))
            gaps = [dict(zip(s["steps"], 100 * shallow_minus_deep(s["growth"]))) for s in seeds]
            plot_band(axes[1, column], steps, [mean_interval([gap[step] for gap in gaps]) for step in steps],
                      colour, label=label)
        axes[0, column].set(title=role, xlabel="layer", ylabel="std growth, first to last logged step (%)")
        axes[1, column].set(xlabel="step", ylabel="shallow half − deep half growth (% points)")
        axes[1, column].axhline(0, color="black", lw=0.5)
        for ax in axes[:, column]:
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize="small")
    fig.suptitle("Per-layer weight std growth (mean over seeds, 95 % band)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_csvs(groups: list[SeedGroup], roles: list[str], growth: dict, summary: list, profile: list,
               out_dir: Path) -> None:
    """growth.csv (per run and layer), growth_summary.csv and depth_profile.csv (per group), unrounded."""
    with open(out_dir / "growth.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["group", "run", "seed", "role", "layer", "step_first", "step_last", "std_first",
                         "std_last", "growth"])
        for group in groups:
            for role in roles:
                for run in group.runs:
                    s = growth[group.name, role][run_seed(run)]
                    for i, layer in enumerate(s["layers"]):
                        writer.writerow([group.name, run.name, run_seed(run), role, layer, s["steps"][0],
                                         s["steps"][-1], repr(float(s["std"][i, 0])), repr(float(s["std"][i, -1])),
                                         repr(float(s["growth"][i, -1]))])
    for name, header, rows in (("growth_summary.csv", ["group", "role", "quantity"], summary),
                               ("depth_profile.csv", ["group", "statistic", "step", "layer"], profile)):
        with open(out_dir / name, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow([*header, "n", "mean", "ci95_half_width", "ci95_low", "ci95_high"])
            for *keys, i in rows:
                writer.writerow([*keys, i.n, repr(i.mean), repr(i.half_width), repr(i.low), repr(i.high)])


NOTES = """growth = std at the last logged step / std at the first logged step − 1 (the first logged step is
step 1, one optimizer step after init). *slope per layer*: least-squares slope of the final growth
against the layer index, in percentage points per layer (negative: shallow layers grew more).
*shallow half − deep half*: mean growth of layers 0 .. L/2−1 minus that of layers L/2 .. L−1
(positive: shallow layers grew more). Values are mean ± half-width of the 95 % Student-t interval
over the group's seeds (`reporting/stats.py`); *verdict* "differs" when the interval excludes zero,
"not resolved" when it contains zero (not evidence of no depth trend)."""


def report_text(runs: list[RunDir], growth_md: str, profile_md: str) -> str:
    sources = "\n".join(f"- `{run.path}`" for run in runs)
    return (f"# Per-layer weight std growth by depth\n\nRuns:\n{sources}\n\n## Growth by depth\n\n{growth_md}\n\n"
            f"{NOTES}\n\n## Activation statistics by depth at the first and last logged step (mean ± 95 % "
            f"interval over seeds; layer l = after block l)\n\n{profile_md}\n\n![growth by layer](layer_growth.png)\n")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dirs", nargs="+", help="run directories (outputs/<run_name>/)")
    parser.add_argument("--roles", default="attn.q,attn.k,attn.v", help="comma-separated per-layer roles")
    parser.add_argument("--out", type=Path, default=Path("outputs/reports/layer_growth"), help="output directory")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files in --out")
    return parser.parse_args(argv)


def checked_roles(runs: list[RunDir], roles_arg: str) -> list[str]:
    """The --roles every run logged per layer; a one-line error names the first run that lacks one."""
    roles = [role.strip() for role in roles_arg.split(",") if role.strip()]
    if not roles:
        raise ValueError(f"--roles {roles_arg!r} names no role; pass e.g. attn.q,attn.k,attn.v")
    for run in runs:
        missing = [role for role in roles if role not in std_roles(run.records)]
        if missing:
            raise ValueError(f"{run.path} has no weight_std/{missing[0]}/layer_NN; pass --roles from "
                             f"{','.join(std_roles(run.records)) or '(none logged)'}")
    return roles


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        runs = [load_run(path) for path in args.run_dirs]
        unique_names(runs)
        roles = checked_roles(runs, args.roles)
        groups = group_runs(runs)
        growth = {(group.name, role): group_growth(group, role) for group in groups for role in roles}
        prepare_out_dir(args.out, OUTPUT_FILES, args.overwrite)
    except INPUT_ERRORS as exc:
        return error_exit(exc)
    summary, profile = summary_rows(groups, roles, growth), depth_profiles(groups)
    report = report_text(runs, growth_table(summary, growth), profile_table(profile))
    (args.out / "layer_growth.md").write_text(report)
    write_csvs(groups, roles, growth, summary, profile, args.out)
    plot_growth(groups, roles, growth, args.out / "layer_growth.png")
    print(report)
    print(f"wrote {', '.join(OUTPUT_FILES)} to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
