"""Named, pure init schemes (role, layer_id, model dims, options) -> InitSpec, and their application."""

from init_schemes import schemes  # noqa: F401  (registers every scheme)
from init_schemes.apply import WeightInitializer, fill_
from init_schemes.base import REGISTRY, InitSpec, get_scheme

__all__ = ["REGISTRY", "InitSpec", "WeightInitializer", "fill_", "get_scheme"]
