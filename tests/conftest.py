"""Test selection: ``python -m pytest -m "not slow"`` is the fast subset (unit tests, no process launches); plain
``python -m pytest`` (CI) runs everything, on two pytest-xdist workers (pyproject.toml). Markers are registered in
pyproject.toml."""

from __future__ import annotations

import os

import pytest


def pytest_configure(config: pytest.Config) -> None:
    """On an xdist worker, torch in the worker's own process uses one thread: two workers with torch's default
    of one thread per core would put twice as many spinning threads as cores on the machine, which slows the
    in-process tests several-fold. Processes the tests launch keep their own settings (most pass OMP_NUM_THREADS)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that launches processes (``multiprocess``) is also ``slow``: it costs interpreter starts."""
    for item in items:
        if item.get_closest_marker("multiprocess") and not item.get_closest_marker("slow"):
            item.add_marker(pytest.mark.slow)
