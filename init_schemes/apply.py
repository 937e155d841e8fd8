"""Draw parameters from their ``InitSpec`` deterministically, independent of world size.

Each parameter is generated in fixed-size row blocks; block ``i`` of parameter ``key`` uses its
own generator seeded from sha256(seed, key, i). A rank holding a dim-0 shard (FSDP2's
``Shard(0)``, also inside HSDP's ``(Replicate, Shard(0))``) draws only the blocks that overlap its
rows, so no rank ever allocates a full copy of a sharded tensor, and the assembled tensor is
bitwise the same for 1, 2 or N ranks. Blocks are drawn on the CPU and copied to the parameter's
device, so a GPU run starts from exactly the weights a CPU run (or a report script) re-creates.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable

import torch

from init_schemes.adapters import adapter_spec
from init_schemes.base import InitSpec, get_scheme
from init_schemes.parametrization import Parametrization
from roles import ADAPTER_SUFFIXES

BLOCK_NUMEL = 1 << 20  # elements per generator block (4 MiB in float32)


def block_seed(seed: int, key: str, block: int) -> int:
    digest = hashlib.sha256(f"{seed}/{key}/{block}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


RowView = Callable[[torch.Tensor], tuple[torch.Tensor, int]]
"""(this rank's part of a parameter, global index of its first row): distributed.placement.local_rows."""


def whole_rows(param: torch.Tensor) -> tuple[torch.Tensor, int]:
    """A plain tensor is all its rows; a sharded one (anything with placements) needs the caller's row view."""
    if hasattr(param, "placements"):
        raise TypeError(f"{type(param).__name__} {tuple(param.shape)} is sharded: pass "
                        "local_rows=distributed.placement.local_rows to WeightInitializer / fill_")
    return param, 0


def trunc_normal_(tensor: torch.Tensor, std: float, a: float, b: float, gen: torch.Generator) -> None:
    """N(0, std²) truncated to [a, b], drawn as torch >= 2.13's ``nn.init.trunc_normal_`` draws it
    (torch/nn/init.py: ``_no_grad_trunc_normal_``), so the weights are the same on every torch >= 2.11: when [a, b]
    holds more than 30 % of the mass, normal draws with those outside redrawn until none is; otherwise uniform
    proposals on [a, b], each accepted with probability pdf / the window's peak pdf, redrawn until all are.

    torch 2.11 (checked; 2.13 changed the method) drew instead a uniform on [2Φ(a/std) - 1, 2Φ(b/std) - 1), lower
    end included, then its inverse CDF: where Φ(a/std) rounds to 0 (torchtitan's a = -2 at std = 0.02 is -100 σ) the
    uniform hits -1 exactly about once in 2^24 draws, erfinv(-1) = -inf, and the clamp makes that weight exactly a:
    a few dozen -100 σ weights in a 1B model, and other weights than torch 2.13 draws from the same seed."""
    def normal_cdf(x: float) -> float:
        return (1.0 + math.erf(x / math.sqrt(2.0))) / 2.0

    mass = normal_cdf(b / std) - normal_cdf(a / std)
    if mass > 0.3:
        lo, hi = tensor.new_tensor(a).item(), tensor.new_tensor(b).item()  # the bounds as the tensor's dtype holds them
        result = tensor.normal_(0.0, std, generator=gen)
        while (outside := (result < lo) | (result > hi)).any():
            result = torch.where(outside, torch.empty_like(result).normal_(0.0, std, generator=gen), result)
        if result is not tensor:
            tensor.copy_(result)
        return
    log_peak = -0.5 * (max(a, min(0.0, b)) / std) ** 2  # the window's highest density: at its point nearest 0

    def log_density_below_peak(values: torch.Tensor) -> torch.Tensor:
        return values.div_(std).pow_(2).mul_(-0.5).sub_(log_peak)

    accept = torch.empty_like(tensor)
    tensor.uniform_(a, b, generator=gen)
    pending = accept.uniform_(generator=gen).log_().gt(log_density_below_peak(tensor.clone()))
    result = tensor
    while pending.any():
        proposals = torch.empty_like(tensor).uniform_(a, b, generator=gen)
        result = torch.where(pending, proposals, result)
        pending = torch.where(pending, accept.uniform_(generator=gen).log_().gt(log_density_below_peak(proposals)),
                              pending)
    if result is not tensor:
        tensor.copy_(result)


def _draw(block: torch.Tensor, spec: InitSpec, gen: torch.Generator) -> None:
    if spec.dist == "normal":
        block.normal_(0.0, spec.std, generator=gen)
    elif spec.dist == "trunc_normal":
        trunc_normal_(block, spec.std, spec.a, spec.b, gen)
    elif spec.dist == "uniform":
        bound = math.sqrt(3.0) * spec.std
        block.uniform_(-bound, bound, generator=gen)
    else:
        raise ValueError(f"unknown distribution {spec.dist!r}")


@torch.no_grad()
def fill_(param: torch.Tensor, spec: InitSpec, seed: int, key: str, local_rows: RowView = whole_rows) -> None:
    """Fill ``param`` in place according to ``spec``; a sharded ``param`` needs ``local_rows`` (its rows here)."""
    local, row_start = local_rows(param)
    if spec.dist == "constant":
        local.fill_(spec.value)
        return
    full_shape = tuple(param.shape)
    row_numel = math.prod(full_shape[1:])
    block_rows = max(1, BLOCK_NUMEL // row_numel)
    row_end = row_start + local.shape[0]
    if row_end == row_start:
        return
    gen = torch.Generator()  # CPU: the same stream whatever device the parameter lives on
    for b in range(row_start // block_rows, (row_end - 1) // block_rows + 1):
        b_start = b * block_rows
        b_end = min(b_start + block_rows, full_shape[0])
        gen.manual_seed(block_seed(seed, key, b))
        block = torch.empty((b_end - b_start, *full_shape[1:]), dtype=torch.float32)
        _draw(block, spec, gen)
        lo, hi = max(b_start, row_start), min(b_end, row_end)
        local[lo - row_start: hi - row_start].copy_(block[lo - b_start: hi - b_start])


class WeightInitializer:
    """The ``init`` callable that models' ``init_weights`` use: scheme -> spec -> deterministic draw.

    With a ``parametrization`` (init_schemes/parametrization.py) the scheme is asked on the base model's
    shapes and the parametrization's factor rescales the result (μP: hidden matrices by
    sqrt(base fan_in / fan_in)); under sp that is the scheme itself. ``applied`` records the spec
    used for each parameter key (for reports and tests). Sharded (FSDP2) parameters need ``local_rows`` =
    ``distributed.placement.local_rows``; init_schemes itself knows nothing of process groups.
    """

    def __init__(self, opts, args, seed: int, parametrization: Parametrization | None = None,
                 local_rows: RowView = whole_rows):
        self.scheme = get_scheme(opts.scheme)
        self.opts, self.args, self.seed, self.local_rows = opts, args, seed, local_rows
        self.parametrization = parametrization
        self.applied: dict[str, tuple[str, int | None, InitSpec]] = {}

    def spec(self, role: str, layer_id: int | None) -> InitSpec:
        if role.endswith(ADAPTER_SUFFIXES):  # LoRA matrices: their own rule, whatever the scheme
            return adapter_spec(role, self.args, self.opts)
        p = self.parametrization
        if p is None:
            return self.scheme.spec(role, layer_id, self.args, self.opts)
        spec = self.scheme.spec(role, p.scheme_layer(layer_id), p.base, self.opts)
        factor = p.rule(role, layer_id).init
        return spec if factor == 1.0 else spec.scaled(factor)

    def __call__(self, param: torch.Tensor, role: str, layer_id: int | None, key: str) -> None:
        spec = self.spec(role, layer_id)
        self.applied[key] = (role, layer_id, spec)
        fill_(param, spec, self.seed, key, self.local_rows)

    def record(self) -> dict:
        """What was drawn, for ``<run_dir>/init_stds.json`` (docs/design.md §11): the scheme, the overrides and,
        per role, one entry per tensor (parameter, layer, distribution, std, realised std, cutoffs or value).
        With ``init.from_checkpoint`` the tensors the source held were loaded over these draws."""
        by_role: dict[str, list[dict]] = {}
        for key, (role, layer, spec) in self.applied.items():
            entry = {"param": key, "layer": layer, "dist": spec.dist, "std": spec.std,
                     "realized_std": spec.realized_std}
            if spec.dist == "trunc_normal":
                entry["a"], entry["b"] = spec.a, spec.b
            if spec.dist == "constant":
                entry["value"] = spec.value
            by_role.setdefault(role, []).append(entry)
        return {"scheme": self.opts.scheme, "std_overrides": dict(getattr(self.opts, "std_overrides", None) or {}),
                "seed": self.seed, "from_checkpoint": getattr(self.opts, "from_checkpoint", ""), "roles": by_role}
