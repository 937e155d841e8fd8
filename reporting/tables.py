"""Number formats and Markdown tables of the reports."""

from __future__ import annotations

import csv
from pathlib import Path


def fmt_count(value: float | None) -> str:
    """3 significant digits with a k/M/B/T suffix (``1048576 -> '1.05M'``); 'n/a' for None."""
    if value is None:
        return "n/a"
    for divisor, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        text = f"{value / divisor:.3g}"
        if abs(float(text)) >= 1:
            return text + suffix
    return f"{value:.3g}"


def fmt_loss(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def markdown_rows(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def write_rows_csv(rows: list[dict], path: Path) -> None:
    """One CSV row per dict, the columns in the first row's key order."""
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
