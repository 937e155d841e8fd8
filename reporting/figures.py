"""matplotlib for the report scripts: one set-up (the file-only Agg backend), bands over seeds, PNG + PDF."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from reporting.stats import Band, Interval


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend (no display needed on servers and in CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path, dpi: int = 120, pdf: bool = False, **savefig_kwargs) -> list[Path]:
    """Write ``fig`` to ``path`` (PNG) and, with ``pdf``, next to it as ``<stem>.pdf``; close it; the paths."""
    paths = [path, *([path.with_suffix(".pdf")] if pdf else [])]
    for target in paths:
        fig.savefig(target, dpi=dpi, **savefig_kwargs)
    pyplot().close(fig)
    return paths


def plot_band(ax, xs: Sequence[float], intervals: Sequence[Interval | Band], colour: str,
              **line_kwargs) -> list[float]:
    """The mean line (non-finite points left out) and, where defined, the band [low, high] (an Interval's mean ±
    half-width, or a Band); returns the finite means."""
    import numpy as np

    mean = np.array([i.mean for i in intervals], dtype=float)
    low = np.array([i.low for i in intervals], dtype=float)
    high = np.array([i.high for i in intervals], dtype=float)
    finite = np.isfinite(mean)
    ax.plot(np.array(xs)[finite], mean[finite], color=colour, **line_kwargs)
    banded = finite & np.isfinite(low) & np.isfinite(high)
    if finite.sum() == 1 and banded.any():  # one point has no area to fill: an error bar instead
        ax.errorbar(np.array(xs)[banded], mean[banded], yerr=[mean[banded] - low[banded], high[banded] - mean[banded]],
                    color=colour, capsize=3, lw=1)
    elif banded.any():
        ax.fill_between(xs, low, high, where=banded, color=colour, alpha=0.2, lw=0)
    return mean[finite].tolist()
