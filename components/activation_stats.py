"""Per-layer activation statistics of one measured forward pass, reduced with ONE packed all-reduce.

What is measured (names as logged; NN = 0-based block index):

- ``act_rms/residual/embedding`` and ``act_rms/residual/layer_NN``: RMS of the residual stream after
  the embedding and after block NN (read at the input of block NN+1's attention norm, or of the
  final norm);
- ``act_rms/attn_out/layer_NN``, ``act_rms/mlp_out/layer_NN``: RMS of each branch's output as it is
  added to the residual (times ``ModelArgs.residual_multiplier``);
- ``act_std/mlp_pre/layer_NN``: std of the MLP pre-activation, the input of GELU / SiLU (the output
  of ``mlp.up`` in GPT-2, of ``mlp.gate`` in Llama's SwiGLU);
- ``act_rms/logits``: RMS of the model's output logits (logit multiplier included) at ``LOGIT_QUERIES``
  evenly spaced positions of every row (all positions when the sequence is shorter), so that a 128k
  vocabulary costs a [B, 64, V] sample, not a float32 copy of every logit; the coordinate that a
  readout multiplier decides (Tensor Programs V, Yang et al. 2022, arXiv:2203.03466, §7.1 and
  microsoft/mup ``mup/coord_check.py``, which records the output's size too);
- ``attn_logit_max/layer_NN``: max |q.k| * softmax scale over ``LOGIT_QUERIES`` fixed query
  positions (evenly spaced over the sequence, both ends included), every batch row, head and causal
  key. Flash SDPA never materializes the logits, so they are recomputed for that sample from the q,
  k that ``Attention.logits_tap`` passes through: B * H * S * T * head_dim multiply-adds per layer,
  S / T of the attention-score FLOPs of one forward (S = 64, T = 2048: 3 %), plus a [B, H, S, T]
  fp32 temporary.

Capture: forward hooks on modules inside the blocks (attention norm, branches, MLP pre-activation
projection, the attention logits tap) and on the final norm. Each hook returns at once unless
``capture()`` is active; when active it stores a small tensor on its module (count, mean, M2 from
one Welford pass; or the logit max). Under ``torch.compile`` (per-block, distributed/parallelize.py)
Dynamo inlines the hooks and guards on the Python bool ``active``: non-logging steps run the graph
without a single extra op, logging steps a second graph with the statistics as extra outputs; the
module-attribute store is a replayed side effect, so every block shares both graphs (no graph
break; one extra compile, not one per block).

Only the forward pass inside ``capture()`` is measured, so activation checkpointing's recomputation
in backward (outside it) cannot count twice, and a store overwrites rather than adds. The trainer
measures the FIRST micro-batch of a logging step on every rank; every rank's moments are merged
(Chan et al.), and the logit max is the max over ranks, after one SUM all-reduce of per-rank slots
over all data-parallel ranks (replicas under HSDP see different rows, so they are not skipped).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from components.weight_stats import combine_moments, std_from_moments
from distributed.placement import stack_over_ranks
from roles import EMBEDDING, MLP_GATE, MLP_UP, canonical_name, format_tag, parse_tag

KINDS = ("residual", "attn_out", "mlp_out", "mlp_pre", "logit_max", "logits")  # the statistics, in chart order
LOGIT_QUERIES = 64  # query positions sampled for attn_logit_max (all of them when the sequence is shorter)
STAT_ATTR = "_activation_stat"  # where a hook leaves its result on its module


@dataclass(frozen=True)
class Probe:
    """One hooked module: ``kind`` names the statistic, ``layer`` its block (-1: the embedding)."""

    kind: str  # one of KINDS
    layer: int
    module: nn.Module

    @property
    def name(self) -> str:
        if self.kind == "logits":  # one value for the model, after the last block: the family alone
            return format_tag(family_of(self.kind))
        return format_tag(family_of(self.kind), where=EMBEDDING if self.layer < 0 else self.layer)


def family_of(kind: str) -> str:
    """The metric family of statistic ``kind`` (one of KINDS), e.g. 'act_rms/residual'."""
    return {"mlp_pre": "act_std/mlp_pre", "logit_max": "attn_logit_max"}.get(kind, f"act_rms/{kind}")


FAMILIES = tuple(family_of(kind) for kind in KINDS)


def moments_of(x: torch.Tensor) -> torch.Tensor:
    """(count, mean, M2) of every element of ``x`` from one fp32 Welford pass: float32 [3]."""
    var, mean = torch.var_mean(x.detach().float(), correction=0)
    count = x.numel()
    return torch.stack([torch.full_like(mean, count), mean, var * count])


def sampled_query_positions(seqlen: int) -> torch.Tensor:
    """The LOGIT_QUERIES query positions (int64 [S]): round(i * (T - 1) / (S - 1)), i = 0..S-1."""
    return torch.linspace(0, seqlen - 1, min(LOGIT_QUERIES, seqlen)).round().long()


def logit_max(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """max |q_s . k_t| * scale over the sampled queries s and causal keys t <= s: float32 scalar.

    q [B, T, H, hd], k [B, T, H_kv, hd] (after RoPE); query head h reads key head h // (H / H_kv).
    """
    bsz, seqlen, n_heads, head_dim = q.shape
    n_kv = k.shape[2]
    positions = sampled_query_positions(seqlen).to(q.device)  # [S]
    q_sample = q.detach()[:, positions].float().view(bsz, -1, n_kv, n_heads // n_kv, head_dim)
    logits = torch.einsum("bsngd,btnd->bngst", q_sample, k.detach().float()).abs() * scale  # [B, H_kv, G, S, T]
    future = torch.arange(seqlen, device=q.device) > positions[:, None]  # [S, T]: keys a query cannot see
    return logits.masked_fill(future, 0.0).amax()


class ActivationStats:
    """Hooks that measure one forward pass inside ``capture()``; ``compute()`` reduces and names the values.

    Usage on a logging step (all ranks): ``with stats.capture(): logits = model(x)``, backward as
    usual, then ``values = stats.compute()`` (collective when a process group is initialized).
    Built with ``enabled=False`` it registers nothing, captures nothing and computes ``{}``.
    """

    def __init__(self, model: nn.Module, enabled: bool = True):
        args = model.args
        self.logit_scale = args.attn_scale if args.attn_scale is not None else args.head_dim ** -0.5
        self.branch_multiplier = abs(args.residual_multiplier)
        self.active = False
        self.probes = find_probes(model) if enabled else []
        hooks = {"residual": self._residual_hook, "logit_max": self._logit_hook, "logits": self._logits_hook}
        for probe in self.probes:  # one hook object per kind: every block shares its compiled graphs
            if probe.kind == "residual":
                probe.module.register_forward_pre_hook(hooks["residual"])
            else:
                probe.module.register_forward_hook(hooks.get(probe.kind, self._output_hook))
        self.moment_probes = [p for p in self.probes if p.kind != "logit_max"]
        self.logit_probes = [p for p in self.probes if p.kind == "logit_max"]

    @contextmanager
    def capture(self, measure: bool = True):
        """Measure the forward passes run inside (the last one wins; older results are cleared).

        A no-op unless ``measure`` (and the statistics are enabled)."""
        if not (measure and self.probes):
            yield
            return
        for probe in self.probes:
            setattr(probe.module, STAT_ATTR, None)
        self.active = True
        try:
            yield
        finally:
            self.active = False

    def _residual_hook(self, module: nn.Module, args: tuple) -> None:
        if self.active:
            setattr(module, STAT_ATTR, moments_of(args[0]))

    def _output_hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if self.active:
            setattr(module, STAT_ATTR, moments_of(output))

    def _logits_hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        if self.active:
            setattr(module, STAT_ATTR, moments_of(output[:, sampled_query_positions(output.shape[1]).to(output.device)]))

    def _logit_hook(self, module: nn.Module, args: tuple, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        if self.active:
            setattr(module, STAT_ATTR, logit_max(*output, self.logit_scale))

    def local_statistics(self) -> torch.Tensor:
        """This rank's packed slot: float64 [3 * n_moment_probes + n_logit_probes] (moments row-major, then maxima)."""
        results = [getattr(p.module, STAT_ATTR, None) for p in self.probes]
        if any(r is None for r in results):
            missing = next(p.name for p, r in zip(self.probes, results) if r is None)
            raise RuntimeError(f"no measured forward pass for {missing}: run the model inside "
                               "ActivationStats.capture() before compute()")
        moments = torch.stack([getattr(p.module, STAT_ATTR) for p in self.moment_probes]).double()
        maxima = torch.stack([getattr(p.module, STAT_ATTR) for p in self.logit_probes]).double()
        return torch.cat([moments.flatten(), maxima.flatten()])

    @torch.no_grad()
    def compute(self) -> dict[str, float]:
        """Metric name -> value after ONE all_reduce of per-rank slots over every rank (SUM = gather)."""
        if not self.probes:
            return {}
        local = self.local_statistics()
        per_rank = stack_over_ranks(local)  # [world size, n values]
        n_moments = 3 * len(self.moment_probes)
        moments = combine_moments(per_rank[:, :n_moments].view(per_rank.shape[0], -1, 3))  # [n, 3]
        count, mean, m2 = moments.unbind(-1)
        rms = (m2 / count + mean**2).sqrt()
        values = torch.stack([rms, std_from_moments(moments)])
        host_values, host_maxima = values.tolist(), per_rank[:, n_moments:].amax(0).tolist()  # one transfer each
        named = {}
        for i, probe in enumerate(self.moment_probes):
            scale = self.branch_multiplier if probe.kind in ("attn_out", "mlp_out") else 1.0
            named[probe.name] = host_values[1][i] if probe.kind == "mlp_pre" else scale * host_values[0][i]
        named.update({p.name: v for p, v in zip(self.logit_probes, host_maxima)})
        return named

    def charts(self) -> dict[str, list[str]]:
        """Chart title (the metric family) -> its tags in depth order: MetricsLogger.set_layout's extra charts."""
        charts: dict[str, list[str]] = {}
        for probe in sorted(self.probes, key=lambda p: (KINDS.index(p.kind), p.layer)):
            charts.setdefault(family_of(probe.kind), []).append(probe.name)
        return charts


# Module (canonical name after "layers.<i>.") -> statistic; SwiGLU's gate feeds SiLU, GPT-2's up feeds GELU.
BLOCK_PROBES = {"attn": "attn_out", "mlp": "mlp_out", "attn.logits_tap": "logit_max"}


def find_probes(model: nn.Module) -> list[Probe]:
    """The hooked modules of a TransformerBase (under any compile/AC/FSDP wrappers), in forward order."""
    modules: dict[str, nn.Module] = {}
    for fqn, module in model.named_modules():
        modules.setdefault(canonical_name(fqn), module)  # the outermost of a wrapper and its wrapped module
    n_layers = len(model.layers)
    probes = []
    for layer in range(n_layers):
        prefix = f"layers.{layer}."
        pre = MLP_GATE if prefix + MLP_GATE in modules else MLP_UP
        probes.append(Probe("residual", layer - 1, modules[prefix + "attn_norm"]))  # its input: the residual
        probes += [Probe(kind, layer, modules[prefix + name]) for name, kind in
                   (*BLOCK_PROBES.items(), (pre, "mlp_pre"))]
    probes.append(Probe("residual", n_layers - 1, modules["final_norm"]))
    probes.append(Probe("logits", n_layers, modules.get("", model)))  # the model's output: [B, T, vocab]
    return probes


def rms_by_depth(values: dict[str, float], family: str) -> list[float]:
    """Values of ``family`` (e.g. 'act_rms/residual') in depth order, the embedding first when present."""
    tags = {tag: parsed for tag in values if (parsed := parse_tag(tag)) is not None and parsed.family == family}
    return [values[t] for t in sorted(tags, key=lambda t: tags[t].depth)]
