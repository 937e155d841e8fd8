"""Every script in scripts/, scripts/paper/ and benchmarks/ answers ``--help`` with exit 0, and every argparse option it
declares has a help string (library modules without a ``__main__`` block are not scripts)."""

from __future__ import annotations

import argparse
import contextlib
import io
import runpy
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(path for folder in ("scripts", "scripts/paper", "benchmarks") for path in (REPO / folder).glob("*.py")
                 if '__name__ == "__main__"' in path.read_text())


def run_help(script: Path, monkeypatch) -> tuple[int, str, list[argparse.ArgumentParser]]:
    """(exit code, stdout, parsers that parsed) of ``python <script> --help``, run in this process."""
    parsers: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.parse_known_args

    def recording(self, *args, **kwargs):
        parsers.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", recording)
    monkeypatch.setattr(sys, "argv", [str(script), "--help"])
    monkeypatch.chdir(REPO)
    out = io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out):
        try:
            runpy.run_path(str(script), run_name="__main__")
        except SystemExit as exit_:
            code = exit_.code or 0
    return code, out.getvalue(), parsers


def undocumented(parser: argparse.ArgumentParser) -> list[str]:
    """Options and positionals of ``parser`` (and its subcommands) without a help string."""
    missing = []
    for action in parser._actions:  # argparse keeps them here; there is no public accessor
        if isinstance(action, argparse._SubParsersAction):
            missing += [name for sub in action.choices.values() for name in undocumented(sub)]
        elif not isinstance(action, argparse._HelpAction) and not (action.help or "").strip():
            missing.append("/".join(action.option_strings) or action.dest)
    return missing


def test_every_script_is_found():
    names = {path.relative_to(REPO).as_posix() for path in SCRIPTS}
    assert {"scripts/export.py", "scripts/sample.py", "benchmarks/bench_init.py", "scripts/inspect_init.py",
            "scripts/paper/mlp_std_sweep.py"} <= names
    assert "benchmarks/bench_common.py" not in names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda path: path.relative_to(REPO).as_posix())
def test_help_exits_0_and_describes_every_option(script, monkeypatch):
    code, out, parsers = run_help(script, monkeypatch)
    assert code == 0 and out.strip(), f"{script.name} --help: exit {code}, output {out[:200]!r}"
    missing = [name for parser in parsers for name in undocumented(parser)]
    assert missing == [], f"{script.name}: options without help: {missing}"
