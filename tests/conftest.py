"""Test selection: ``python -m pytest -m "not slow"`` is the fast subset (unit tests, one process); plain
``python -m pytest`` (CI) runs everything. Markers are registered in pyproject.toml."""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that launches processes (``multiprocess``) is also ``slow``: it costs interpreter starts."""
    for item in items:
        if item.get_closest_marker("multiprocess") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
