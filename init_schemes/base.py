"""The vocabulary of init schemes: an ``InitSpec`` per (role, layer), the registry, fan sizes.

A scheme is a pure function ``(role, layer_id, args, opts) -> InitSpec``: ``args`` are the model
shapes (``models.common.ModelArgs``: n_layers L, dim d, ffn_dim d_ff, heads, vocab), ``opts`` the
``[init]`` config table. It never touches tensors; ``init_schemes.apply`` draws the values.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

from roles import ATTN_K, ATTN_OUT, ATTN_Q, ATTN_V, INPUT_PROJECTIONS, MLP_GATE, MLP_OUT, MLP_UP, ROLES

DEFAULT_BASE_STD = 0.02


def _phi(x: float) -> float:
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _cdf(x: float) -> float:
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def truncation_shrink(alpha: float, beta: float) -> float:
    """std of N(0,1) truncated to [alpha, beta] (in units of sigma); 0.9866 at +-3."""
    z = _cdf(beta) - _cdf(alpha)
    mean = (_phi(alpha) - _phi(beta)) / z
    var = 1 + (alpha * _phi(alpha) - beta * _phi(beta)) / z - mean * mean
    return math.sqrt(var)


@dataclass(frozen=True)
class InitSpec:
    """How to draw one tensor.

    dist: normal | trunc_normal | uniform | constant. std: the std of the (untruncated)
    Gaussian, or of the uniform. a, b: absolute cutoffs of trunc_normal. value: the constant.
    """

    dist: Literal["normal", "trunc_normal", "uniform", "constant"]
    std: float = 0.0
    a: float | None = None
    b: float | None = None
    value: float = 0.0

    @property
    def realized_std(self) -> float:
        """The std the drawn values actually have (truncation shrinks it)."""
        if self.dist == "constant":
            return 0.0
        if self.dist == "trunc_normal" and self.std > 0:
            return self.std * truncation_shrink(self.a / self.std, self.b / self.std)
        return self.std

    @property
    def realized_mean(self) -> float:
        return self.value if self.dist == "constant" else 0.0

    def scaled(self, factor: float) -> InitSpec:
        """Same distribution with std (and cutoffs) multiplied by ``factor``."""
        if self.dist == "constant":
            return self
        a = None if self.a is None else self.a * factor
        b = None if self.b is None else self.b * factor
        return InitSpec(self.dist, self.std * factor, a, b, self.value)


def normal(std: float) -> InitSpec:
    return InitSpec("normal", std) if std > 0 else constant(0.0)


def trunc_normal(std: float, cutoff_sigmas: float = 3.0) -> InitSpec:
    """Gaussian truncated at +-cutoff_sigmas * std (OLMo, Lingua, torchtitan's head)."""
    if std <= 0:
        return constant(0.0)
    return InitSpec("trunc_normal", std, -cutoff_sigmas * std, cutoff_sigmas * std)


def trunc_normal_abs(std: float, a: float = -2.0, b: float = 2.0) -> InitSpec:
    """Gaussian truncated at absolute bounds (torch.nn.init.trunc_normal_'s defaults +-2)."""
    return InitSpec("trunc_normal", std, a, b)


def uniform(std: float) -> InitSpec:
    """U(-sqrt(3) std, sqrt(3) std), whose std is ``std``."""
    return InitSpec("uniform", std) if std > 0 else constant(0.0)


def constant(value: float) -> InitSpec:
    return InitSpec("constant", value=value)


class InitOptions(Protocol):
    """The fields of the [init] table a scheme may read (components.config.Init)."""

    base_std: float | None
    scale_all_projections: bool
    depth_init: bool
    scale_up_proj: bool
    std_factor: str
    xavier_distribution: str
    kaiming_mode: str
    kaiming_nonlinearity: str
    correct_truncation: bool
    std_overrides: dict[str, float]


SchemeFn = Callable[[str, "int | None", object, InitOptions], InitSpec]
DepthFactorFn = Callable[["int | None", object, InitOptions], float]


@dataclass(frozen=True)
class Scheme:
    """A named scheme; ``depth_factor`` (if any) is the divisor of its output projections at a
    layer, which ``init.scale_all_projections`` also applies to q/k/v and mlp gate/up."""

    name: str
    fn: SchemeFn
    depth_factor: DepthFactorFn | None = None

    def spec(self, role: str, layer_id: int | None, args, opts: InitOptions) -> InitSpec:
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}; roles are {ROLES}")
        fixed = norm_or_bias(role)
        if fixed is not None:  # the same in every scheme: a scheme function sees weight roles only
            return fixed
        spec = self.fn(role, layer_id, args, opts)
        if (opts.scale_all_projections and self.depth_factor is not None
                and role in INPUT_PROJECTIONS and layer_id is not None):
            spec = spec.scaled(1.0 / self.depth_factor(layer_id, args, opts))
        overrides = getattr(opts, "std_overrides", None) or {}
        if role in overrides:
            spec = with_std(spec, overrides[role])
        if opts.correct_truncation and spec.dist == "trunc_normal" and spec.std > 0:
            spec = spec.scaled(spec.std / spec.realized_std)
        return spec


def with_std(spec: InitSpec, std: float) -> InitSpec:
    """``spec`` with its std replaced by ``std`` (``init.std_overrides``), the distribution family kept.

    A Gaussian or uniform keeps its family; a truncated Gaussian keeps its cutoffs at the same number
    of sigmas (+-3 sigma stays +-3 sigma; depth_aware's absolute +-2 at sigma0 = 0.02, i.e. +-100 sigma,
    stays +-100 sigma), so its realised std is ``std`` times the same shrink as before. A role the
    scheme sets to a constant (zero_output's output projections, zeros) becomes N(0, std^2); std 0
    makes any role the constant 0.
    """
    if std == 0:
        return constant(0.0)
    if spec.dist == "constant":
        return normal(std)
    return spec.scaled(std / spec.std)


REGISTRY: dict[str, Scheme] = {}


def register(name: str, depth_factor: DepthFactorFn | None = None):
    """Decorator adding a scheme function to the registry under ``name``."""

    def wrap(fn: SchemeFn) -> SchemeFn:
        if name in REGISTRY:
            raise ValueError(f"init scheme {name!r} registered twice")
        REGISTRY[name] = Scheme(name, fn, depth_factor)
        return fn

    return wrap


def get_scheme(name: str) -> Scheme:
    if name not in REGISTRY:
        raise ValueError(f"unknown init scheme {name!r}; registered: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def base_std(opts: InitOptions, default: float = DEFAULT_BASE_STD) -> float:
    return default if opts.base_std is None else opts.base_std


def fans(role: str, args) -> tuple[int, int]:
    """(fan_in, fan_out) of a role's weight, with torch's convention for embeddings ([rows, d]: fan_in = d)."""
    d, d_ff = args.dim, args.ffn_dim
    q_out, kv_out = args.n_heads * args.head_dim, args.n_kv_heads * args.head_dim
    table = {
        "tok_embedding": (d, args.vocab_size), "pos_embedding": (d, args.max_seq_len),
        ATTN_Q: (d, q_out), ATTN_K: (d, kv_out), ATTN_V: (d, kv_out), ATTN_OUT: (q_out, d),
        MLP_GATE: (d, d_ff), MLP_UP: (d, d_ff), MLP_OUT: (d_ff, d), "lm_head": (d, args.vocab_size),
    }
    if role not in table:
        raise ValueError(f"role {role!r} has no fan-in/fan-out")
    return table[role]


def norm_or_bias(role: str) -> InitSpec | None:
    """Every scheme: norm weights 1, biases 0 (None for other roles)."""
    if role == "norm":
        return constant(1.0)
    if role == "bias":
        return constant(0.0)
    return None
