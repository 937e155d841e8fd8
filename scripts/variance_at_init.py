"""Variance at init: measured per-layer activation and gradient RMS of a transformer vs the variance theory.

    python scripts/variance_at_init.py --config train_configs/gpt2_124m/base.toml \
        [--init.scheme a,b,...] [--batches N] [--out DIR] [--section.key VALUE ...]

For every registered init scheme (or the comma-separated ``--init.scheme`` list) the model of the
config is built and initialized on this process (``components.build.build_local_model``: the
training init, no FSDP or compile) and runs ONE forward and backward of the mean next-token loss
on ``--batches`` real training batches (``training.global_batch_size`` x ``training.seq_len``
tokens each, batch indices 1..N of the config's data). Measured, per layer (the statistics of
``components.activation_stats.ActivationStats``, plus the RMS of dL/dh of the residual stream h):
act_rms/residual, act_rms/attn_out, act_rms/mlp_out, act_std/mlp_pre and grad_rms/residual.
Weights are frozen (no weight gradients are needed).

Prediction (mean field at init, every weight independent with the std its scheme sets, norm gains 1;
``predict``): a pre-norm block sees a unit second moment after its norm, so with q_l the residual
second moment after block l (E[h^2] of the embedding sum for q_{-1}) and m the residual multiplier,
    q_l = q_{l-1} + m^2 (A_l + M_l)   (branches are uncorrelated with the residual at init),
    mlp_pre variance  p_l = d sigma_pre^2   (sigma_pre: mlp.up for GELU, mlp.gate for SwiGLU),
    GELU MLP          M_l = d_ff sigma_out^2 c_phi(p_l),
    SwiGLU            M_l = d_ff sigma_out^2 c_silu(p_l) d sigma_up^2,
    attention         A_l = d sigma_out^2 kappa_l d sigma_v^2,
where c_phi(q) = E[phi(u)^2], u ~ N(0, q) (init_schemes/meanfield.py; the paper's c_phi
at q = 1) and kappa_l = E_s[sum_t a_st^2] is the value path's averaging over independent tokens:
a = causal softmax of i.i.d. N(0, s_l^2) logits with s_l^2 = scale^2 hd (d sigma_q^2)(d sigma_k^2)
(Monte Carlo, ``attention_kappa``; (1/T) sum_{s<T} 1/(s+1) for uniform attention, s_l = 0).
The q.k path's own contribution to the output is dropped. Backward, from the measured dL/dh after the last block
down: each sublayer multiplies the gradient second moment by 1 + G / q (the norm's Jacobian divides
by the RMS of its input), with G_mlp = m^2 d sigma_out^2 d_ff [sigma_pre^2 d_phi(p)] for GELU,
m^2 d sigma_out^2 d_ff [sigma_gate^2 d_silu(p) d sigma_up^2 + sigma_up^2 c_silu(p)] for SwiGLU, and
G_attn = m^2 A_l; d_phi(q) = E[phi'(u)^2] (the paper's d_phi at q = 1).

Writes to ``--out`` (default outputs/variance_at_init/<config stem>/): results.json (every
measured and predicted value), table.md (measured / predicted per layer and scheme) and
rms_vs_depth.png (residual RMS and gradient RMS vs depth, a line per scheme; predictions dashed).
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repo root, so `python scripts/...` works

from components.activation_stats import ActivationStats, rms_by_depth  # noqa: E402
from components.build import build_local_model  # noqa: E402
from components.config import Config, ConfigError, load_config  # noqa: E402
from components.data import TokenBatches, TokenDataset, ensure_dataset  # noqa: E402
from components.tokenizer import build_tokenizer  # noqa: E402
from init_schemes import REGISTRY  # noqa: E402
from init_schemes.meanfield import activation_moments  # noqa: E402
from reporting.figures import pyplot  # noqa: E402
from roles import (  # noqa: E402
    ATTN_K,
    ATTN_OUT,
    ATTN_Q,
    ATTN_V,
    MLP_GATE,
    MLP_OUT,
    MLP_UP,
    PROJECTION_ROLES,
)

USAGE = ("usage: variance_at_init.py --config PATH [--init.scheme a,b,...] [--batches N] [--out DIR] "
         "[--section.key VALUE ...]")
QUANTITIES = ("act_rms/residual", "act_rms/attn_out", "act_rms/mlp_out", "act_std/mlp_pre", "grad_rms/residual")


def split_own_options(argv: list[str]) -> tuple[list[str], list[str], int, Path | None]:
    """(config argv, schemes, batches, out) from argv: --init.scheme takes a comma list here."""
    rest, schemes, batches, out = [], list(REGISTRY), 1, None
    i = 0
    while i < len(argv):
        key = argv[i]
        if key in ("--init.scheme", "--batches", "--out"):
            if i + 1 >= len(argv):
                raise ConfigError(f"{key} needs a value; {USAGE}")
            value = argv[i + 1]
            if key == "--init.scheme":
                schemes = [s for s in value.split(",") if s]
                unknown = [s for s in schemes if s not in REGISTRY]
                if unknown or not schemes:
                    raise ConfigError(f"--init.scheme {value!r}: unknown scheme(s) {unknown}; choose from "
                                      f"{', '.join(REGISTRY)}")
            elif key == "--batches":
                if not value.isdigit() or int(value) < 1:
                    raise ConfigError(f"--batches {value!r} must be an integer >= 1")
                batches = int(value)
            else:
                out = Path(value)
            i += 2
        else:
            rest.append(key)
            i += 1
    return rest, schemes, batches, out


def real_batches(cfg: Config, n_batches: int) -> list[torch.Tensor]:
    """``n_batches`` global training batches [global_batch, seq_len + 1] of the config's data (indices 1..N)."""
    tokenizer = build_tokenizer(cfg.tokenizer)
    path = ensure_dataset(cfg.data, tokenizer)
    t = cfg.training
    batches = TokenBatches(TokenDataset(path, "train"), t.seq_len, t.global_batch_size, cfg.job.seed)
    return [batches.get(step, slice(0, t.global_batch_size)) for step in range(1, n_batches + 1)]


def residual_gradient_probes(model: torch.nn.Module) -> list[torch.Tensor]:
    """Residual-stream tensors of the next forward (embedding, after each block), kept with retain_grad()."""
    kept: list[torch.Tensor] = []

    def keep(module, args):
        args[0].retain_grad()
        kept.append(args[0])

    for block in model.layers.values():
        block.attn_norm.register_forward_pre_hook(keep)
    model.final_norm.register_forward_pre_hook(keep)
    # Frozen weights: the embedding output must require grad for dL/dh to exist.
    model.tok_embedding.register_forward_hook(lambda module, args, out: out.detach().requires_grad_())
    return kept


def measure(cfg: Config, vocab: int, batches: list[torch.Tensor]) -> tuple[dict[str, list[float]], object, dict]:
    """Measured statistics (mean over batches) of one scheme, its ModelArgs and every weight's std by name."""
    model, args, initializer = build_local_model(cfg, vocab)
    model.requires_grad_(False)
    stats = ActivationStats(model)
    kept = residual_gradient_probes(model)
    totals: dict[str, list[float]] = {}
    for tokens in batches:
        kept.clear()
        with stats.capture():
            logits = model(tokens[:, :-1])
        torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten()).backward()
        values = stats.compute()
        row = {q: rms_by_depth(values, q) for q in QUANTITIES[:-1]}
        row["grad_rms/residual"] = [t.grad.double().square().mean().sqrt().item() for t in kept]
        for q, v in row.items():
            totals[q] = [a + b / len(batches) for a, b in zip(totals.get(q, [0.0] * len(v)), v)]
    stds = {name: spec.realized_std for name, (_, _, spec) in initializer.applied.items()}
    return totals, args, stds


def uniform_attention_kappa(seq_len: int) -> float:
    """E over query positions of sum_t a_st^2 for uniform causal attention: (1/T) sum_{s<T} 1/(s+1)."""
    return math.fsum(1.0 / (s + 1) for s in range(seq_len)) / seq_len


def attention_kappa(seq_len: int, logit_var: float, samples: int = 32) -> float:
    """E over queries s < T of sum_t a_st^2, a = causal softmax of i.i.d. N(0, logit_var) logits.

    Monte Carlo over ``samples`` [T, T] logit matrices (seed 0); exact for logit_var = 0.
    """
    if logit_var == 0:
        return uniform_attention_kappa(seq_len)
    logits = torch.randn(samples, seq_len, seq_len, generator=torch.Generator().manual_seed(0)) * math.sqrt(logit_var)
    future = torch.ones(seq_len, seq_len, dtype=torch.bool).triu(1)
    weights = logits.masked_fill(future, -math.inf).softmax(-1)  # [samples, T queries, T keys]
    return weights.double().square().sum(-1).mean().item()


def predict(args, stds: dict[str, float], seq_len: int, top_grad_rms: float) -> dict[str, list[float]]:
    """The mean-field prediction of every quantity (formulas in the module docstring), in depth order."""
    d, ffn, m2 = args.dim, args.ffn_dim, args.residual_multiplier ** 2
    scale_sq_hd = (args.attn_scale ** 2 if args.attn_scale is not None else 1 / args.head_dim) * args.head_dim
    q = stds["tok_embedding.weight"] ** 2 + stds.get("pos_embedding.weight", 0.0) ** 2
    q *= args.embedding_multiplier ** 2
    out = {k: [] for k in QUANTITIES}
    out["act_rms/residual"].append(math.sqrt(q))
    gains = []  # per block: (q before attn, G_attn, q before mlp, G_mlp)
    for layer in range(args.n_layers):
        std = {role: stds.get(f"layers.{layer}.{role}.weight", 0.0) for role in PROJECTION_ROLES}
        kappa = attention_kappa(seq_len, scale_sq_hd * d * std[ATTN_Q] ** 2 * d * std[ATTN_K] ** 2)
        attn = m2 * d * std[ATTN_OUT] ** 2 * kappa * d * std[ATTN_V] ** 2
        swiglu = args.activation == "silu"
        pre_var = d * std[MLP_GATE if swiglu else MLP_UP] ** 2
        c_phi, d_phi = activation_moments(args.activation, pre_var) if pre_var > 0 else (0.0, 0.0)
        if swiglu:
            up_var = d * std[MLP_UP] ** 2
            mlp = m2 * ffn * std[MLP_OUT] ** 2 * c_phi * up_var
            g_mlp = m2 * d * std[MLP_OUT] ** 2 * ffn * (std[MLP_GATE] ** 2 * d_phi * up_var
                                                         + std[MLP_UP] ** 2 * c_phi)
        else:
            mlp = m2 * ffn * std[MLP_OUT] ** 2 * c_phi
            g_mlp = m2 * d * std[MLP_OUT] ** 2 * ffn * std[MLP_UP] ** 2 * d_phi
        gains.append((q, attn, q + attn, g_mlp))
        q += attn + mlp
        out["act_rms/attn_out"].append(math.sqrt(attn))
        out["act_rms/mlp_out"].append(math.sqrt(mlp))
        out["act_std/mlp_pre"].append(math.sqrt(pre_var))
        out["act_rms/residual"].append(math.sqrt(q))
    grad_sq = [top_grad_rms ** 2]
    for q_attn, g_attn, q_mlp, g_mlp in reversed(gains):
        grad_sq.append(grad_sq[-1] * (1 + ratio(g_mlp, q_mlp)) * (1 + ratio(g_attn, q_attn)))
    out["grad_rms/residual"] = [math.sqrt(b) for b in reversed(grad_sq)]
    return out



def ratio(a: float, b: float) -> float:
    """a / b, NaN when b is 0 (e.g. the zeros scheme)."""
    return a / b if b else float("nan")


def depth_labels(n_layers: int) -> list[str]:
    return ["emb", *(str(i) for i in range(n_layers))]


def scheme_table(measured: dict[str, list[float]], predicted: dict[str, list[float]], n_layers: int) -> list[str]:
    """Markdown rows: per depth, every quantity as 'measured (measured/predicted)'."""
    lines = ["| depth | " + " | ".join(QUANTITIES) + " |", "|" + "---|" * (len(QUANTITIES) + 1)]
    for i, label in enumerate(depth_labels(n_layers)):
        cells = []
        for q in QUANTITIES:
            at = i if q in ("act_rms/residual", "grad_rms/residual") else i - 1  # branch values start at layer 0
            if at < 0:
                cells.append("")
                continue
            cells.append(f"{measured[q][at]:.4g} ({ratio(measured[q][at], predicted[q][at]):.3f})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def summary_rows(results: dict) -> list[str]:
    """Markdown: per scheme and quantity, the median and range over depth of measured / predicted."""
    lines = ["| scheme | " + " | ".join(QUANTITIES) + " |", "|" + "---|" * (len(QUANTITIES) + 1)]
    for scheme, r in results.items():
        cells = []
        for q in QUANTITIES:
            ratios = sorted(x for x in (ratio(a, b) for a, b in zip(r["measured"][q], r["predicted"][q]))
                            if math.isfinite(x))
            cells.append(f"{ratios[len(ratios) // 2]:.3f} [{ratios[0]:.3f}, {ratios[-1]:.3f}]" if ratios else "-")
        lines.append(f"| {scheme} | " + " | ".join(cells) + " |")
    return lines


def plot(results: dict, n_layers: int, title: str, path: Path) -> None:
    """Residual RMS and residual-gradient RMS vs depth: measured solid, predicted dashed, a color per scheme."""
    plt = pyplot()

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    depth = list(range(-1, n_layers))
    colors = plt.cm.tab20.colors[::2] + plt.cm.tab20.colors[1::2]  # 20 distinct, the saturated ten first
    for color, (scheme, r) in zip(colors, results.items()):
        for ax, q in zip(axes, ("act_rms/residual", "grad_rms/residual")):
            positive = [[v if v > 0 else float("nan") for v in r[kind][q]] for kind in ("measured", "predicted")]
            ax.plot(depth, positive[0], color=color, marker=".", label=scheme)
            ax.plot(depth, positive[1], color=color, linestyle="--")
    for ax, q in zip(axes, ("RMS of the residual stream h", "RMS of dL/dh")):
        ax.set(yscale="log", xlabel="depth (-1 = embedding; l = after block l)", ylabel=q, xticks=depth)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(f"{title}\nmeasured (solid) vs variance theory (dashed), one forward + backward at init", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out: Path, shape: str, results: dict, n_layers: int) -> None:
    """results.json, table.md and rms_vs_depth.png of the schemes measured so far."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"model": shape, "results": results}, indent=1))
    lines = [f"# Variance at init: {shape}", "", "Median [min, max] over depth of measured / predicted:", "",
             *summary_rows(results)]
    for scheme, r in results.items():
        lines += ["", f"## {scheme}: measured (measured / predicted)", "", *scheme_table(r["measured"], r["predicted"],
                                                                                          n_layers)]
    (out / "table.md").write_text("\n".join(lines) + "\n")
    plot(results, n_layers, shape, out / "rms_vs_depth.png")


def run(argv: list[str]) -> int:
    config_argv, schemes, n_batches, out = split_own_options(argv)
    cfg, flags = load_config([*config_argv, "--compile.enable", "false"], flags=("help",))
    if "help" in flags:
        print(USAGE)
        return 0
    out = out or Path("outputs/variance_at_init") / Path(config_argv[config_argv.index("--config") + 1]).stem
    batches = real_batches(cfg, n_batches)
    vocab = build_tokenizer(cfg.tokenizer).n_vocab
    t = cfg.training
    results = {}
    for scheme in schemes:
        scheme_cfg = dataclasses.replace(cfg, init=dataclasses.replace(cfg.init, scheme=scheme))
        measured, args, stds = measure(scheme_cfg, vocab, batches)
        predicted = predict(args, stds, t.seq_len, measured["grad_rms/residual"][-1])
        results[scheme] = {"measured": measured, "predicted": predicted}
        print(f"{scheme}: residual RMS after the last block {measured['act_rms/residual'][-1]:.4g} "
              f"(predicted {predicted['act_rms/residual'][-1]:.4g})", flush=True)
        shape = (f"{cfg.model.name}/{cfg.model.flavor} L={args.n_layers} d={args.dim} d_ff={args.ffn_dim} "
                 f"vocab={args.vocab_size}, {n_batches} batch(es) of {t.global_batch_size} x {t.seq_len} tokens")
        write_report(out, shape, results, args.n_layers)  # after every scheme: a cut-off run keeps its results
    print(f"wrote {out}/results.json, table.md, rms_vs_depth.png")
    return 0


def main(argv: list[str]) -> int:
    try:
        return run(argv)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
