"""The one home of initlab's vocabulary: tensor roles, parameter names, and metric tags (no torch).

Roles (docs/design.md §4): every initialized tensor has exactly one; models name their submodules
after them, init schemes and parametrizations speak only in them, the config checks LoRA targets
against them and reports order their charts by them. Parameter names are canonical module paths,
``layers.<i>.<role>.weight`` inside block i (compile / activation-checkpoint / FSDP wrapper parts
dropped). Metric tags (§8) of the per-tensor families (``TENSOR_FAMILIES``) are
``<family>/<role>/layer_<NN>`` per block, ``<family>/<role>`` outside the blocks and
``<family>/<role>/mean_over_layers``; other per-layer statistics are ``<family>/layer_<NN>`` or
``<family>/embedding`` (``act_rms/residual/layer_03``,
``attn_logit_max/layer_00``). :func:`format_tag` writes them and :func:`parse_tag` reads them back;
nothing else should spell the format.

Everything here is plain Python so that the config, the models, the schemes and the report
scripts can all import it without importing each other (or torch).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ATTN_Q, ATTN_K, ATTN_V, ATTN_OUT = "attn.q", "attn.k", "attn.v", "attn.out"
"""The attention projections (Llama wq, wk, wv, wo; GPT-2's c_attn thirds and c_proj)."""
MLP_GATE, MLP_UP, MLP_OUT = "mlp.gate", "mlp.up", "mlp.out"
"""The MLP projections (Llama w1, w3, w2; GPT-2 c_fc = mlp.up, c_proj = mlp.out; GPT-2 has no gate)."""
EMBEDDING_ROLES = ("tok_embedding", "pos_embedding")
"""Input embedding tables (pos_embedding: GPT-2's learned positions)."""
INPUT_PROJECTIONS = (ATTN_Q, ATTN_K, ATTN_V, MLP_GATE, MLP_UP)
"""Projections that read the residual stream (Llama w1 = mlp.gate, w3 = mlp.up; GPT-2 c_fc = mlp.up)."""
OUTPUT_PROJECTIONS = (ATTN_OUT, MLP_OUT)
"""Projections that write a residual branch (Llama wo, w2; GPT-2 c_proj): the ones depth-scaled schemes shrink."""
PROJECTION_ROLES = (ATTN_Q, ATTN_K, ATTN_V, ATTN_OUT, MLP_GATE, MLP_UP, MLP_OUT)
"""The matrices of a block, in forward (and chart) order; the roles that can carry LoRA adapters."""
NORM_BIAS_ROLES = ("norm", "bias")
"""Norm weights (1) and every bias (0): set once, not drawn, and not tracked by weight statistics."""
ROLES = (*EMBEDDING_ROLES, *PROJECTION_ROLES, "lm_head", *NORM_BIAS_ROLES)
"""Every role a model parameter can have (adapters add :data:`ADAPTER_SUFFIXES` to a projection role)."""
DRAWN_ROLES = tuple(role for role in ROLES if role not in NORM_BIAS_ROLES)
"""Roles whose tensors an init scheme draws: the roles ``init.std_overrides`` may give a std."""
ADAPTER_SUFFIXES = (".lora_a", ".lora_b")
"""A LoRA adapter's role is its projection's plus one of these, e.g. ``attn.q.lora_b``."""
ROLE_GROUP_ENDINGS = ("ROLES", "PROJECTIONS", "SUFFIXES", "FAMILIES")
"""How the names of this module's role groups (and tag families) end: a tuple named so is vocabulary, which
tests/test_roles.py keeps from being copied elsewhere; other tuples here (a default) are not groups."""
DEFAULT_LORA_TARGETS = (ATTN_Q, ATTN_V)
"""Projections that get LoRA adapters unless ``model.lora_targets`` says otherwise: q and v, as in the LoRA paper
(Hu et al. 2021, §7.1)."""

_WRAPPER_PARTS = re.compile(r"(_orig_mod|_checkpoint_wrapped_module|_fsdp_wrapped_module)\.")


def canonical_name(fqn: str) -> str:
    """Drop compile/activation-checkpoint wrapper prefixes from a parameter name."""
    return _WRAPPER_PARTS.sub("", fqn)


def role_of(name: str) -> str:
    """Role of a parameter from its (canonical) name, e.g. 'layers.3.attn.q.weight' -> 'attn.q'."""
    name = canonical_name(name)
    if name.endswith(".bias"):
        return "bias"
    module = name.removesuffix(".weight").split(".")
    if module[0] == "layers":
        module = module[2:]
    if module[-1].endswith("norm"):
        return "norm"
    return ".".join(module)


def layer_of(name: str) -> int | None:
    """0-based block index of a parameter, None outside the blocks."""
    parts = canonical_name(name).split(".")
    return int(parts[1]) if parts[0] == "layers" else None


def is_adapter(name: str) -> bool:
    """Whether the parameter (or role) called ``name`` is a LoRA adapter matrix."""
    return name.endswith(ADAPTER_SUFFIXES)


TENSOR_FAMILIES = ("weight_std", "grad_norm", "grad_rms", "update_ratio")
"""Metric families with one value per tracked tensor (components/weight_stats.py): ``<family>/<role>[/...]``."""
MEAN_OVER_LAYERS = "mean_over_layers"
"""Last tag part of a role's mean over its blocks (``weight_std/attn.q/mean_over_layers``)."""
EMBEDDING = "embedding"
"""Last tag part of a per-layer statistic taken before the first block (``act_rms/residual/embedding``)."""


def layer_name(layer: int) -> str:
    """The tag part of block ``layer``: 'layer_03' (two digits at least, so tags sort by depth up to 100 blocks)."""
    return f"layer_{layer:02d}"


def format_tag(family: str, role: str | None = None, where: int | str | None = None) -> str:
    """The metric tag ``<family>[/<role>][/<where>]``; ``where`` is a block index (-> layer_NN),
    :data:`MEAN_OVER_LAYERS`, :data:`EMBEDDING`, or None for a tensor outside the blocks."""
    parts = [family] if role is None else [family, role]
    if isinstance(where, int):
        parts.append(layer_name(where))
    elif where is not None:
        parts.append(where)
    return "/".join(parts)


@dataclass(frozen=True)
class Tag:
    """A metric tag read back: ``family`` (may hold '/', e.g. 'act_rms/residual'), ``role`` (None when the
    tag has none), ``layer`` (block index, None outside the blocks) and ``where`` (its last part when that
    is 'mean_over_layers' or 'embedding', else None)."""

    family: str
    role: str | None
    layer: int | None
    where: str | None = None

    @property
    def depth(self) -> int:
        """Sort key by depth: the embedding first (-1), then block order; others last."""
        if self.layer is not None:
            return self.layer
        return -1 if self.where == EMBEDDING else 1 << 30


_LAYER_PART = re.compile(r"layer_(\d+)")


def _where(part: str) -> tuple[int | None, str | None] | None:
    """(layer, where) of a tag's last part: layer_NN, mean_over_layers or embedding; None for anything else."""
    if match := _LAYER_PART.fullmatch(part):
        return int(match.group(1)), None
    return (None, part) if part in (MEAN_OVER_LAYERS, EMBEDDING) else None


def parse_tag(tag: str) -> Tag | None:
    """Read a tag written by :func:`format_tag`: a per-tensor family (:data:`TENSOR_FAMILIES`) is followed by the
    role and optionally layer_NN / mean_over_layers; any other family ends in layer_NN or embedding. None for a
    tag of neither shape (``loss/train``, ``lr``)."""
    parts = tag.split("/")
    if parts[0] in TENSOR_FAMILIES:
        if len(parts) == 2:
            return Tag(parts[0], parts[1], None)
        where = _where(parts[2]) if len(parts) == 3 else None
        return None if where is None else Tag(parts[0], parts[1], *where)
    where = _where(parts[-1]) if len(parts) >= 2 else None
    return None if where is None else Tag("/".join(parts[:-1]), None, *where)
