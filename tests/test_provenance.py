"""components/provenance.py: the commit and dirty state of a real git checkout, outside one, and overridden."""

from __future__ import annotations

import subprocess

import torch

from components.provenance import UNKNOWN, git_state, header_comment, start_record


def git(repo, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def test_commit_and_dirty_state_of_a_checkout_and_of_a_plain_directory(tmp_path, monkeypatch):
    monkeypatch.delenv("INITLAB_COMMIT", raising=False)
    monkeypatch.delenv("INITLAB_DIRTY", raising=False)
    assert git_state(tmp_path) == (UNKNOWN, None)  # not a git checkout
    git(tmp_path, "init", "-q")
    (tmp_path / "a.py").write_text("x = 1\n")
    git(tmp_path, "add", "a.py")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    (tmp_path / "untracked.txt").write_text("outputs are not code\n")
    assert git_state(tmp_path) == (git(tmp_path, "rev-parse", "--short", "HEAD"), False)
    (tmp_path / "a.py").write_text("x = 2\n")
    assert git_state(tmp_path) == (git(tmp_path, "rev-parse", "--short", "HEAD"), True)
    monkeypatch.setenv("INITLAB_COMMIT", "abc1234")  # a copied tree names its commit; dirty unknown unless told
    assert git_state(tmp_path) == ("abc1234", None)
    monkeypatch.setenv("INITLAB_DIRTY", "0")
    assert git_state(tmp_path) == ("abc1234", False)


def test_start_record_and_its_config_header(monkeypatch):
    monkeypatch.setenv("INITLAB_COMMIT", "abc1234")
    monkeypatch.setenv("INITLAB_DIRTY", "1")
    record = start_record(torch.device("cpu"), 2, resumed_from=40)
    assert (record["commit"], record["dirty"], record["world_size"], record["resumed_from"], record["ended"]) == (
        "abc1234", True, 2, 40, None)
    first, second = header_comment(record).splitlines()
    assert first == f"# initlab abc1234 (with uncommitted changes), torch {torch.__version__}, CUDA " + (
        torch.version.cuda or "none")
    assert second == f"# 2 x cpu on {record['hostname']}, started {record['started']}"
