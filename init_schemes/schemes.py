"""The reference schemes of docs/design.md §5. Each docstring gives the std of every role and its source.

Notation: sigma0 = ``init.base_std`` (default 0.02), L = n_layers, l = 0-based layer index,
d = model dim, d_ff = MLP hidden dim. Norm weights are 1 and biases 0 in every scheme (set by
``Scheme.spec`` before a scheme function is asked, so the functions below see weight roles only).
Schemes that divide their output projections by a depth factor register it, so that
``init.scale_all_projections = true`` (Lingua's original bug) divides q/k/v and mlp.gate/up by
the same factor (``init_schemes.base.Scheme.spec``; cutoffs scale with the std).
"""

from __future__ import annotations

import functools
import math

from init_schemes.base import (
    InitSpec,
    base_std,
    constant,
    fans,
    normal,
    register,
    trunc_normal,
    trunc_normal_abs,
    uniform,
)
from roles import ATTN_OUT, EMBEDDING_ROLES, MLP_OUT, MLP_UP, OUTPUT_PROJECTIONS


def residual_depth(layer_id: int | None, n_layers: int, per_layer: bool) -> float:
    """sqrt(2(l+1)) (per layer) or sqrt(2L): the two residual branches per block seen so far / in total."""
    if per_layer and layer_id is not None:
        return math.sqrt(2 * (layer_id + 1))
    return math.sqrt(2 * n_layers)


@register("normal")
def normal_scheme(role: str, layer_id: int | None, args, opts) -> InitSpec:
    """Base std everywhere ("base-std QKV"; BERT/GPT-style N(0, sigma0^2), sigma0 = init.base_std = 0.02).

    tok_embedding, pos_embedding, attn.q/k/v/out, mlp.gate/up/out, lm_head: N(0, sigma0).
    No depth scaling.
    """
    return normal(base_std(opts))


def _global_depth(layer_id: int | None, args, opts) -> float:
    return residual_depth(layer_id, args.n_layers, per_layer=False)


@register("scaled_output", depth_factor=_global_depth)
def scaled_output_scheme(role: str, layer_id: int | None, args, opts) -> InitSpec:
    """GPT-2 / nanoGPT / Megatron "scaled init" (HF transformers' GPT2PreTrainedModel._init_weights).

    tok_embedding, pos_embedding, attn.q/k/v, mlp.gate/up, lm_head (untied): N(0, sigma0).
    attn.out, mlp.out (GPT-2's c_proj): N(0, sigma0 / sqrt(2L)). Plain (untruncated) normal.
    """
    sigma0 = base_std(opts)
    if role in OUTPUT_PROJECTIONS:
        return normal(sigma0 / residual_depth(layer_id, args.n_layers, per_layer=False))
    return normal(sigma0)


def _torchtitan_depth(layer_id: int | None, args, opts) -> float:
    return residual_depth(layer_id, args.n_layers, per_layer=opts.depth_init)


def _torchtitan_trunc(std: float) -> InitSpec:
    """torchtitan's ``trunc_normal_(w, std=...)`` with its default absolute cutoffs a=-2, b=2."""
    return trunc_normal_abs(std, -2.0, 2.0) if std > 0 else constant(0.0)


@register("depth_aware", depth_factor=_torchtitan_depth)
def depth_aware_scheme(role: str, layer_id: int | None, args, opts) -> InitSpec:
    """torchtitan 0.2.2 llama3 ``Transformer.init_weights`` (models/llama3/model/model.py), exactly.

    With f = sqrt(2(l+1)) (init.depth_init = true, torchtitan's default) or sqrt(2L) (false):
    tok_embedding: N(0, 1) (``nn.init.normal_``, untruncated, independent of sigma0).
    attn.q/k/v (wq, wk, wv), mlp.gate (w1): TN(sigma0) with absolute cutoffs +-2 (torchtitan's
    ``trunc_normal_`` defaults; untruncated in practice at sigma0 = 0.02).
    attn.out (wo), mlp.out (w2): TN(sigma0 / f), cutoffs +-2.
    mlp.up (w3): TN(sigma0 / f), cutoffs +-2 -- torchtitan depth-scales the SwiGLU up-projection;
    init.scale_up_proj = false keeps it at sigma0 (the Lingua / Megatron variant).
    lm_head (output): TN(d^-0.5) truncated at +-3 sigma.
    pos_embedding (GPT-2 only; not in Llama): N(0, sigma0).
    torchtitan hard-codes sigma0 = 0.02; here it is init.base_std (default 0.02).
    With init.scale_all_projections, q/k/v/gate/up get sigma0 / f and cutoffs +-2/f (the same
    +-100 sigma as torchtitan's, i.e. the distribution scaled).
    """
    sigma0 = base_std(opts)
    if role == "tok_embedding":
        return normal(1.0)
    if role == "pos_embedding":
        return normal(sigma0)
    if role == "lm_head":
        return trunc_normal(args.dim ** -0.5, 3.0)
    # Under scale_all_projections Scheme.spec divides mlp.up by f itself: do not do it twice.
    up_scaled = opts.scale_up_proj and not opts.scale_all_projections
    if role in OUTPUT_PROJECTIONS or (role == MLP_UP and up_scaled):
        return _torchtitan_trunc(sigma0 / _torchtitan_depth(layer_id, args, opts))
    return _torchtitan_trunc(sigma0)


def _current_depth(layer_id: int | None, args, opts) -> float:
    return residual_depth(layer_id, args.n_layers, per_layer=True)


@register("mitchell", depth_factor=_current_depth)
def mitchell_scheme(role: str, layer_id: int | None, args, opts) -> InitSpec:
    """OLMo's "mitchell" init (OLMo ``InitFnType.mitchell``); ignores sigma0.

    tok_embedding, pos_embedding, attn.q/k/v, mlp.gate/up, lm_head: d^-0.5.
    attn.out: 1/sqrt(2 d (l+1)); mlp.out: 1/sqrt(2 d_ff (l+1)).
    Every weight truncated at +-3 sigma.
    """
    if role == ATTN_OUT:
        return trunc_normal(1.0 / math.sqrt(2 * args.dim * (layer_id + 1)))
    if role == MLP_OUT:
        return trunc_normal(1.0 / math.sqrt(2 * args.ffn_dim * (layer_id + 1)))
    return trunc_normal(args.dim ** -0.5)


@register("full_megatron", depth_factor=_global_depth)
def full_megatron_scheme(role: str, layer_id: int | None, args, opts) -> InitSpec:
    """OLMo's "full_megatron" init (OLMo ``InitFnType.full_megatron``).

    tok_embedding, pos_embedding, attn.q/k/v, mlp.gate/up: sigma0.
    attn.out, mlp.out: sigma0 / sqrt(2L). lm_head: d^-0.5.
    Every weight truncated at +-3 sigma.
    """
    sigma0 = base_std(opts)
    if role in OUTPUT_PROJECTIONS:
        return trunc_normal(sigma0 / residual_depth(layer_id, args.n_layers, per_layer=False))
    if role == "lm_head":
        return trunc_normal(args.dim ** -0.5)
    return trunc_normal(sigma0)


def lingua_factor(layer_id: int | None, args, opts) -> float:
    """Lingua's ``init_std_factor`` f (lingua/transformer.py BaseTransformer.init_weights)."""
    if opts.std_factor == "current_depth":
        return residual_depth(layer_id, args.n_layers, per_layer=True)
    if opts.std_factor == "global_depth":
        return math.sqrt(2 * (args.n_layers + 1))
    if opts.std_factor == "dim_ratio":
        return args.dim / 4096
    return 1.0


def _trunc_abs_cutoff(std: float, cutoff: float) -> InitSpec:
    """Gaussian of ``std`` truncated at +-cutoff (absolute), zero when std is 0."""
    return InitSpec("trunc_normal", std, -cutoff, cutoff) if std > 0 else constant(0.0)


@register("lingua", depth_factor=lingua_factor)
def lingua_scheme(role: str, layer_id: int | None, args, opts) -> InitSpec:
    """Meta Lingua's init (lingua/transformer.py and apps/main/transformer.py, after the fix of issue #39).

    f = init.std_factor: disabled 1, current_depth sqrt(2(l+1)), global_depth sqrt(2(L+1)),
    dim_ratio d/4096. b = init.base_std if set else d^-0.5; b_ff = init.base_std if set else d_ff^-0.5.
    tok_embedding, pos_embedding, lm_head: TN(d^-0.5) at +-3 sigma (Lingua ignores init_base_std here).
    attn.q/k/v, mlp.gate/up: TN(b) at +-3b.
    attn.out: TN(b/f) truncated at +-3b (the UNSCALED std, as Lingua's Attention.reset_parameters).
    mlp.out: TN(b_ff/f) at +-3 b_ff/f (Lingua's FeedForward truncates w2 at its own, scaled std).
    init.scale_all_projections reproduces Lingua before the fix (commit 575fb6e): q/k/v and
    mlp.gate/up become TN(b/f) at +-3b/f, and attn.out's cutoffs also return to +-3b/f.
    """
    model_std = args.dim ** -0.5
    if role in (*EMBEDDING_ROLES, "lm_head"):
        return trunc_normal(model_std)
    b = model_std if opts.base_std is None else opts.base_std
    f = lingua_factor(layer_id, args, opts)
    if role == ATTN_OUT:
        return trunc_normal(b / f) if opts.scale_all_projections else _trunc_abs_cutoff(b / f, 3 * b)
    if role == MLP_OUT:
        b_ff = args.ffn_dim ** -0.5 if opts.base_std is None else opts.base_std
        return trunc_normal(b_ff / f)
    return trunc_normal(b)


@register("xavier")
def xavier_scheme(role: str, layer_id: int | None, args, opts) -> InitSpec:
    """Glorot & Bengio (2010): std = sqrt(2 / (fan_in + fan_out)) for every weight.

    Fans from ``init_schemes.base.fans`` (embeddings [rows, d] use torch's convention fan_in = d,
    fan_out = rows). init.xavier_distribution: normal N(0, std^2) or uniform U(-sqrt(3) std,
    sqrt(3) std) = U(-sqrt(6/(fan_in+fan_out)), +...). No depth scaling.
    """
    fan_in, fan_out = fans(role, args)
    std = math.sqrt(2.0 / (fan_in + fan_out))
    return uniform(std) if opts.xavier_distribution == "uniform" else normal(std)


def _gelu_tanh(x: float) -> float:
    """GPT-2's GELU, tanh approximation (models.common.gelu_tanh)."""
    return 0.5 * x * (1.0 + math.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _silu(x: float) -> float:
    # x * sigmoid(x), written to avoid exp overflow for large |x|.
    return x / (1.0 + math.exp(-x)) if x >= 0 else x * math.exp(x) / (1.0 + math.exp(x))


ACTIVATIONS = {
    "linear": lambda x: x,
    "relu": lambda x: max(x, 0.0),
    "tanh": math.tanh,
    "gelu": _gelu_tanh,
    "silu": _silu,
}


@functools.cache
def gaussian_second_moment(nonlinearity: str, half_width: float = 12.0, intervals: int = 4800) -> float:
    """E[phi(z)^2] for z ~ N(0, 1), by composite Simpson's rule on [-half_width, half_width].

    The Gaussian tail beyond 12 sigma carries < 1e-30 of the mass; 4800 intervals put the
    quadrature error far below 1e-9 (relu: 0.5, linear: 1, tanh ~0.394, gelu ~0.425, silu ~0.356).
    """
    if nonlinearity not in ACTIVATIONS:
        raise ValueError(f"unknown nonlinearity {nonlinearity!r}; use one of {sorted(ACTIVATIONS)}")
    phi = ACTIVATIONS[nonlinearity]
    h = 2 * half_width / intervals
    total = 0.0
    for i in range(intervals + 1):
        z = -half_width + i * h
        weight = 1 if i in (0, intervals) else (4 if i % 2 else 2)
        total += weight * phi(z) ** 2 * math.exp(-0.5 * z * z)
    return total * h / 3 / math.sqrt(2 * math.pi)


def kaiming_gain(nonlinearity: str) -> float:
    """gain = 1 / sqrt(E[phi(z)^2]), z ~ N(0, 1): the second-moment rule (relu sqrt(2), linear 1).

    Applied to every nonlinearity alike: tanh gets ~1.593 (not torch's 5/3), gelu ~1.534, silu ~1.677.
    """
    return 1.0 / math.sqrt(gaussian_second_moment(nonlinearity))


@register("kaiming")
def kaiming_scheme(role: str, layer_id: int | None, args, opts) -> InitSpec:
    """He et al. (2015): std = gain / sqrt(fan) for every weight, plain normal.

    fan = fan_in or fan_out (init.kaiming_mode; fans from ``init_schemes.base.fans``).
    gain^2 = 1 / E[phi(z)^2] for z ~ N(0, 1) with phi = init.kaiming_nonlinearity ('auto' = the
    model's MLP activation: gelu for GPT-2, silu for Llama), by numerical integration; this gives
    relu 2, linear 1.

    Scope of the gain: one gain for every weight, as a loop of ``torch.nn.init.kaiming_normal_(w,
    nonlinearity=phi)`` over all Linear/Embedding weights would give. He et al.'s derivation puts the
    gain only on a layer whose *input* came through phi (in a transformer: mlp.out, whose input is
    phi(gate/up)); q/k/v, attn.out, mlp.gate/up, the embedding and the head read a normalized or
    linear input, for which the derivation gives gain 1. So this scheme is the "one-gain fan-in
    baseline" that ablations of Kaiming in LLMs usually run, not He et al.'s per-layer rule;
    ``init.kaiming_nonlinearity = "linear"`` gives gain 1 (pure 1/sqrt(fan)) everywhere.
    """
    fan_in, fan_out = fans(role, args)
    fan = fan_in if opts.kaiming_mode == "fan_in" else fan_out
    nonlinearity = args.activation if opts.kaiming_nonlinearity == "auto" else opts.kaiming_nonlinearity
    return normal(kaiming_gain(nonlinearity) / math.sqrt(fan))


@register("small_init")
def small_init_scheme(role: str, layer_id: int | None, args, opts) -> InitSpec:
    """Nguyen & Salazar (2019) "small init" (GPT-NeoX ``small_init_init_method``): N(0, 2/(5d)) for every weight.

    tok_embedding, pos_embedding, attn.*, mlp.*, lm_head: std sqrt(2 / (5 d)). Ignores sigma0.
    GPT-NeoX's own recipe pairs this with ``wang`` on the output projections; see ``wang_scheme``.
    """
    return normal(math.sqrt(2.0 / (5 * args.dim)))


def wang_output_std(args) -> float:
    """2 / (L sqrt(d)) (GPT-NeoX ``wang_init_method``, megatron/model/init_functions.py)."""
    return 2.0 / (args.n_layers * math.sqrt(args.dim))


def _wang_factor(layer_id: int | None, args, opts) -> float:
    # Ratio sigma0 / (2/(L sqrt d)): with scale_all_projections the inputs get the output std.
    sigma0 = base_std(opts)
    return sigma0 / wang_output_std(args) if sigma0 > 0 else 1.0


@register("wang", depth_factor=_wang_factor)
def wang_scheme(role: str, layer_id: int | None, args, opts) -> InitSpec:
    """GPT-NeoX's ``wang_init_method`` on the output projections (EleutherAI/gpt-neox,
    megatron/model/init_functions.py: ``std = 2 / n_layers / math.sqrt(dim)``); the name is NeoX's,
    after Ben Wang, and this follows NeoX's function, not Mesh-Transformer-JAX's code.

    attn.out, mlp.out: N(0, (2 / (L sqrt(d)))^2). Every other weight: N(0, sigma0^2).
    With init.scale_all_projections, q/k/v/gate/up also get 2 / (L sqrt(d)).

    NeoX's recipe (its configs: ``init_method = "small_init"``, ``output_layer_init_method =
    "wang_init"``) gives every other weight, embeddings included, small_init's sqrt(2 / (5 d)):
    ``--init.scheme wang --init.base_std <sqrt(2/(5d))>`` is exactly that pairing (d = 128:
    0.0559017; d = 768: 0.0228218; d = 2048: 0.0139754).
    """
    return normal(wang_output_std(args) if role in OUTPUT_PROJECTIONS else base_std(opts))


@register("zero_output")
def zero_output_scheme(role: str, layer_id: int | None, args, opts) -> InitSpec:
    """Zero-initialized residual outputs and head, the idea of modded-nanogpt, on a normal base.

    attn.out, mlp.out, lm_head: 0. Every other weight: N(0, sigma0^2). With a tied head (GPT-2
    default) there is no separate lm_head tensor; the embedding keeps sigma0.

    Only the zeros match modded-nanogpt (KellerJordan/modded-nanogpt, train_gpt.py: ``c_proj``
    and ``lm_head`` zeroed). Its other weights are not N(0, sigma0^2): ``CastedLinear`` draws
    U(-sqrt(3) s, sqrt(3) s) with s = 0.5 / sqrt(fan_in), and the embedding keeps
    ``nn.Embedding``'s N(0, 1). This scheme isolates the zero outputs against ``normal``.
    """
    if role in (*OUTPUT_PROJECTIONS, "lm_head"):
        return constant(0.0)
    return normal(base_std(opts))


@register("zeros")
def zeros_scheme(role: str, layer_id: int | None, args, opts) -> InitSpec:
    """Every weight 0 (norms 1, biases 0): the symmetry-failure demonstration (every unit of a layer gets the same gradient)."""
    return constant(0.0)
