"""Imports run one way (docs/design.md §2): each folder below imports none of the modules listed against it."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# folder (or module file) -> module prefixes it must not import
FORBIDDEN = {
    "roles.py": ("torch", "components", "models", "init_schemes", "distributed", "integrations", "scripts", "train"),
    "models": ("components", "init_schemes", "distributed", "integrations", "scripts", "train", "torch.distributed"),
    "init_schemes": ("models", "components", "distributed", "integrations", "scripts", "train", "torch.distributed"),
    "distributed": ("components", "models", "init_schemes", "integrations", "scripts", "train"),
    "components": ("integrations", "train", "reporting", "experiments", "scripts", "benchmarks"),
    "integrations": ("benchmarks", "experiments", "scripts"),
    "reporting": ("train", "experiments", "scripts", "benchmarks"),
    "experiments": ("scripts", "benchmarks"),
    "scripts": ("scripts",),  # no script imports another: what scripts share lives in the library
}


def imported_modules(path: Path) -> list[tuple[int, list[str]]]:
    """(line, [module, ...]) of every absolute import in the file; ``from a import b`` may mean module a.b too."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, [alias.name]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, [node.module, *(f"{node.module}.{a.name}" for a in node.names)]))
    return found


def layer_violations(root: Path) -> list[str]:
    """'path:line imports module' for every import in ``root`` that FORBIDDEN rules out."""
    found = []
    for place, forbidden in FORBIDDEN.items():
        files = [root / place] if place.endswith(".py") else sorted((root / place).rglob("*.py"))
        for path in (f for f in files if f.exists()):
            for line, modules in imported_modules(path):
                if any(m == prefix or m.startswith(prefix + ".") for m in modules for prefix in forbidden):
                    found.append(f"{path.relative_to(root).as_posix()}:{line} imports {modules[0]}")
    return found


def test_imports_run_one_way():
    assert layer_violations(REPO) == []


def test_the_check_finds_planted_upward_imports(tmp_path):
    (tmp_path / "init_schemes").mkdir()
    (tmp_path / "init_schemes" / "apply.py").write_text(
        "import math\nfrom torch.distributed.tensor import DTensor\nfrom models.common import ModelArgs\n")
    (tmp_path / "integrations" / "torchtitan").mkdir(parents=True)
    (tmp_path / "integrations" / "torchtitan" / "spec.py").write_text("import benchmarks.torchtitan.flavor\n")
    (tmp_path / "roles.py").write_text("import re\n")
    (tmp_path / "scripts" / "paper").mkdir(parents=True)
    (tmp_path / "scripts" / "paper" / "sweep.py").write_text("from experiments.mlp import build_mlp\n"
                                                             "from scripts.paper.common import write_csv\n")
    assert layer_violations(tmp_path) == [
        "init_schemes/apply.py:2 imports torch.distributed.tensor",
        "init_schemes/apply.py:3 imports models.common",
        "integrations/torchtitan/spec.py:1 imports benchmarks.torchtitan.flavor",
        "scripts/paper/sweep.py:2 imports scripts.paper.common"]
