"""AdamW with weight-decay groups by role, and a global gradient-norm clip that is correct for FSDP2.

Weight decay is decided per parameter from its role (roles.role_of): norm weights, biases
(linear and LayerNorm biases alike) and the token/position embeddings can each be kept out of
decay by the ``decay_*`` flags of the [optimizer] table; every other matrix is decayed. A
[parametrization] (init_schemes/parametrization.py; μP, CompleteP) multiplies each tensor's lr, weight
decay and eps by its factors, which splits the groups further.

``clip_grad_norm_`` computes the L2 norm over all gradients without gathering any full tensor:
each rank sums the squares of its local shards, and the sums are all-reduced only over the mesh
dimensions on which the gradient is sharded. Under FSDP2 the gradients are ``Shard(0)`` DTensors
on a 1-D mesh; under HSDP they are ``(Replicate(), Shard(0))`` on a 2-D mesh, where the replicas
already hold identical shards after FSDP's reduction, so reducing over the replicate dimension
too would count each element once per replica. The result stays on the device (no host sync).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.optim.optimizer import _get_fused_kernels_supported_devices

from components.config import Optimizer
from distributed.placement import local_shard, reduction_layout, sum_over_mesh_dims_
from init_schemes.parametrization import Parametrization, ParamRule
from roles import layer_of, role_of

# Roles kept out of weight decay unless the named [optimizer] flag is true.
NO_DECAY_FLAG_OF_ROLE = {
    "norm": "decay_norms",
    "bias": "decay_biases",
    "tok_embedding": "decay_embeddings",
    "pos_embedding": "decay_embeddings",
}

# Added to the norm before dividing, so a zero gradient gives a finite clip coefficient.
CLIP_EPS = 1e-6


def is_decayed(name: str, cfg: Optimizer) -> bool:
    """Whether the parameter called ``name`` gets weight decay under the [optimizer] flags."""
    flag = NO_DECAY_FLAG_OF_ROLE.get(role_of(name))
    return flag is None or bool(getattr(cfg, flag))


def param_groups(model: nn.Module, cfg: Optimizer, parametrization: Parametrization | None = None) -> list[dict]:
    """AdamW parameter groups: ``decay`` (weight_decay = cfg.weight_decay) and ``no_decay`` (0), split
    further by the parametrization's per-tensor factors on lr, weight decay and eps.

    Each group is ``{"name", "params", "weight_decay"}`` (plus ``"lr"`` and ``"eps"`` when a factor is
    not 1), parameters in ``model.named_parameters()`` order; groups whose factors are all 1 come
    first, so group 0 runs at the peak lr the schedule reports. A tied tensor (GPT-2's embedding
    reused as the head) appears once, under its first name (``tok_embedding``), so
    ``decay_embeddings`` and the embedding's rule decide it. Frozen parameters are left out. Empty
    groups are omitted (torch's distributed state-dict helpers reject them); under sp there are one or two.
    """
    groups: dict[tuple, dict] = {}
    seen: set[int] = set()
    for name, param in model.named_parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        decayed = is_decayed(name, cfg)
        rule = parametrization.rule(role_of(name), layer_of(name)) if parametrization else ParamRule()
        key = (not rule.is_identity, not decayed, rule.lr, rule.weight_decay if decayed else 0.0, rule.eps)
        if key not in groups:
            groups[key] = _new_group(decayed, rule, cfg)
        groups[key]["params"].append(param)
    if not seen:
        raise ValueError(f"{type(model).__name__} has no trainable parameters; nothing for the optimizer to update")
    return [groups[key] for key in sorted(groups, key=lambda k: k[:2])]  # stable: first appearance within a kind


def _new_group(decayed: bool, rule: ParamRule, cfg: Optimizer) -> dict:
    """An empty AdamW group for tensors with ``rule``'s factors (sp: just name, params, weight_decay)."""
    group = {"name": "decay" if decayed else "no_decay", "params": [],
             "weight_decay": cfg.weight_decay * rule.weight_decay if decayed else 0.0}
    if not rule.is_identity:
        group["name"] += f" lr*{rule.lr:.4g} wd*{rule.weight_decay if decayed else 0:.4g} eps*{rule.eps:.4g}"
        group["lr"], group["eps"] = cfg.lr * rule.lr, cfg.eps * rule.eps
    return group


def kernel_flags(implementation: str, device: torch.device) -> dict[str, bool]:
    """AdamW's ``fused``/``foreach`` keyword values for ``optimizer.implementation`` on ``device``."""
    if implementation == "auto":
        implementation = "fused" if device.type == "cuda" else "foreach"
    flags = {"fused": {"fused": True, "foreach": False},
             "foreach": {"fused": False, "foreach": True},
             "for-loop": {"fused": False, "foreach": False}}
    if implementation not in flags:
        raise ValueError(f"optimizer.implementation = {implementation!r} is unknown; "
                         "use auto, fused, foreach or for-loop")
    return flags[implementation]


def build_optimizer(model: nn.Module, cfg: Optimizer, device: torch.device,
                    parametrization: Parametrization | None = None) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` at peak lr ``cfg.lr`` (times each group's parametrization factor),
    with the kernel chosen for ``device``.

    ``implementation = "auto"`` is fused on CUDA and foreach elsewhere; ``optimizer.defaults``
    records the choice. Works with FSDP2's DTensor parameters.
    """
    if cfg.name != "adamw":
        raise ValueError(f"optimizer.name = {cfg.name!r} is not supported; use adamw")
    groups = param_groups(model, cfg, parametrization)
    param_device = groups[0]["params"][0].device
    if param_device.type != device.type:
        raise ValueError(f"model parameters are on {param_device} but the optimizer was asked for {device}; "
                         "move the model to the training device first")
    flags = kernel_flags(cfg.implementation, device)
    if flags["fused"]:
        _check_fused_supported(groups, cfg.implementation)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]), eps=cfg.eps,
                             weight_decay=cfg.weight_decay, **flags)


def _check_fused_supported(groups: list[dict], implementation: str) -> None:
    """Fail at build time, not at the first step (where torch checks), if a fused kernel is missing."""
    supported = _get_fused_kernels_supported_devices()
    for group in groups:
        for param in group["params"]:
            if param.device.type not in supported or not torch.is_floating_point(param):
                raise ValueError(f"optimizer.implementation = {implementation!r}: torch has no fused AdamW for "
                                 f"{param.dtype} parameters on {param.device.type} (it has for floating point on "
                                 f"{', '.join(supported)}); use foreach")


def _group_by_reduction(grads: list[torch.Tensor]) -> dict[tuple, list[torch.Tensor]]:
    """Local gradient tensors keyed by (mesh, shard dims); plain tensors under (None, ())."""
    buckets: dict[tuple[DeviceMesh | None, tuple[int, ...]], list[torch.Tensor]] = {}
    for grad in grads:
        buckets.setdefault(reduction_layout(grad), []).append(local_shard(grad))
    return buckets


def _group_by_device_dtype(tensors: list[torch.Tensor]) -> dict[tuple, list[torch.Tensor]]:
    groups: dict[tuple[torch.device, torch.dtype], list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.device, tensor.dtype), []).append(tensor)
    return groups


def _sum_of_squares(tensors: list[torch.Tensor], foreach: bool) -> torch.Tensor:
    """Sum over ``tensors`` of their squared L2 norms, a float64 0-dim tensor on their device.

    Per-tensor norms are float32; their squares are summed in float64 so that a huge (but
    finite) norm is not turned into inf by squaring.
    """
    partial_sums = []
    for group in _group_by_device_dtype(tensors).values():
        if foreach:
            norms = torch._foreach_norm(group, 2, dtype=torch.float32)
        else:
            norms = [torch.linalg.vector_norm(t, 2, dtype=torch.float32) for t in group]
        partial_sums.append(torch.stack(norms).double().square().sum())
    first_device = partial_sums[0].device
    return torch.stack([s.to(first_device) for s in partial_sums]).sum()


@torch.no_grad()
def clip_grad_norm_(parameters: Iterable[torch.Tensor] | torch.Tensor, max_norm: float,
                    foreach: bool | None = None) -> torch.Tensor:
    """Global L2 norm of the gradients of ``parameters``; scale them so it is at most ``max_norm``.

    Returns the norm before clipping as a float32 0-dim tensor on the gradients' device, without
    a host sync. Gradients are multiplied by ``min(1, max_norm / (norm + 1e-6))``; ``max_norm = 0``
    computes the norm only. A non-finite norm leaves the gradients untouched (the caller checks
    it). ``foreach`` (default on) uses the fused multi-tensor kernels; False loops per tensor.
    Plain-tensor gradients count once (they are assumed identical on every rank). With no
    gradient at all the norm is a CPU zero.
    """
    if max_norm < 0:
        raise ValueError(f"max_norm must be >= 0 (0 = no clipping); got {max_norm}")
    foreach = True if foreach is None else foreach
    params = [parameters] if isinstance(parameters, torch.Tensor) else list(parameters)
    unique = {id(p): p for p in params}.values()  # tied tensors once
    grads = [p.grad for p in unique if p.grad is not None]
    if not grads:
        return torch.zeros((), dtype=torch.float32)
    buckets = _group_by_reduction(grads)
    bucket_sums = []
    for (mesh, shard_dims), local_grads in buckets.items():
        squares = _sum_of_squares(local_grads, foreach)  # 0-dim float64
        bucket_sums.append(sum_over_mesh_dims_(squares, mesh, shard_dims))
    device = bucket_sums[0].device
    total_norm = torch.stack([s.to(device) for s in bucket_sums]).sum().sqrt()
    if max_norm > 0:
        _scale_(buckets, total_norm, max_norm, foreach)
    return total_norm.float()


def _scale_(buckets: dict[tuple, list[torch.Tensor]], total_norm: torch.Tensor, max_norm: float,
            foreach: bool) -> None:
    """Multiply every local gradient by min(1, max_norm / (norm + eps)), or by 1 if the norm is not finite."""
    coef = (max_norm / (total_norm + CLIP_EPS)).clamp(max=1.0)
    coef = torch.where(torch.isfinite(total_norm), coef, torch.ones_like(coef))
    local_grads = [g for group in buckets.values() for g in group]
    for (device, dtype), group in _group_by_device_dtype(local_grads).items():
        group_coef = coef.to(device=device, dtype=dtype)
        if foreach:
            torch._foreach_mul_(group, group_coef)
        else:
            for grad in group:
                grad.mul_(group_coef)
