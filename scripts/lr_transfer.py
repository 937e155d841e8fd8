"""Learning-rate transfer: a lr x width sweep (lr x depth for CompleteP); where the optimum lies per size.

    python scripts/lr_transfer.py [--mode width] [--sizes 64,128,256] [--parametrizations sp,mup]
    python scripts/lr_transfer.py --mode depth --sizes 2,4,8 --parametrizations mup,completep
    python scripts/lr_transfer.py ... [--config train_configs/debug.toml] [--device cuda] [-- --section.key VALUE ...]

μTransfer (Tensor Programs V, Yang et al. 2022, arXiv:2203.03466, Fig. 1 and §6): under μP the loss-vs-lr
curves of models of different width share their minimum, so the lr tuned on a small proxy is the large
model's; under SP the optimum moves (roughly ∝ 1/width for Adam's hidden weights). CompleteP (Dey et al.
2025, Fig. 1) makes the same hold across depth. ``lr`` here is ``optimizer.lr``, the lr of the base-shape
tensors; the parametrization scales each tensor's lr from it.

Every point is one in-process run of ``--steps`` steps of the ``--config`` model (default the debug Llama:
4096-token cl100k slice, the embedded corpus, 16 x 128-token batches, cosine schedule, 10 warmup steps)
with the scanned width or depth, measured by the mean validation loss over ``--val-batches`` fixed
batches (a run whose loss turns non-finite scores inf). Writes ``<out>/lr_<mode>.csv`` (every run),
``<out>/optima_<mode>.json`` (parametrization -> size -> best lr, loss; and the spread of the best lr in
log2 units over the sizes) and ``<out>/lr_<mode>.png`` (loss against lr, one panel per parametrization,
one curve per size). Default ``--out outputs/lr_transfer``.
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

from components.build import build_local_model  # noqa: E402
from components.config import ConfigError, load_config  # noqa: E402
from components.data import TokenBatches, TokenDataset, ensure_dataset  # noqa: E402
from components.lr_schedule import build_lr_scheduler  # noqa: E402
from components.optim import build_optimizer  # noqa: E402
from components.tokenizer import build_tokenizer  # noqa: E402


def run_config(opts: argparse.Namespace, parametrization: str, size: int, lr: float):
    """The Config of one point: ``--config`` <- the scanned size, lr and parametrization <- ``extra``."""
    size_key = "--model.dim" if opts.mode == "width" else "--model.n_layers"
    fixed_key, fixed = ("--model.n_layers", opts.depth) if opts.mode == "width" else ("--model.dim", opts.width)
    cfg, _ = load_config(["--config", str(opts.config), size_key, str(size), fixed_key, str(fixed),
                          "--optimizer.lr", repr(lr), "--training.steps", str(opts.steps),
                          "--parametrization.name", parametrization,
                          "--parametrization.base_width", str(opts.base_width),
                          "--parametrization.base_depth", str(opts.base_depth), *opts.extra])
    return cfg


def train_point(cfg, batches: tuple[TokenBatches, TokenBatches], vocab: int, device: str, val_batches: int) -> float:
    """Train ``cfg`` in-process and return its mean validation loss (inf if the loss turned non-finite)."""
    torch.manual_seed(cfg.job.seed)
    model, _, initializer = build_local_model(cfg, vocab, device)
    optimizer = build_optimizer(model, cfg.optimizer, torch.device(device), initializer.parametrization)
    scheduler = build_lr_scheduler(optimizer, cfg.lr_scheduler, cfg.training.steps)
    train, val = batches
    rows = slice(0, cfg.training.global_batch_size)
    for step in range(1, cfg.training.steps + 1):
        tokens = train.get(step, rows).to(device)
        loss = F.cross_entropy(model(tokens[:, :-1]).flatten(0, 1).float(), tokens[:, 1:].flatten())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.training.max_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 25 == 0 and not torch.isfinite(loss):
            return math.inf
    with torch.no_grad():
        total = sum(F.cross_entropy(model(t[:, :-1]).flatten(0, 1).float(), t[:, 1:].flatten()).item()
                    for t in (val.get(i, rows).to(device) for i in range(val_batches)))
    mean = total / val_batches
    return mean if math.isfinite(mean) else math.inf


def data_for(opts: argparse.Namespace):
    """(train, val) batches and the vocabulary of the ``--config`` tokenizer and data."""
    cfg = run_config(opts, "sp", (opts.sizes[0]), opts.lrs[0])
    tokenizer = build_tokenizer(cfg.tokenizer)
    path = ensure_dataset(cfg.data, tokenizer)
    t = cfg.training
    return (TokenBatches(TokenDataset(path, "train"), t.seq_len, t.global_batch_size, cfg.job.seed),
            TokenBatches(TokenDataset(path, "val"), t.seq_len, t.global_batch_size, cfg.job.seed)), tokenizer.n_vocab


def sweep(opts: argparse.Namespace) -> list[dict]:
    """Rows {parametrization, size, lr, val_loss, seconds} over parametrizations x sizes x lrs."""
    batches, vocab = data_for(opts)
    rows = []
    for parametrization in opts.parametrizations:
        for size in opts.sizes:
            for lr in opts.lrs:
                start = time.perf_counter()
                loss = train_point(run_config(opts, parametrization, size, lr), batches, vocab, opts.device,
                                   opts.val_batches)
                rows.append({"parametrization": parametrization, "size": size, "lr": lr, "val_loss": loss,
                             "seconds": round(time.perf_counter() - start, 2)})
                print(f"{parametrization:9s} {opts.mode} {size:5d} lr {lr:.3g}: val loss {loss:.4f}", flush=True)
    return rows


def optima(rows: list[dict]) -> dict[str, dict]:
    """parametrization -> {"best": {size: {lr, val_loss}}, "log2_lr_spread": max - min of log2(best lr)}."""
    out: dict[str, dict] = {}
    for r in rows:
        best = out.setdefault(r["parametrization"], {"best": {}})["best"]
        if r["size"] not in best or r["val_loss"] < best[r["size"]]["val_loss"]:
            best[r["size"]] = {"lr": r["lr"], "val_loss": r["val_loss"]}
    for entry in out.values():
        logs = [math.log2(b["lr"]) for b in entry["best"].values()]
        entry["log2_lr_spread"] = max(logs) - min(logs)
    return out


def plot(rows: list[dict], mode: str, path: Path) -> None:
    """Loss against lr (log2 axis), one panel per parametrization, one curve per size, optima marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parametrizations = list(dict.fromkeys(r["parametrization"] for r in rows))
    fig, axes = plt.subplots(1, len(parametrizations), figsize=(4.5 * len(parametrizations), 3.6), squeeze=False,
                             sharey=True)
    finite = [r["val_loss"] for r in rows if math.isfinite(r["val_loss"])]
    for ax, parametrization in zip(axes[0], parametrizations):
        for size in dict.fromkeys(r["size"] for r in rows):
            points = [(r["lr"], r["val_loss"]) for r in rows if r["parametrization"] == parametrization
                      and r["size"] == size and math.isfinite(r["val_loss"])]
            if not points:
                continue
            line, = ax.plot(*zip(*points), marker=".", label=f"{mode} {size}")
            best = min(points, key=lambda p: p[1])
            ax.plot(*best, marker="*", markersize=12, color=line.get_color())
        ax.set_xscale("log", base=2)
        ax.set_title(parametrization)
        ax.set_xlabel("optimizer.lr (base-shape tensors)")
        ax.set_ylim(min(finite) - 0.05, min(max(finite), min(finite) + 2.0))
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("validation loss")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def float_list(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("width", "depth"), default="width",
                        help="sweep lr x width (μP) or lr x depth (CompleteP)")
    parser.add_argument("--config", type=Path, default=Path("train_configs/debug.toml"),
                        help="train.py config the swept models start from")
    parser.add_argument("--parametrizations", type=lambda s: s.split(","), default=None,
                        help="comma list (default: sp,mup for width; mup,completep for depth)")
    parser.add_argument("--sizes", type=lambda s: [int(v) for v in s.split(",")], default=None,
                        help="widths (default 64,128,256) or depths (default 2,4,8)")
    parser.add_argument("--lrs", type=float_list, default=[2.0 ** -k for k in range(12, 3, -1)],
                        help="comma list of optimizer.lr (default 2^-12 .. 2^-4)")
    parser.add_argument("--width", type=int, default=128, help="width of the depth sweep (features)")
    parser.add_argument("--depth", type=int, default=2, help="depth of the width sweep (blocks)")
    parser.add_argument("--base-width", type=int, default=64, help="parametrization.base_width (features)")
    parser.add_argument("--base-depth", type=int, default=2, help="parametrization.base_depth (blocks)")
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per run")
    parser.add_argument("--val-batches", type=int, default=4, help="validation batches for each final loss (count)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--out", type=Path, default=Path("outputs/lr_transfer"),
                        help="directory for the CSV, optima JSON and figures")
    parser.add_argument("extra", nargs="*", help="more --section.key value overrides for every run, after --")
    opts = parser.parse_args(argv)
    if opts.parametrizations is None:
        opts.parametrizations = ["sp", "mup"] if opts.mode == "width" else ["mup", "completep"]
    if opts.sizes is None:
        opts.sizes = [64, 128, 256] if opts.mode == "width" else [2, 4, 8]
    return opts


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    start = time.perf_counter()
    try:
        rows = sweep(opts)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    opts.out.mkdir(parents=True, exist_ok=True)
    with open(opts.out / f"lr_{opts.mode}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    best = optima(rows)
    (opts.out / f"optima_{opts.mode}.json").write_text(json.dumps(best, indent=1) + "\n")
    plot(rows, opts.mode, opts.out / f"lr_{opts.mode}.png")
    print(f"# best lr per {opts.mode} ({time.perf_counter() - start:.0f} s of CPU/GPU time in all)")
    for parametrization, entry in best.items():
        cells = "  ".join(f"{size}: {b['lr']:.3g} ({b['val_loss']:.3f})" for size, b in entry["best"].items())
        print(f"{parametrization:9s} {cells}  | spread {entry['log2_lr_spread']:.0f} octaves")
    print(f"wrote {opts.out}/lr_{opts.mode}.csv, optima_{opts.mode}.json, lr_{opts.mode}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
