"""Per-layer metrics of a run's records: ``weight_std/<role>/layer_<NN>`` (docs/design.md §8)."""

from __future__ import annotations

import math
from typing import Any

from roles import PROJECTION_ROLES, Tag, parse_tag

# Canonical order of the per-layer roles (docs/design.md §4), for stable subplot and table order.
LAYER_ROLES = PROJECTION_ROLES


def weight_std_tag(key: str) -> Tag | None:
    """The parsed ``weight_std/<role>/layer_<NN>`` tag, or None for any other key."""
    tag = parse_tag(key)
    return tag if tag is not None and tag.family == "weight_std" and tag.layer is not None else None


def order_roles(roles: set[str]) -> list[str]:
    """Roles in canonical order (docs/design.md §4), unknown ones last alphabetically."""
    return [r for r in LAYER_ROLES if r in roles] + sorted(roles - set(LAYER_ROLES))


def std_roles(records: list[dict[str, Any]]) -> list[str]:
    """Roles with per-layer ``weight_std/<role>/layer_<NN>`` keys, in canonical order."""
    return order_roles({tag.role for record in records for key in record if (tag := weight_std_tag(key))})


def layer_std_matrix(records: list[dict[str, Any]], role: str) -> tuple[list[int], list[int], list[list[float]]]:
    """(steps [S], layers [L], std [L][S]) of one role; nan where a step did not log a layer."""
    cells: dict[tuple[int, int], float] = {}
    steps: list[int] = []
    for record in records:
        logged = False
        for key, value in record.items():
            tag = weight_std_tag(key)
            if tag and tag.role == role:
                cells[(tag.layer, record["step"])] = math.nan if value is None else float(value)
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
            tag = weight_std_tag(key)
            if tag:
                final.setdefault(tag.role, {})[tag.layer] = math.nan if value is None else float(value)
    return final
