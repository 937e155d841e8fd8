"""Learning-rate transfer: a lr x width sweep (lr x depth for CompleteP); where the optimum lies per size, and its drift.

    python scripts/lr_transfer.py [--mode width] [--sizes 64,128,256] [--parametrizations sp,mup] [--seeds 3]
    python scripts/lr_transfer.py --mode depth --sizes 2,4,8 --parametrizations mup,completep,completep:0.5
    python scripts/lr_transfer.py ... [--config train_configs/debug.toml] [--device cuda] [-- --section.key VALUE ...]

μTransfer (Tensor Programs V, Yang et al. 2022, arXiv:2203.03466, Fig. 1 and §6): under μP the loss-vs-lr
curves of models of different width share their minimum, so the lr tuned on a small proxy is the large
model's; under SP the optimum moves (roughly ∝ 1/width for Adam's hidden weights). CompleteP (Dey et al.
2025, arXiv:2505.01618, Fig. 1) makes the same hold across depth. ``lr`` here is ``optimizer.lr``, the lr
of the base-shape tensors; the parametrization scales each tensor's lr from it.

Every point is one run of train.py's trainer (``experiments/train_runs.py``; in this process by default) of
``--steps`` steps of the ``--config`` model with the scanned width or depth, scored by its validation loss
over ``metrics.val_batches`` fixed batches at the last step; step 1's training loss is its loss at init.
Runs go seed by seed (all of seed 0 first), each into ``<out>/runs/<name>/``; a finished run directory
is read, not trained again, so a sweep cut short (``--time-budget``, a killed job) continues where it
stopped when the same command runs again. The analysis (``reporting/lr_optimum.py``): a run that ends
non-finite or above its loss at init has diverged (scores +inf); the optimum of each size is the vertex
of a quadratic in log2 lr around the grid minimum of the mean-over-seeds curve, with a bootstrap interval
over seeds, or "at edge" when the minimum is on the grid's edge; the drift is log2 lr*(largest size) -
log2 lr*(proxy = smallest size), with a paired bootstrap interval.

Writes into ``--out`` (default outputs/lr_transfer): ``lr_<mode>.csv`` (every run), ``optima_<mode>.json``
(the analysis), ``lr_<mode>.png`` (loss against lr, one panel per parametrization, one line per size,
Tensor Programs V Fig. 1), ``optimum_<mode>.png`` (log2 lr* per size with intervals; loss by size at the
proxy's lr) and ``report_<mode>.md`` (the tables).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, so `python scripts/...` works

from components.config import ConfigError  # noqa: E402
from components.run_dir import RunDir  # noqa: E402
from components.sweep import import_previous  # noqa: E402
from experiments import train_runs  # noqa: E402
from reporting import lr_optimum  # noqa: E402
from reporting.figures import pyplot  # noqa: E402
from reporting.runs import load_run  # noqa: E402
from reporting.tables import write_rows_csv  # noqa: E402


def run_args(opts: argparse.Namespace, parametrization: str, size: int, lr: float, seed: int) -> list[str]:
    """train.py arguments of one point: ``--config`` <- the scanned size, lr, seed and parametrization <- ``extra``."""
    size_key = "--model.dim" if opts.mode == "width" else "--model.n_layers"
    fixed_key, fixed = ("--model.n_layers", opts.depth) if opts.mode == "width" else ("--model.dim", opts.width)
    return ["--config", str(opts.config), size_key, str(size), fixed_key, str(fixed), "--optimizer.lr", repr(lr),
            "--job.seed", str(seed), "--training.steps", str(opts.steps), "--training.device", opts.device,
            *train_runs.parametrization_args(parametrization), "--parametrization.base_width", str(opts.base_width),
            "--parametrization.base_depth", str(opts.base_depth), "--metrics.log_freq", str(opts.steps),
            "--metrics.val_freq", str(opts.steps), "--metrics.log_weight_std", "false", *opts.extra]


def point(opts: argparse.Namespace, args: list[str], run_dir: Path) -> dict:
    """Train (or read) one run: {val_loss, init_loss, diverged, seconds}."""
    start = time.perf_counter()
    result = train_runs.run_training(args, run_dir, opts.launcher)
    final = result.series("loss/val").get(opts.steps, math.inf) if not result.diverged else math.inf
    init = result.series("loss/train").get(1, math.nan)
    return {"val_loss": final, "init_loss": init, "diverged": lr_optimum.is_diverged(final, init),
            "seconds": round(time.perf_counter() - start, 2)}


def sweep(opts: argparse.Namespace) -> list[dict]:
    """Rows {parametrization, size, lr, seed, val_loss, init_loss, diverged, seconds}, seed by seed."""
    dataset = train_runs.prepared_dataset(["--config", str(opts.config), *opts.extra])
    rows, start = [], time.perf_counter()
    for seed in range(opts.seeds):
        for parametrization in opts.parametrizations:
            for size in opts.sizes:
                for lr in opts.lrs:
                    if opts.time_budget and time.perf_counter() - start > opts.time_budget:
                        print(f"time budget of {opts.time_budget:.0f} s spent: {len(rows)} runs done; the same "
                              "command continues the sweep", flush=True)
                        return rows
                    name = f"{parametrization.replace(':', '_alpha')}_{opts.mode}{size}_lr{lr:.4g}_seed{seed}"
                    args = [*run_args(opts, parametrization, size, lr, seed), "--data.dataset", dataset]
                    row = {"parametrization": parametrization, "size": size, "lr": lr, "seed": seed,
                           **point(opts, args, opts.out / "runs" / name)}
                    rows.append(row)
                    print(f"{parametrization:13s} {opts.mode} {size:5d} lr {lr:.4g} seed {seed}: val loss "
                          f"{row['val_loss']:.4f}{' (diverged)' if row['diverged'] else ''}", flush=True)
    return rows


def rows_from_runs(runs_dir: Path, mode: str) -> list[dict]:
    """The rows of the finished (or diverged) run directories under ``runs_dir``, e.g. a ``scripts/sweep.py``
    output directory, or in an archive of one (``--archive``'s .tar.gz, or a .tar.xz of the same files):
    parametrization, size (model.dim or model.n_layers), lr and seed from each config.toml, the scores from
    metrics.jsonl; ``diverged.json`` (sweep.py's mark of a non-finite stop) means diverged. Directories with
    neither ``finished.json`` nor ``diverged.json`` (still running, interrupted) are skipped."""
    if runs_dir.is_file():  # an archive: its finished and diverged run directories, unpacked as sweep.py does
        with tempfile.TemporaryDirectory() as tmp:
            try:
                import_previous(runs_dir, Path(tmp))
            except tarfile.TarError:
                raise ValueError(f"--runs {runs_dir} is not a readable archive (.tar.gz, .tar.xz); pass a sweep's "
                                 "output directory or its runs.tar.gz") from None
            return rows_from_runs(Path(tmp), mode)
    if not runs_dir.is_dir():
        raise ValueError(f"--runs {runs_dir} is neither a directory nor an archive; pass a sweep's output "
                         "directory or its runs.tar.gz")
    rows, unfinished = [], []
    for run_dir in sorted(p for p in runs_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        diverged = RunDir(run_dir).marked_diverged
        if not diverged and not RunDir(run_dir).marked_finished:
            unfinished.append(run_dir.name)
            continue
        run = load_run(run_dir)
        rows.append(row_of_run(run.tables, run.records, diverged, mode))
    if unfinished:
        print(f"note: {len(unfinished)} run directories under {runs_dir} are not finished and are left out "
              f"(e.g. {unfinished[0]}); run the sweep again to finish them", flush=True)
    if not rows:
        raise ValueError(f"no finished run directory under {runs_dir}")
    return rows


def row_of_run(config: dict, records: list[dict], diverged: bool, mode: str) -> dict:
    """One row from a run's resolved config (a dict) and metrics records."""
    p = config["parametrization"]
    label = p["name"] if p["name"] != "completep" else f"completep:{p['alpha']:g}"  # the exponent, always said
    steps = config["training"]["steps"]
    final = next((r["loss/val"] for r in records if r["step"] == steps and "loss/val" in r), math.inf)
    init = next((r["loss/train"] for r in records if r["step"] == 1 and "loss/train" in r), math.nan)
    final = math.inf if diverged else final
    return {"parametrization": label, "size": config["model"]["dim" if mode == "width" else "n_layers"],
            "lr": config["optimizer"]["lr"], "seed": config["job"]["seed"], "val_loss": final, "init_loss": init,
            "diverged": lr_optimum.is_diverged(final, init), "seconds": None}


def analysis(rows: list[dict]) -> dict:
    """reporting.lr_optimum.analyse over the rows (group = parametrization)."""
    return lr_optimum.analyse([{"group": r["parametrization"], "size": r["size"], "lr": r["lr"], "seed": r["seed"],
                                "loss": r["val_loss"], "init_loss": r["init_loss"]} for r in rows])


def mean_losses(rows: list[dict], parametrization: str, size: int) -> list[tuple[float, float]]:
    """(lr, mean val loss over seeds) of one curve; +inf where a seed diverged."""
    by_lr: dict[float, list[float]] = {}
    for r in rows:
        if r["parametrization"] == parametrization and r["size"] == size:
            by_lr.setdefault(r["lr"], []).append(math.inf if r["diverged"] else r["val_loss"])
    return [(lr, sum(v) / len(v)) for lr, v in sorted(by_lr.items())]


def plot_curves(rows: list[dict], result: dict, mode: str, path: Path) -> None:
    """Loss against lr (log2 axis), one panel per parametrization, one line per size; fitted optima as stars,
    diverged points as crosses on the panel's top edge."""
    plt = pyplot()
    groups = list(result)
    fig, axes = plt.subplots(1, len(groups), figsize=(4.6 * len(groups), 3.8), squeeze=False, sharey=True)
    finite = [r["val_loss"] for r in rows if not r["diverged"]]
    top = min(max(finite), min(finite) + 3.0)  # a finite loss above it is drawn as a triangle on the top edge
    grid = len({r["lr"] for r in rows})
    for ax, group in zip(axes[0], groups):
        colors = plt.cm.viridis([i / max(1, len(result[group]["optimum_log2_lr"]) - 1)
                                 for i in range(len(result[group]["optimum_log2_lr"]))])
        for color, (size, opt) in zip(colors, result[group]["optimum_log2_lr"].items()):
            curve = mean_losses(rows, group, size)
            ok = [(lr, min(loss, top)) for lr, loss in curve if math.isfinite(loss)]
            missing = f" ({len(curve)} of {grid} lrs)" if len(curve) < grid else ""
            ax.plot(*zip(*ok), marker=".", color=color, label=f"{mode} {size}{missing}")
            high = [lr for lr, loss in curve if math.isfinite(loss) and loss > top]
            ax.plot(high, [top] * len(high), "^", color=color)
            bad = [lr for lr, loss in curve if not math.isfinite(loss)]
            ax.plot(bad, [top] * len(bad), "x", color=color)
            y_star = min(loss for _, loss in ok)
            ax.plot(2.0 ** opt["value"], y_star, marker="*", markersize=11, color=color,
                    markeredgecolor="black" if opt["at_edge"] else color)
        ax.set_xscale("log", base=2)
        ax.set_ylim(min(finite) - 0.05, top + 0.05)
        ax.set_title(group)
        ax.set_xlabel("optimizer.lr (base-shape tensors)")
        ax.legend(fontsize=7)
    n_seeds = len({r["seed"] for r in rows})
    axes[0][0].set_ylabel("validation loss (1 seed)" if n_seeds == 1 else
                          f"validation loss (mean over {n_seeds} seeds)")
    save(fig, path)


def plot_optima(result: dict, mode: str, path: Path) -> None:
    """Left: log2 lr* against size with 95 % bootstrap intervals (hollow = at a grid edge; none with 1 seed).
    Right: the loss at the proxy's best grid lr against size."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2 + 0.25 * len(result)))
    for group, entry in result.items():
        sizes = list(entry["optimum_log2_lr"])
        opts = list(entry["optimum_log2_lr"].values())
        values = [o["value"] for o in opts]
        line = left.plot(sizes, values, marker="o", label=f"{group}: drift {drift_text(entry['drift_octaves'])}")
        # The interval as drawn from low to high: a percentile bootstrap need not contain the estimate from the
        # mean curve (e.g. when resampled seeds move the minimum to a grid edge), so no error bar around it.
        for size, opt in zip(sizes, opts):
            if opt["low"] is not None and opt["high"] is not None:
                left.plot([size, size], [opt["low"], opt["high"]], marker="_", markersize=8,
                          color=line[0].get_color(), linewidth=1)
        edges = [(s, v) for s, v, o in zip(sizes, values, opts) if o["at_edge"]]
        if edges:  # hollow: a bound, not an estimate
            left.plot(*zip(*edges), "o", markersize=8, markerfacecolor="white", color=line[0].get_color(), zorder=3)
        at = entry["at_proxy_lr"]
        known = [(s, v) for s, v in at["loss_by_size"].items() if v is not None]
        right.plot(*zip(*known), marker="o", label=f"{group} (lr {at['lr']:.3g})")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.set_xlabel(mode)
    right.legend(fontsize=7)
    handles, labels = left.get_legend_handles_labels()  # the drift texts are long: one legend below both panels
    fig.legend(handles, labels, loc="lower left", fontsize=7)
    bottom = (0.17 * len(result) + 0.15) / fig.get_figheight()
    one_seed = all(o["n_seeds"] < 2 for e in result.values() for o in e["optimum_log2_lr"].values())
    left.set_title("hollow: the optimum is at an edge (a bound)", fontsize=8)
    left.set_ylabel("log2 optimal lr (1 seed, no interval)" if one_seed else
                    "log2 optimal lr (95 % bootstrap interval)")
    right.set_ylabel("validation loss at the proxy's best lr")
    save(fig, path, rect=(0, bottom, 1, 1))


def save(fig, path: Path, rect: tuple[float, float, float, float] = (0, 0, 1, 1)) -> None:
    fig.tight_layout(rect=rect)
    fig.savefig(path, dpi=110)
    fig.savefig(path.with_suffix(".pdf"))
    pyplot().close(fig)


EDGE_WORDS = {"low": "at the low edge", "high": "at the high edge", "both": "with no finite neighbour"}


def edge_words(at_edge: str) -> str:
    """'target low' -> 'target at the low edge'; 'proxy high, target both' -> each part so."""
    return ", ".join(" ".join([*part.split()[:-1], EDGE_WORDS[part.split()[-1]]]) for part in at_edge.split(", "))


def drift_text(est: dict) -> str:
    """'-0.31 [-0.62, +0.05] octaves', or a bound: '-2.00 octaves, a bound (target at the low edge)'."""
    if est["at_edge"]:
        return f"{est['value']:+.2f} octaves, a bound ({edge_words(est['at_edge'])})"
    interval = f" [{est['low']:+.2f}, {est['high']:+.2f}]" if est["low"] is not None else " (1 seed, no interval)"
    return f"{est['value']:+.2f}{interval} octaves"


def optimum_text(est: dict) -> str:
    if est["at_edge"]:
        return f"2^{est['value']:.2f} ({edge_words(est['at_edge'])})"
    interval = f" [2^{est['low']:.2f}, 2^{est['high']:.2f}]" if est["low"] is not None else ""
    return f"2^{est['value']:.2f}{interval}"


def report(result: dict, mode: str, rows: list[dict]) -> str:
    """The Markdown tables: optimum per size, drift, and loss by size at the proxy's lr."""
    sizes = sorted({r["size"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    grid = sorted({r["lr"] for r in rows})
    interval = ("1 seed, no interval: nothing here is a claim" if len(seeds) == 1 else
                f"[95 % bootstrap interval over the {len(seeds)} seeds]")
    lines = [f"# lr transfer over {mode}: {len(rows)} runs ({sum(r['diverged'] for r in rows)} diverged), "
             f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''} ({', '.join(map(str, seeds))})", "",
             "lr* = the vertex of a quadratic in log2 lr around the grid minimum of the mean-over-seeds curve, "
             f"{interval} (reporting/lr_optimum.py); \"at an edge\": the minimum is on the edge of the lrs that "
             "ran (or next to a diverged lr), so lr* is only bounded there; \"k of N lrs\": only k of the "
             f"grid's {len(grid)} lrs finished for that size.", "",
             "| parametrization | " + " | ".join(f"{mode} {s}: lr*" for s in sizes) + " | drift (largest - proxy) |",
             "|---" * (len(sizes) + 2) + "|"]
    for group, entry in result.items():
        ran = {s: len({r["lr"] for r in rows if r["parametrization"] == group and r["size"] == s}) for s in sizes}
        cells = [optimum_text(entry["optimum_log2_lr"][s]) if s in entry["optimum_log2_lr"] else "all diverged"
                 if s in entry["all_diverged"] else "not run" for s in sizes]
        cells = [c + (f", {ran[s]} of {len(grid)} lrs" if 0 < ran[s] < len(grid) else "") for c, s in zip(cells, sizes)]
        lines.append(f"| {group} | " + " | ".join(cells) + f" | {drift_text(entry['drift_octaves'])} |")
    lines += ["", f"Loss at the proxy's best grid lr, by {mode}:", "",
              "| parametrization | lr | " + " | ".join(f"{mode} {s}" for s in sizes) + " | improves with every step |",
              "|---" * (len(sizes) + 3) + "|"]
    for group, entry in result.items():
        at = entry["at_proxy_lr"]
        cells = [f"{at['loss_by_size'][s]:.4f}" if at["loss_by_size"].get(s) is not None else "n/a" for s in sizes]
        lines.append(f"| {group} | {at['lr']:.4g} | " + " | ".join(cells) +
                     f" | {'yes' if at['improves_monotonically'] else 'no'} |")
    return "\n".join(lines + loss_grid(rows, mode, sizes, grid)) + "\n"


def loss_grid(rows: list[dict], mode: str, sizes: list[int], grid: list[float]) -> list[str]:
    """Every curve's points: mean validation loss over seeds ± the seeds' sample std (no ± with one seed)."""
    lines = ["", "Validation loss per point, mean ± sample std over seeds (\"diverged\" where a seed diverged):", "",
             f"| parametrization | {mode} | " + " | ".join(f"lr 2^{math.log2(lr):.0f}" if math.log2(lr).is_integer()
                                                         else f"lr {lr:.3g}" for lr in grid) + " |",
             "|---" * (len(grid) + 2) + "|"]
    for group in dict.fromkeys(r["parametrization"] for r in rows):
        for size in sizes:
            cells = []
            for lr in grid:
                runs = [r for r in rows if (r["parametrization"], r["size"], r["lr"]) == (group, size, lr)]
                losses = [r["val_loss"] for r in runs]
                cells.append("not run" if not runs else "diverged" if any(r["diverged"] for r in runs) else
                             f"{statistics.mean(losses):.3f}" + (f" ± {statistics.stdev(losses):.3f}"
                                                                 if len(losses) > 1 else ""))
            lines.append(f"| {group} | {size} | " + " | ".join(cells) + " |")
    return lines


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("width", "depth"), default="width",
                        help="sweep lr x width (μP) or lr x depth (CompleteP)")
    parser.add_argument("--config", type=Path, default=Path("train_configs/debug.toml"),
                        help="train.py config the swept models start from")
    train_runs.add_study_options(parser, "sweep")
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=None,
                        help="widths (default 64,128,256) or depths (default 2,4,8); the first is the proxy")
    parser.add_argument("--lrs", type=train_runs.number_list(float), default=[2.0 ** -k for k in range(12, 3, -1)],
                        help="comma list of optimizer.lr (default 2^-12 .. 2^-4)")
    parser.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per point (count; >= 3 for intervals)")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per run")
    parser.add_argument("--device", default="auto", help="training.device: auto, cpu or cuda")
    parser.add_argument("--time-budget", type=float, default=0,
                        help="stop launching runs after this many seconds (0 = none); rerun to continue")
    parser.add_argument("--runs", type=Path, default=None,
                        help="analyse the finished run directories under this directory (e.g. a scripts/sweep.py "
                             "output) instead of training; --mode says whether size is model.dim or model.n_layers")
    parser.add_argument("--out", type=Path, default=Path("outputs/lr_transfer"),
                        help="directory for the runs, CSV, optima JSON, report and figures")
    parser.add_argument("extra", nargs="*", help="more --section.key value overrides for every run, after --")
    opts = parser.parse_args(argv)
    if opts.parametrizations is None:
        opts.parametrizations = train_runs.default_parametrizations(opts.mode)
    if opts.sizes is None:
        opts.sizes = [64, 128, 256] if opts.mode == "width" else [2, 4, 8]
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    start = time.perf_counter()
    try:
        rows = rows_from_runs(opts.runs, opts.mode) if opts.runs else sweep(opts)
        if not rows:
            raise ValueError("no run finished within --time-budget; raise it")
        result = analysis(rows)
    except (ConfigError, ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    opts.out.mkdir(parents=True, exist_ok=True)
    write_rows_csv(rows, opts.out / f"lr_{opts.mode}.csv")
    (opts.out / f"optima_{opts.mode}.json").write_text(json.dumps(result, indent=1) + "\n")
    plot_curves(rows, result, opts.mode, opts.out / f"lr_{opts.mode}.png")
    plot_optima(result, opts.mode, opts.out / f"optimum_{opts.mode}.png")
    text = report(result, opts.mode, rows)
    (opts.out / f"report_{opts.mode}.md").write_text(text)
    print(text + f"({time.perf_counter() - start:.0f} s) wrote {opts.out}/lr_{opts.mode}.csv, optima_{opts.mode}.json, "
          f"lr_{opts.mode}.png, optimum_{opts.mode}.png, report_{opts.mode}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
