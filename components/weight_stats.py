"""Per-layer, per-role weight statistics of a (sharded) model from ONE packed all-reduce.

For every tracked weight (each block role of each layer, plus the embeddings and the LM head;
norms and biases are skipped) a rank computes (count, mean, M2 = sum of squared deviations) of its
LOCAL shard with one Welford pass (``torch.var_mean``). Every rank writes its rows into its own
slot of a zero float64 tensor ``[group_size, n_tensors, n_columns]``; a single SUM ``all_reduce``
over the data-parallel shard group thus gathers all ranks' moments, which are merged with Chan's
parallel formula. ``full_tensor()`` is never called, so no rank gathers a weight.

Numerics: Welford's per-shard variance and Chan's merge never subtract large sums, so the std of
a tensor with mean 5 and std 1e-3 stays exact to ~1e-8 where a naive fp32 sum of squares has no
correct digit, and everything stays in one fp32 pass over the weights (a float64-accumulated sum
costs 4x more on an H100). float64 is used for the packed tensor on every device: gloo and NCCL
both reduce it.

Optional extras in the same reduction (``grad_stats=True``): per-tensor gradient sum of squares
(logged as the norm and as the RMS = norm / sqrt(numel), which compares across roles and widths)
and, after ``snapshot()``, the sum of squares of the update ``w_now - w_snapshot``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from distributed.placement import local_shard, shard_group, stack_over_ranks
from roles import MEAN_OVER_LAYERS, NORM_BIAS_ROLES, canonical_name, format_tag, layer_of, role_of

# Columns of the packed statistics [n_tensors, n_columns]: COUNT, MEAN, M2 always (merged across
# ranks); GRAD_SUMSQ with grad_stats; the update sum of squares last, after snapshot() (summed).
COUNT, MEAN, M2, GRAD_SUMSQ = range(4)


@dataclass(frozen=True)
class TrackedTensor:
    """One weight whose statistics are logged; ``layer`` is None outside the blocks."""

    name: str  # canonical parameter name, e.g. "layers.3.attn.q.weight"
    role: str
    layer: int | None
    param: nn.Parameter

    def tag(self, family: str) -> str:
        """Its metric tag in ``family``: '<family>/<role>/layer_<NN>' in blocks, '<family>/<role>' outside."""
        return format_tag(family, self.role, self.layer)


def local_moments(tensors: list[torch.Tensor]) -> torch.Tensor:
    """(count, mean, M2) of each tensor from one Welford pass: float64 [len(tensors), 3] on their device.

    One var_mean launch per tensor and nothing else per tensor (no per-tensor host->device copy,
    which would synchronize): on an H100 this call is bound by kernel launches, not bytes.
    """
    device = tensors[0].device
    # Low-precision weights are upcast (no bf16 rounding); an empty shard (uneven Shard(0)) gets a
    # placeholder element, and count 0 masks its result below.
    pairs = [torch.var_mean((x if x.numel() else x.new_zeros(1)).detach().to(torch.promote_types(x.dtype,
                            torch.float32)), correction=0) for x in tensors]
    var, mean = (torch.stack(column).double() for column in zip(*pairs))  # [n] each
    count = torch.tensor([float(x.numel()) for x in tensors], dtype=torch.float64).to(device, non_blocking=True)
    empty = count == 0
    mean, var = mean.masked_fill(empty, 0.0), var.masked_fill(empty, 0.0)
    return torch.stack([count, mean, var * count], dim=1)


def combine_moments(per_rank: torch.Tensor) -> torch.Tensor:
    """Merge (count, mean, M2) of disjoint pieces: [n_pieces, n_tensors, 3] -> [n_tensors, 3] (Chan et al.)."""
    count, mean, m2 = per_rank.unbind(-1)
    total = count.sum(0)
    merged_mean = (count * mean).sum(0) / total.clamp_min(1.0)
    merged_m2 = m2.sum(0) + (count * (mean - merged_mean) ** 2).sum(0)
    return torch.stack([total, merged_mean, merged_m2], dim=-1)


def std_from_moments(moments: torch.Tensor) -> torch.Tensor:
    """Unbiased std (as torch.std) from float64 [..., 3] (count, mean, M2); NaN where count < 2."""
    count, _, m2 = moments.unbind(-1)
    return (m2 / (count - 1)).sqrt()


def squared_norm(x: torch.Tensor) -> torch.Tensor:
    """Sum of squares of ``x`` as a float64 scalar (fp32 accumulation at least; no cancellation to fear)."""
    norm = torch.linalg.vector_norm(x.detach(), dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    return norm.double().square()


def tracked_tensors(model: nn.Module) -> list[TrackedTensor]:
    """Every parameter whose role is not norm/bias, in model order (tied tensors once)."""
    tracked = []
    for fqn, param in model.named_parameters():
        name = canonical_name(fqn)
        role = role_of(name)
        if role not in NORM_BIAS_ROLES:
            tracked.append(TrackedTensor(name, role, layer_of(name), param))
    if not tracked:
        raise ValueError(f"{type(model).__name__} has no weight tensors besides norms/biases; "
                         "WeightStats needs a model with attn/mlp/embedding weights")
    return tracked


class WeightStats:
    """Logged weight std (and optionally grad norm and update/weight ratio) per role and layer.

    Usage on a logging step: ``stats.snapshot()`` before ``optimizer.step()`` (only when
    update ratios are wanted), then ``values = stats.compute()`` (all ranks; collective).
    """

    def __init__(self, model: nn.Module, process_group: dist.ProcessGroup | None = None, grad_stats: bool = False):
        self.tracked = tracked_tensors(model)
        self.group = process_group if process_group is not None else shard_group(t.param for t in self.tracked)
        self.grad_stats = grad_stats
        self._snapshot: list[torch.Tensor] | None = None

    def roles_to_layers(self) -> dict[str, list[int]]:
        """Role -> its layer indices (empty list for non-block roles): the input of MetricsLogger.set_layout."""
        layout: dict[str, list[int]] = {}
        for t in self.tracked:
            layers = layout.setdefault(t.role, [])
            if t.layer is not None:
                layers.append(t.layer)
        return layout

    @torch.no_grad()
    def snapshot(self) -> None:
        """Copy every tracked local shard, so the next compute() can report ||w_now - w_snapshot|| / ||w_now||.

        Holds one extra copy of this rank's tracked shards until that compute(): call it on logging steps only.
        """
        self._snapshot = [local_shard(t.param).detach().clone() for t in self.tracked]

    @torch.no_grad()
    def local_statistics(self) -> torch.Tensor:
        """This rank's packed statistics, float64 [n_tensors, n_columns] (see the column constants above)."""
        weights = [local_shard(t.param) for t in self.tracked]
        columns = [local_moments(weights)]
        if self.grad_stats:
            # A missing grad (unused parameter, or after zero_grad(set_to_none)) counts as zero.
            columns.append(torch.stack([
                squared_norm(local_shard(t.param.grad)) if t.param.grad is not None
                else w.new_zeros((), dtype=torch.float64) for t, w in zip(self.tracked, weights)]))
        if self._snapshot is not None:
            columns.append(torch.stack([squared_norm(w - old) for w, old in zip(weights, self._snapshot)]))
        return torch.cat([c.view(len(weights), -1) for c in columns], dim=1)

    @torch.no_grad()
    def compute(self) -> dict[str, float]:
        """Metric name -> value after ONE all_reduce of the packed statistics; consumes the snapshot."""
        local = self.local_statistics()  # [n_tensors, n_columns]
        if self.group is None:
            per_rank = local.unsqueeze(0)
        else:  # each rank fills its own slot, so the SUM is an all-gather: [group_size, n_tensors, n_columns]
            per_rank = stack_over_ranks(local, self.group)
        has_update = self._snapshot is not None
        self._snapshot = None
        moments = combine_moments(per_rank[..., COUNT:M2 + 1])
        sums = per_rank[..., M2 + 1:].sum(0)  # grad / update sums of squares
        outputs = [std_from_moments(moments)]
        if self.grad_stats:
            grad_sumsq = sums[:, GRAD_SUMSQ - M2 - 1]
            outputs += [grad_sumsq.sqrt(), (grad_sumsq / moments[:, 0]).sqrt()]
        if has_update:
            weight_sumsq = moments[:, 2] + moments[:, 0] * moments[:, 1] ** 2
            outputs.append(sums[:, -1].sqrt() / weight_sumsq.sqrt())
        host = torch.stack(outputs).tolist()  # the one device -> host transfer: [n_outputs][n_tensors]
        grads = (host[1], host[2]) if self.grad_stats else (None, None)
        return self._named(host[0], *grads, host[-1] if has_update else None)

    def _named(self, stds: list[float], grad_norms: list[float] | None, grad_rms: list[float] | None,
               update_ratios: list[float] | None) -> dict[str, float]:
        """Metric names of docs/design.md §8 for per-tensor values in ``self.tracked`` order."""
        values: dict[str, float] = {}
        per_role: dict[str, list[float]] = {}
        for i, t in enumerate(self.tracked):
            values[t.tag("weight_std")] = stds[i]
            if t.layer is not None:
                per_role.setdefault(t.role, []).append(stds[i])
        for role, role_stds in per_role.items():
            values[format_tag("weight_std", role, MEAN_OVER_LAYERS)] = math.fsum(role_stds) / len(role_stds)
        for family, per_tensor in (("grad_norm", grad_norms), ("grad_rms", grad_rms), ("update_ratio", update_ratios)):
            if per_tensor is not None:
                values.update({t.tag(family): v for t, v in zip(self.tracked, per_tensor)})
        return values
