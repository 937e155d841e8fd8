"""roles.py: the role vocabulary, parameter naming and metric tags, and the guard that keeps them in one place."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

import roles
from roles import ROLES, Tag, format_tag, layer_of, parse_tag, role_of

REPO = Path(__file__).resolve().parent.parent
ROLE_SETS = {frozenset(getattr(roles, name)): name for name in dir(roles)
             if name.endswith(roles.ROLE_GROUP_ENDINGS) and isinstance(getattr(roles, name), tuple)}
"""roles.py's named role groups (and tag families): the vocabulary no other file may spell again."""
SAMPLE_TAGS = ["weight_std/attn.q/layer_03", "grad_rms/mlp.out/layer_11", "weight_std/lm_head",
               "weight_std/attn.out/mean_over_layers", "act_rms/residual/layer_00", "attn_logit_max/layer_02",
               "act_rms/residual/embedding"]
REGEX_CALLS = {"compile", "match", "fullmatch", "search", "findall", "finditer", "sub", "split"}


def vocabulary_copies(root: Path, skip: tuple[str, ...] = ("roles.py", "tests/")) -> list[str]:
    """'path:line: what' for every literal tuple/list/set of strings equal to one of roles.py's name sets, and every
    regex literal that matches a metric tag, in the .py files under ``root`` (but ``skip``)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(skip) or "/." in f"/{rel}":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=rel)):
            if isinstance(node, (ast.Tuple, ast.List, ast.Set)) and len(node.elts) >= 2 and all(
                    isinstance(e, ast.Constant) and isinstance(e.value, str) for e in node.elts):
                name = ROLE_SETS.get(frozenset(e.value for e in node.elts))
                if name:
                    found.append(f"{rel}:{node.lineno}: a copy of roles.{name}")
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in REGEX_CALLS
                  and isinstance(node.func.value, ast.Name) and node.func.value.id == "re" and node.args
                  and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                pattern = node.args[0].value
                if any(re.search(pattern, tag) for tag in SAMPLE_TAGS) and re.search(r"layer|/", pattern):
                    found.append(f"{rel}:{node.lineno}: a metric-tag regex {pattern!r} (use roles.parse_tag)")
    return found


def test_no_role_list_or_tag_regex_outside_roles_py():
    assert vocabulary_copies(REPO) == []


def test_the_guard_knows_every_role_group_and_no_default():
    assert sorted(ROLE_SETS.values()) == ["ADAPTER_SUFFIXES", "DRAWN_ROLES", "EMBEDDING_ROLES", "INPUT_PROJECTIONS",
                                          "NORM_BIAS_ROLES", "OUTPUT_PROJECTIONS", "PROJECTION_ROLES", "ROLES",
                                          "TENSOR_FAMILIES"]


def test_the_guard_finds_a_planted_role_list_and_tag_regex(tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "planted.py").write_text(
        'import re\nOUT = ("mlp.out", "attn.out")\nTAG = re.compile(r"^weight_std/(?P<role>[^/]+)/layer_(\\d+)$")\n'
        'FINE = ("attn.q", "attn.v")\nWRAP = re.compile(r"(_orig_mod)\\.")\n')
    (tmp_path / "roles.py").write_text('ROLES = ("mlp.out", "attn.out")\n')  # the home itself is exempt
    assert vocabulary_copies(tmp_path) == [
        "pkg/planted.py:2: a copy of roles.OUTPUT_PROJECTIONS",
        "pkg/planted.py:3: a metric-tag regex '^weight_std/(?P<role>[^/]+)/layer_(\\\\d+)$' (use roles.parse_tag)"]


def role_literals(root: Path, skip: tuple[str, ...] = ("roles.py", "tests/")) -> list[str]:
    """'path:line: literal' for every string literal in code (docstrings aside) that spells a projection role, or
    a parameter name that starts with one (``"attn.q.weight"``), in the .py files under ``root`` (but ``skip``):
    such names come from roles.py's constants (``roles.ATTN_Q``, ...)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(skip) or "/." in f"/{rel}":
            continue
        tree = ast.parse(path.read_text(), filename=rel)
        docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                    and any(node.value == r or node.value.startswith(r + ".") for r in roles.PROJECTION_ROLES)):
                found.append(f"{rel}:{node.lineno}: {node.value!r}")
    return found


def test_no_role_name_spelled_outside_roles_py():
    assert role_literals(REPO) == []


def test_the_role_name_guard_finds_planted_literals(tmp_path):
    (tmp_path / "planted.py").write_text(
        '"""A docstring may say attn.q."""\nfrom roles import ATTN_Q\nQ = "attn.q"\nNAMES = {"mlp.out.weight": 1}\n'
        'FINE = f"{ATTN_Q}.weight"\nOTHER = "attn_norm.weight"\n')
    assert role_literals(tmp_path) == ["planted.py:3: 'attn.q'", "planted.py:4: 'mlp.out.weight'"]


@pytest.mark.parametrize(("args", "tag", "parsed"), [
    (("weight_std", "attn.q", 3), "weight_std/attn.q/layer_03", Tag("weight_std", "attn.q", 3)),
    (("grad_norm", "attn.v.lora_b", 12), "grad_norm/attn.v.lora_b/layer_12", Tag("grad_norm", "attn.v.lora_b", 12)),
    (("weight_std", "lm_head"), "weight_std/lm_head", Tag("weight_std", "lm_head", None)),
    (("weight_std", "mlp.out", "mean_over_layers"), "weight_std/mlp.out/mean_over_layers",
     Tag("weight_std", "mlp.out", None, "mean_over_layers")),
    (("act_rms/residual", None, 0), "act_rms/residual/layer_00", Tag("act_rms/residual", None, 0)),
    (("act_rms/residual", None, "embedding"), "act_rms/residual/embedding",
     Tag("act_rms/residual", None, None, "embedding")),
    (("attn_logit_max", None, 101), "attn_logit_max/layer_101", Tag("attn_logit_max", None, 101)),
    (("update_ratio", "a_future_role", 1), "update_ratio/a_future_role/layer_01", Tag("update_ratio", "a_future_role", 1)),
])
def test_format_tag_and_parse_tag_are_inverse(args, tag, parsed):
    assert format_tag(*args) == tag
    assert parse_tag(tag) == parsed


def test_tags_of_other_shapes_are_not_parsed_and_depth_sorts_the_embedding_first():
    others = ("loss/train", "lr", "throughput/tokens_per_sec", "layer_03", "weight_std/attn.q/step_3", "grad_norm")
    assert [parse_tag(t) for t in others] == [None] * len(others)
    tags = ["act_rms/residual/layer_10", "act_rms/residual/embedding", "act_rms/residual/layer_02"]
    assert sorted(tags, key=lambda t: parse_tag(t).depth) == [tags[1], tags[2], tags[0]]


def test_role_and_layer_of_parameter_names():
    assert (role_of("layers.3._orig_mod.attn.q.weight"), layer_of("layers.3._orig_mod.attn.q.weight")) == ("attn.q", 3)
    assert (role_of("layers.0.mlp_norm.weight"), role_of("layers.0.attn.out.bias"), layer_of("lm_head.weight")) == (
        "norm", "bias", None)
    assert set(ROLES) >= {role_of(n) for n in ("tok_embedding.weight", "final_norm.weight", "lm_head.weight")}


def test_roles_imports_no_torch():
    code = "import sys, roles, components.config; print(any(m == 'torch' or m.startswith('torch.') for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
