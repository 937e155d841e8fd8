"""Parametrizations: how init std, forward multipliers and AdamW hyperparameters scale with width and depth.

A parametrization is a set of pure rules of (role, layer_id, model shapes, base shapes, options). It
never touches tensors: ``init_schemes.apply`` draws the init, ``components.optim`` builds the groups,
the models read the forward multipliers off ``ModelArgs``. Notation: d the width, m_N = fan_in /
base fan_in (= d / base_width for every hidden matrix; d_ff / base d_ff for mlp.out), m_d = d /
base_width, m_L = L / base_depth, alpha the depth exponent (0.5..1).

- ``sp``: standard parametrization, the init scheme alone (every factor 1; bit-for-bit today's runs).
- ``mup``: Tensor Programs V (Yang et al. 2022, arXiv:2203.03466, Table 3 "μP for Adam" and §J) as the
  microsoft/mup package implements it: ``mup/optim.py`` ``MuAdam`` (matrix-like tensors, both dims
  growing with width: lr / m_N and weight_decay * m_N, m_N the fan-in width multiplier
  ``InfShape.width_mult``), ``mup/init.py`` ``constant_std_init_`` (matrix-like std / sqrt(m_N),
  vector-like unchanged), ``mup/layer.py`` ``MuReadout`` / ``MuSharedReadout`` (logits of
  output_mult * x / m_d; the tied table keeps the embedding's rules). Attention logits q.k / d_head
  instead of / sqrt(d_head) (TP5 §4, "attention logit scaling").
- ``completep``: μP plus the depth rules of CompleteP (Dey et al. 2025, "Don't be lazy: CompleteP
  enables compute-efficient deep transformers", arXiv:2505.01618, Table 1; the authors' nanoGPT
  reference ``clairez-cerebras/nanoGPT-mup`` ``model.py``: ``Block.residual_scaling`` and
  ``configure_optimizers``): every residual branch x m_L^-alpha; hidden-matrix lr x m_N^-1 m_L^(alpha-1),
  weight decay x m_N; norm weights and biases inside blocks lr x m_L^(alpha-1); AdamW eps x m_N^-1
  m_L^-alpha for every tensor (the reference scales the optimizer's one eps). alpha = 1 is CompleteP,
  alpha = 0.5 the earlier depth-μP (Bordelon et al. 2023, Yang et al. 2023 "Tensor Programs VI").

How it composes with the init scheme (``init.scheme``): the scheme is asked for the std of each role
on the *base* model (width base_width; for completep also depth base_depth, block l of L playing base
block floor(l * base_depth / L)); μP then rescales the hidden matrices (attn.q/k/v/out, mlp.gate/up/out)
by sqrt(base fan_in / fan_in), i.e. std ∝ 1/sqrt(fan_in) (TP5 Table 3), and keeps the scheme's std of
embeddings, lm_head, norms and biases as the base model has it (constant in width). So at the base
shape every scheme is exactly itself; off it, μP overrides only the scheme's *width* dependence
(e.g. ``mitchell``'s d^-1/2 on the embeddings becomes base_width^-1/2) and, under completep, its depth
dependence (``scaled_output``'s sigma0/sqrt(2L) becomes sigma0/sqrt(2 base_depth)).

LoRA adapters keep their own init (init_schemes/adapters.py, independent of width rules) and their
lr is the base lr (A [r, in] and B [out, r] have one width-sized dimension: "vector-like" in mup's
``InfShape.ninf() == 1`` sense, which MuAdam leaves alone); under completep they are block tensors
(lr x m_L^(alpha-1)).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Protocol

from init_schemes.base import fans
from roles import ATTN_Q, EMBEDDING_ROLES, OUTPUT_PROJECTIONS, PROJECTION_ROLES

PARAMETRIZATIONS = ("sp", "mup", "completep")


class ParametrizationOptions(Protocol):
    """The fields of the [parametrization] table the rules read (components.config.Parametrization)."""

    name: str
    base_width: int
    base_depth: int
    alpha: float
    input_multiplier: float
    output_multiplier: float
    attn_multiplier: float
    weight_decay_scaling: str


@dataclass(frozen=True)
class ParamRule:
    """Factors on one tensor's init std (relative to the scheme on the base model), lr, weight decay and eps."""

    init: float = 1.0
    lr: float = 1.0
    weight_decay: float = 1.0
    eps: float = 1.0

    @property
    def is_identity(self) -> bool:
        return self == ParamRule()


def width_mult(args, base) -> float:
    """m_d = d / base_width."""
    return args.dim / base.dim


def depth_mult(args, base) -> float:
    """m_L = L / base_depth."""
    return args.n_layers / base.n_layers


def fan_in_mult(role: str, args, base) -> float:
    """m_N of a hidden matrix: its fan_in over the base model's (mup's InfShape.width_mult of [out, in])."""
    return fans(role, args)[0] / fans(role, base)[0]


def forward_multipliers(opts: ParametrizationOptions, args, base) -> dict[str, float | None]:
    """The ``ModelArgs`` multiplier fields of a parametrization.

    embedding_multiplier: input_multiplier (TP5 Table 3 "input weights" multiplier, tuned on the proxy).
    logit_multiplier: output_multiplier / m_d under mup/completep (MuReadout), output_multiplier under sp.
    attn_scale: attn_multiplier / d_head under mup/completep (TP5 §4); attn_multiplier / sqrt(d_head)
      under sp, None when that is SDPA's default (attn_multiplier = 1).
    residual_multiplier: m_L^-alpha under completep (CompleteP Table 1), else 1.
    """
    check_options(opts)
    mu = opts.name != "sp"
    attn = opts.attn_multiplier / (args.head_dim if mu else math.sqrt(args.head_dim))
    return {
        "embedding_multiplier": opts.input_multiplier,
        "logit_multiplier": opts.output_multiplier / (width_mult(args, base) if mu else 1.0),
        "attn_scale": None if (not mu and opts.attn_multiplier == 1.0) else attn,
        "residual_multiplier": depth_mult(args, base) ** -opts.alpha if opts.name == "completep" else 1.0,
    }


def param_rule(role: str, layer_id: int | None, args, base, opts: ParametrizationOptions) -> ParamRule:
    """The factors of tensor (role, layer_id); ``role`` may be an adapter role 'attn.q.lora_a'."""
    if opts.name == "sp":
        return ParamRule()
    hidden = role in PROJECTION_ROLES  # matrix-like: both dimensions grow with the width (mup's InfShape.ninf() == 2)
    m_n = fan_in_mult(role, args, base) if hidden else 1.0
    decay = m_n if (hidden and opts.weight_decay_scaling == "independent") else 1.0
    if opts.name == "mup":
        return ParamRule(init=m_n ** -0.5, lr=1.0 / m_n, weight_decay=decay)
    m_l, alpha = depth_mult(args, base), opts.alpha
    depth_lr = m_l ** (alpha - 1) if layer_id is not None else 1.0  # block tensors only
    eps = 1.0 / (width_mult(args, base) * m_l ** alpha)
    return ParamRule(init=m_n ** -0.5, lr=depth_lr / m_n, weight_decay=decay, eps=eps)


def scheme_layer(layer_id: int | None, args, base, opts: ParametrizationOptions) -> int | None:
    """The block of the base model whose init block ``layer_id`` takes (completep: same relative depth)."""
    if layer_id is None or opts.name != "completep":
        return layer_id
    return layer_id * base.n_layers // args.n_layers


def forward_multiplier(role: str, args) -> float:
    """The forward factor a tensor of ``role`` sees, relative to sp (what export folds into it).

    tok/pos embedding: embedding_multiplier; lm_head: logit_multiplier; attn.out/mlp.out:
    residual_multiplier; attn.q: attn_scale * sqrt(d_head) (the softmax-scale change); others 1.
    """
    if role in EMBEDDING_ROLES:
        return args.embedding_multiplier
    if role == "lm_head":
        return args.logit_multiplier
    if role in OUTPUT_PROJECTIONS:
        return args.residual_multiplier
    if role == ATTN_Q and args.attn_scale is not None:
        return args.attn_scale * math.sqrt(args.head_dim)
    return 1.0


def check_options(opts: ParametrizationOptions) -> None:
    """One-line errors for impossible settings."""
    if opts.name not in PARAMETRIZATIONS:
        raise ValueError(f"parametrization.name = {opts.name!r} is unknown; use one of {', '.join(PARAMETRIZATIONS)}")
    if not 0.5 <= opts.alpha <= 1.0:
        raise ValueError(f"parametrization.alpha = {opts.alpha} must be in [0.5, 1] (CompleteP: 1, depth-μP: 0.5)")
    if opts.weight_decay_scaling not in ("independent", "coupled"):
        raise ValueError(f"parametrization.weight_decay_scaling = {opts.weight_decay_scaling!r}; "
                         "use independent or coupled")


def base_shape_overrides(opts: ParametrizationOptions, args, explicit_ffn_dim: int | None) -> dict:
    """[model] overrides that build the base model: width base_width (completep: depth base_depth too).

    The base keeps the head count (its d_head shrinks with the width); an explicit ffn_dim scales
    with the width, a derived one is re-derived by the family's rule at base_width.
    """
    check_options(opts)
    if opts.name == "sp":
        return {}
    if opts.base_width % args.n_heads:
        raise ValueError(f"parametrization.base_width = {opts.base_width} is not divisible by model.n_heads = "
                         f"{args.n_heads}; pick a multiple of the head count")
    overrides = {"dim": opts.base_width}
    if explicit_ffn_dim is not None:
        overrides["ffn_dim"] = max(1, round(explicit_ffn_dim * opts.base_width / args.dim))
    if opts.name == "completep":
        overrides["n_layers"] = opts.base_depth
    return overrides


def with_multipliers(args, base, opts: ParametrizationOptions):
    """``args`` with the parametrization's forward multipliers filled in."""
    return replace(args, **forward_multipliers(opts, args, base))


@dataclass(frozen=True)
class Parametrization:
    """The rules bound to one model: ``args`` its shapes (multipliers filled in), ``base`` the proxy's shapes.

    Under sp ``base`` is ``args`` itself and every rule is the identity.
    """

    opts: ParametrizationOptions
    args: object
    base: object

    @property
    def name(self) -> str:
        return self.opts.name

    def rule(self, role: str, layer_id: int | None) -> ParamRule:
        return param_rule(role, layer_id, self.args, self.base, self.opts)

    def scheme_layer(self, layer_id: int | None) -> int | None:
        return scheme_layer(layer_id, self.args, self.base, self.opts)

    def forward_multiplier(self, role: str) -> float:
        return forward_multiplier(role, self.args)
