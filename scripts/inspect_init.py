"""Show the measured std of every initialized weight next to its scheme's formula (docs/design.md §10).

    python scripts/inspect_init.py --config train_configs/debug.toml [--section.key VALUE ...] [--json | --rules]
    torchrun --nproc_per_node=N scripts/inspect_init.py --config ... --json

The model is built and initialized by the training code path (``components.build``): meta build,
FSDP2 ``fully_shard`` on the data-parallel mesh (a world of one without torchrun), ``to_empty``,
``init_weights``. Only for this report does each parameter get gathered (``full_tensor()``, one at
a time, every rank taking part); rank 0 prints. ``--json`` prints a list with one object per
parameter: name, role, layer, shape, std, expected_std, mean, absmax, sha256 (of the full
tensor's float32 bytes, row-major), so digests from runs with different world sizes can be
compared. ``expected_std`` is the std of the scheme's distribution, truncation included.
Without ``--json`` a readable table is printed. ``--rules`` prints instead what the [parametrization]
resolved for every tensor (init_schemes/parametrization.py): role, layer, init std, forward multiplier,
AdamW lr, weight decay and eps (the values at the peak of the schedule).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, so `python scripts/...` works

from components.build import build_model_and_init, model_args_from_config  # noqa: E402
from components.config import ConfigError, load_config  # noqa: E402
from components.optim import is_decayed  # noqa: E402
from components.tokenizer import build_tokenizer  # noqa: E402
from distributed.env import distributed_session  # noqa: E402
from init_schemes.base import InitSpec  # noqa: E402
from roles import canonical_name  # noqa: E402

USAGE = "usage: inspect_init.py --config PATH [--section.key VALUE ...] [--json | --rules]"


def sha256_hex(tensor: torch.Tensor) -> str:
    """Hex sha256 of the tensor's float32 values in row-major (C) order."""
    data = tensor.detach().to(device="cpu", dtype=torch.float32).contiguous()
    return hashlib.sha256(data.numpy().tobytes()).hexdigest()


def tensor_report(name: str, full: torch.Tensor, role: str, layer: int | None, spec: InitSpec) -> dict:
    """One parameter's entry of the §10 contract (statistics in float64)."""
    values = full.detach().to(torch.float64)
    return {
        "name": name, "role": role, "layer": layer, "shape": list(full.shape),
        "std": values.std().item() if values.numel() > 1 else 0.0,
        "expected_std": spec.realized_std,
        "mean": values.mean().item(), "absmax": values.abs().max().item(),
        "sha256": sha256_hex(full),
    }


def gather_reports(model: torch.nn.Module, initializer, is_main: bool) -> list[dict]:
    """Per-parameter reports; every rank joins each ``full_tensor()``, only ``is_main`` keeps results."""
    reports = []
    for raw_name, param in model.named_parameters():
        full = param.full_tensor() if hasattr(param, "full_tensor") else param
        if is_main:
            name = canonical_name(raw_name)
            role, layer, spec = initializer.applied[name]
            reports.append(tensor_report(name, full, role, layer, spec))
        del full  # one gathered tensor at a time
    return reports


def describe_spec(spec: InitSpec) -> str:
    """Short distribution label: N, U, TN+-k sigma, or the constant."""
    if spec.dist == "constant":
        return f"={spec.value:g}"
    if spec.dist == "trunc_normal":
        return f"TN±{spec.b / spec.std:.3g}σ"
    return "N" if spec.dist == "normal" else "U"


def format_table(reports: list[dict], specs: dict[str, InitSpec], overridden: tuple[str, ...] = ()) -> str:
    """Readable table: name, role, layer, shape, distribution, measured std, expected std, ratio; the
    distribution of a role in ``overridden`` (``init.std_overrides``) is marked ``*``."""
    header = ("parameter", "role", "layer", "shape", "dist", "std", "expected", "ratio")
    rows = []
    for r in reports:
        ratio = f"{r['std'] / r['expected_std']:.4f}" if r["expected_std"] > 0 else "-"
        rows.append((r["name"], r["role"], "-" if r["layer"] is None else str(r["layer"]),
                     "x".join(map(str, r["shape"])), describe_spec(specs[r["name"]]) + ("*" if r["role"] in overridden else ""),
                     f"{r['std']:.6g}", f"{r['expected_std']:.6g}", ratio))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in (header, *rows)]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def rules_table(cfg, initializer) -> str:
    """Per tensor: what the parametrization resolved (the init std realized by the drawn distribution, or =constant)."""
    header = ("parameter", "role", "layer", "init std", "fwd mult", "lr", "weight decay", "eps")
    p, o = initializer.parametrization, cfg.optimizer
    rows = []
    for name, (role, layer, spec) in initializer.applied.items():
        rule = p.rule(role, layer)
        decay = o.weight_decay * rule.weight_decay if is_decayed(name, o) else 0.0
        rows.append((name, role, "-" if layer is None else str(layer), describe_spec(spec) if spec.dist == "constant" else f"{spec.realized_std:.6g}",
                     f"{p.forward_multiplier(role):.4g}", f"{o.lr * rule.lr:.4g}", f"{decay:.4g}", f"{o.eps * rule.eps:.3g}"))
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in (header, *rows)]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def run(argv: list[str]) -> int:
    cfg, flags = load_config(argv, flags=("json", "rules", "help"))
    if "help" in flags:
        print(USAGE)
        return 0
    tokenizer = build_tokenizer(cfg.tokenizer)  # the vocabulary training would use (model.vocab_size may widen it)
    model_args_from_config(cfg, tokenizer.n_vocab)  # shape errors surface before any process group exists
    with distributed_session(cfg.training.device, cfg.parallelism.data_parallel_replicate_degree,
                             cfg.parallelism.data_parallel_shard_degree) as env:
        model, args, initializer = build_model_and_init(cfg, tokenizer.n_vocab, env)
        reports = gather_reports(model, initializer, env.is_main)
    if not env.is_main:
        return 0
    if "json" in flags:
        print(json.dumps(reports, indent=1))
        return 0
    if "rules" in flags:
        a = args
        print(f"# parametrization {cfg.parametrization.name}: embedding x{a.embedding_multiplier:g}, logits "
              f"x{a.logit_multiplier:g}, attention scale {a.attn_scale or a.head_dim ** -0.5:.4g}, residual branches "
              f"x{a.residual_multiplier:g}; init {cfg.init.scheme}")
        print(rules_table(cfg, initializer))
        return 0
    print(f"# {args.family}/{cfg.model.flavor}: L={args.n_layers} d={args.dim} d_ff={args.ffn_dim} "
          f"vocab={args.vocab_size}; init {cfg.init.scheme}, seed {cfg.job.seed}, {env.world_size} rank(s)")
    overrides = cfg.init.std_overrides
    if overrides:
        print(f"# std_overrides (rows marked *): {', '.join(f'{role}={std:g}' for role, std in overrides.items())}")
    specs = {name: spec for name, (_, _, spec) in initializer.applied.items()}
    print(format_table(reports, specs, tuple(overrides)))
    return 0


def main(argv: list[str]) -> int:
    try:
        return run(argv)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        if os.environ.get("RANK", "0") == "0":
            print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
