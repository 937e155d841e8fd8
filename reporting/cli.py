"""What every report script does at its edges: the options of a report over run directories, one-line errors
with exit status 2, warnings, output folders.

Bad input (a path, a value, a file's content) ends a script with one ``error: ...`` line on stderr and exit
status 2, before any output file is written; a condition the report works around (a skipped folder, an
excluded run) is one ``warning: ...`` or ``note: ...`` line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

INPUT_ERRORS = (ValueError, FileNotFoundError, FileExistsError)
"""Exceptions that mean bad input (a path, a value, a file's content): reported by ``error_exit``."""


def report_parser(doc: str, run_dirs_help: str) -> argparse.ArgumentParser:
    """A report script's parser: its description (the first line of ``doc``, the script's docstring) and the run
    directories it reads; the script adds its own options, then :func:`add_output_options`."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("run_dirs", nargs="+", help=run_dirs_help)
    return parser


def add_output_options(parser: argparse.ArgumentParser, name: str, title: str) -> None:
    """--out (default ``outputs/reports/<name>_<time>``, :func:`output_dir`), --title (default ``title``),
    --overwrite and --include-unfinished: the options every report over run directories shares."""
    parser.add_argument("--out", type=Path, default=None,
                        help=f"output directory (default outputs/reports/{name}_<time>)")
    parser.add_argument("--title", default=title, help="report heading and figure title")
    parser.add_argument("--overwrite", action="store_true", help="replace existing report files in --out")
    parser.add_argument("--include-unfinished", action="store_true",
                        help="include unfinished runs (left out by default, with a warning), every run's values "
                             "taken at the last step all runs that did not diverge reached")


def output_dir(out: Path | None, name: str) -> Path:
    """``--out``, else ``outputs/reports/<name>_<YYYYmmdd-HHMMSS>`` (local time, a new folder per report)."""
    return out or Path("outputs") / "reports" / f"{name}_{datetime.now():%Y%m%d-%H%M%S}"


def error_exit(exc: BaseException) -> int:
    """Print a bad-input error as one ``error: ...`` line on stderr; the scripts' exit status 2."""
    print(f"error: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}", file=sys.stderr)
    return 2


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None = None, threads: int | None = None) -> int:
    """``main(argv)`` with bad input (``INPUT_ERRORS``) turned into ``error_exit``; ``threads`` caps torch's CPU
    threads first (the paper scripts run on one, so their numbers do not depend on the machine's core count)."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    try:
        return main(argv)
    except INPUT_ERRORS as exc:
        return error_exit(exc)


def warn(message: str, kind: str = "warning") -> None:
    """One ``warning: ...`` (or ``note: ...``) line on stderr."""
    print(f"{kind}: {message}", file=sys.stderr)


def prepare_out_dir(out_dir: Path, filenames: list[str], overwrite: bool) -> None:
    """Create ``out_dir``; refuse (one-line error) if any output file exists and ``overwrite`` is off."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} exists and is not a directory; pass another --out")
    existing = [name for name in filenames if (out_dir / name).exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{out_dir / existing[0]} already exists; pass another --out or --overwrite")
    out_dir.mkdir(parents=True, exist_ok=True)
