"""Named, pure init schemes (role, layer_id, model dims, options) -> InitSpec, and their application.

Importing the package loads the registry only (plain Python, no torch), so ``components.config``
can validate ``init.scheme`` against it; ``WeightInitializer`` and ``fill_`` (torch) load on first use.
"""

from init_schemes import schemes  # noqa: F401  (registers every scheme)
from init_schemes.base import REGISTRY, InitSpec, get_scheme

__all__ = ["REGISTRY", "InitSpec", "WeightInitializer", "fill_", "get_scheme"]


def __getattr__(name: str):
    if name in ("WeightInitializer", "fill_"):
        from init_schemes import apply

        return getattr(apply, name)
    raise AttributeError(f"module 'init_schemes' has no attribute {name!r}")
