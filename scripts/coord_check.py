"""Coordinate check: RMS of every layer's activations against width (or depth) over a few Adam steps.

    python scripts/coord_check.py --mode width [--widths 64,128,256,512,1024] [--parametrizations sp,mup]
    python scripts/coord_check.py --mode depth [--depths 2,4,8,16,32] [--parametrizations mup,completep]

The check of Tensor Programs V (Yang et al. 2022, arXiv:2203.03466, §7.1 and Fig. 5; microsoft/mup
``mup/coord_check.py``): train the same small model at several widths for a few steps at one lr and
plot the size of each activation against width. Under a correct μP every curve is flat in width (the
log-log slope is 0); under SP the hidden activations grow with width from the first update on (slope
~ 1/2 at init for an N(0, 0.02) init, ~1 after Adam updates). The depth version (CompleteP, Dey et al.
2025, Fig. 1) trains widths fixed, depth 2..32: under completep the residual stream and logits stay
flat in depth, under plain μP they grow.

Each model trains ``--steps`` AdamW steps (no weight decay, constant lr) on one fixed batch of random
tokens; the forward of every step (step 0 = the initial model) is measured by
``components.activation_stats.ActivationStats`` (residual stream, branch outputs, MLP pre-activation,
attention-logit max), plus the RMS of the logits. Values are averaged over ``--seeds``; the slope is
the least-squares slope of log(value) against log(width or depth) at each step.

Writes ``<out>/coord_<mode>.csv`` (every value), ``<out>/slopes_<mode>.json`` (parametrization ->
step -> metric -> slope) and ``<out>/coord_<mode>.png`` (one row per parametrization, one column per
step, one line per metric). Default ``--out outputs/coord_check``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, so `python scripts/...` works

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from components.activation_stats import ActivationStats  # noqa: E402
from components.build import build_local_model  # noqa: E402
from components.config import load_config  # noqa: E402
from components.optim import build_optimizer  # noqa: E402

VOCAB = 256


def model_config(family: str, parametrization: str, width: int, depth: int, base_width: int, base_depth: int,
                 lr: float, seed: int, extra: list[str] = ()):
    """The run's Config: ``normal`` init (sigma0 0.02, width-free: classic SP), 4 heads (d_head grows with d)."""
    cfg, _ = load_config(["--model.name", family, "--model.dim", str(width), "--model.n_layers", str(depth),
                          "--model.n_heads", "4", "--model.n_kv_heads", "2" if family == "llama" else "4",
                          "--init.scheme", "normal", "--job.seed", str(seed), "--training.seq_len", "64",
                          "--optimizer.lr", str(lr), "--optimizer.weight_decay", "0",
                          "--parametrization.name", parametrization, "--parametrization.base_width", str(base_width),
                          "--parametrization.base_depth", str(base_depth), *extra])
    return cfg


def fixed_batch(seed: int, batch: int, seq_len: int) -> torch.Tensor:
    """[batch, seq_len + 1] random tokens (the same for every width, so only the model changes)."""
    return torch.randint(0, VOCAB, (batch, seq_len + 1), generator=torch.Generator().manual_seed(seed))


def train_and_measure(cfg, steps: int, batch: int, device: str = "cpu") -> list[dict[str, float]]:
    """Per step 0..steps: the activation statistics of that step's forward (step ``steps``: after the last update)."""
    torch.manual_seed(cfg.job.seed)
    model, _, initializer = build_local_model(cfg, VOCAB, device)
    stats = ActivationStats(model)
    optimizer = build_optimizer(model, cfg.optimizer, torch.device(device), initializer.parametrization)
    tokens = fixed_batch(cfg.job.seed, batch, cfg.training.seq_len).to(device)
    records = []
    for _ in range(steps + 1):
        with stats.capture():
            logits = model(tokens[:, :-1])
        values = stats.compute()
        values["logits_rms"] = logits.detach().pow(2).mean().sqrt().item()
        records.append(values)
        loss = F.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return records


def by_depth_summary(values: dict[str, float]) -> dict[str, float]:
    """Depth scans compare models of different depth: the last block's residual, block means of the rest."""
    summary = {"logits_rms": values["logits_rms"]}
    residual = sorted(k for k in values if k.startswith("act_rms/residual/layer_"))
    summary["act_rms/residual/last"] = values[residual[-1]]
    for family in ("act_rms/attn_out", "act_rms/mlp_out", "act_std/mlp_pre", "attn_logit_max"):
        layer_values = [v for k, v in values.items() if k.startswith(family + "/")]
        summary[f"{family}/mean"] = sum(layer_values) / len(layer_values)
    return summary


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) against log(x)."""
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-30)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def run_scan(opts: argparse.Namespace) -> list[dict]:
    """Rows {parametrization, x, seed, step, metric, value} over the scan (widths or depths)."""
    rows = []
    sizes = opts.widths if opts.mode == "width" else opts.depths
    for parametrization in opts.parametrizations:
        for size in sizes:
            width, depth = (size, opts.depth) if opts.mode == "width" else (opts.width, size)
            for seed in range(opts.seeds):
                cfg = model_config(opts.family, parametrization, width, depth, opts.base_width, opts.base_depth,
                                   opts.lr, seed, opts.extra)
                for step, values in enumerate(train_and_measure(cfg, opts.steps, opts.batch, opts.device)):
                    if opts.mode == "depth":
                        values = by_depth_summary(values)
                    rows += [{"parametrization": parametrization, "x": size, "seed": seed, "step": step,
                              "metric": metric, "value": value} for metric, value in values.items()]
    return rows


def mean_curves(rows: list[dict]) -> dict[tuple, dict[int, float]]:
    """(parametrization, step, metric) -> {x: mean over seeds}."""
    sums: dict[tuple, dict[int, list[float]]] = {}
    for r in rows:
        sums.setdefault((r["parametrization"], r["step"], r["metric"]), {}).setdefault(r["x"], []).append(r["value"])
    return {key: {x: sum(v) / len(v) for x, v in sorted(by_x.items())} for key, by_x in sums.items()}


def slopes(rows: list[dict]) -> dict[str, dict[int, dict[str, float]]]:
    """parametrization -> step -> metric -> log-log slope against the scanned size."""
    out: dict[str, dict[int, dict[str, float]]] = {}
    for (parametrization, step, metric), curve in mean_curves(rows).items():
        out.setdefault(parametrization, {}).setdefault(step, {})[metric] = loglog_slope(
            list(curve), list(curve.values()))
    return out


def plot(rows: list[dict], mode: str, path: Path) -> None:
    """The standard coordinate-check figure: rows = parametrizations, columns = steps, log-log axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = mean_curves(rows)
    parametrizations = sorted({k[0] for k in curves}, key=[r["parametrization"] for r in rows].index)
    steps = sorted({k[1] for k in curves})
    fig, axes = plt.subplots(len(parametrizations), len(steps), figsize=(3.2 * len(steps), 3 * len(parametrizations)),
                             squeeze=False, sharex=True)
    for i, parametrization in enumerate(parametrizations):
        for j, step in enumerate(steps):
            ax = axes[i][j]
            ax.set_prop_cycle(color=plt.cm.tab20.colors)  # up to 20 distinct metrics
            for (p, s, metric), curve in curves.items():
                if p == parametrization and s == step:
                    ax.plot(list(curve), list(curve.values()), marker=".", linewidth=1, label=metric)
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_title(f"{parametrization}, step {step}", fontsize=9)
            if i == len(parametrizations) - 1:
                ax.set_xlabel(mode)
    axes[0][0].set_ylabel("RMS (std for mlp_pre; max for logit)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=7)
    fig.tight_layout(rect=(0, 0.04 + 0.012 * len(labels) / 4, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("width", "depth"), default="width",
                        help="scan widths (μP check) or depths (CompleteP check)")
    parser.add_argument("--family", choices=("llama", "gpt2"), default="llama", help="model family")
    parser.add_argument("--parametrizations", type=lambda s: s.split(","), default=None,
                        help="comma list (default: sp,mup for width; mup,completep for depth)")
    parser.add_argument("--widths", type=int_list, default=[64, 128, 256, 512, 1024],
                        help="comma list of widths d (features) of the width scan")
    parser.add_argument("--depths", type=int_list, default=[2, 4, 8, 16, 32],
                        help="comma list of depths L (blocks) of the depth scan")
    parser.add_argument("--width", type=int, default=128, help="width of the depth scan (features)")
    parser.add_argument("--depth", type=int, default=2, help="depth of the width scan (blocks)")
    parser.add_argument("--base-width", type=int, default=64, help="parametrization.base_width (features)")
    parser.add_argument("--base-depth", type=int, default=2, help="parametrization.base_depth (blocks)")
    parser.add_argument("--steps", type=int, default=4, help="AdamW steps (measured: steps 0..N)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds averaged per point (count)")
    parser.add_argument("--batch", type=int, default=4, help="sequences of 64 tokens per step")
    parser.add_argument("--lr", type=float, default=1e-2, help="AdamW peak lr at the base shape")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (float32 either way)")
    parser.add_argument("--out", type=Path, default=Path("outputs/coord_check"),
                        help="directory for the CSV, slopes JSON and figure")
    parser.add_argument("extra", nargs="*", help="more --section.key value overrides for every model, after --")
    opts = parser.parse_args(argv)
    if opts.parametrizations is None:
        opts.parametrizations = ["sp", "mup"] if opts.mode == "width" else ["mup", "completep"]
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    start = time.perf_counter()
    try:
        rows = run_scan(opts)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    opts.out.mkdir(parents=True, exist_ok=True)
    with open(opts.out / f"coord_{opts.mode}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    result = slopes(rows)
    (opts.out / f"slopes_{opts.mode}.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(rows, opts.mode, opts.out / f"coord_{opts.mode}.png")
    last = opts.steps
    print(f"# log-log slope against {opts.mode} at step {last} (0 = flat); {time.perf_counter() - start:.0f} s")
    for metric in sorted(result[opts.parametrizations[0]][last]):
        print(f"{metric:34s} " + "  ".join(f"{p} {result[p][last][metric]:+.3f}" for p in opts.parametrizations))
    print(f"wrote {opts.out}/coord_{opts.mode}.csv, slopes_{opts.mode}.json, coord_{opts.mode}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
