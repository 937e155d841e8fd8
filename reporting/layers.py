"""Per-layer metrics of a run's records: ``weight_std/<role>/layer_<NN>`` (docs/design.md §8)."""

from __future__ import annotations

import math
import re
from typing import Any

WEIGHT_STD_KEY = re.compile(r"^weight_std/(?P<role>[^/]+)/layer_(?P<layer>\d+)$")
# Canonical order of the per-layer roles (docs/design.md §4), for stable subplot and table order.
LAYER_ROLES = ("attn.q", "attn.k", "attn.v", "attn.out", "mlp.gate", "mlp.up", "mlp.out")


def order_roles(roles: set[str]) -> list[str]:
    """Roles in canonical order (docs/design.md §4), unknown ones last alphabetically."""
    return [r for r in LAYER_ROLES if r in roles] + sorted(roles - set(LAYER_ROLES))


def std_roles(records: list[dict[str, Any]]) -> list[str]:
    """Roles with per-layer ``weight_std/<role>/layer_<NN>`` keys, in canonical order."""
    return order_roles({m["role"] for record in records for key in record if (m := WEIGHT_STD_KEY.match(key))})


def layer_std_matrix(records: list[dict[str, Any]], role: str) -> tuple[list[int], list[int], list[list[float]]]:
    """(steps [S], layers [L], std [L][S]) of one role; nan where a step did not log a layer."""
    cells: dict[tuple[int, int], float] = {}
    steps: list[int] = []
    for record in records:
        logged = False
        for key, value in record.items():
            match = WEIGHT_STD_KEY.match(key)
            if match and match["role"] == role:
                cells[(int(match["layer"]), record["step"])] = math.nan if value is None else float(value)
                logged = True
        if logged:
            steps.append(record["step"])
    layers = sorted({layer for layer, _ in cells})
    return steps, layers, [[cells.get((layer, step), math.nan) for step in steps] for layer in layers]


def final_layer_std(records: list[dict[str, Any]]) -> dict[str, dict[int, float]]:
    """{role: {layer: std}} from the newest record that logged each (role, layer)."""
    final: dict[str, dict[int, float]] = {}
    for record in records:
        for key, value in record.items():
            match = WEIGHT_STD_KEY.match(key)
            if match:
                final.setdefault(match["role"], {})[int(match["layer"])] = math.nan if value is None else float(value)
    return final
