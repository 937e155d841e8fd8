"""Faults around a run and what the trainer says about them: foreign checkpoints, non-finite saves, full disks
(a real file-size limit, ``RLIMIT_FSIZE``, and a real full tmpfs where mounting one is allowed), unusable output
directories, damaged checksum manifests and configs.

Every case is a complete ``train.py`` run of the 2-layer Llama of tests/test_checkpoint.py, two batches of them
in two interpreters (tests/fault_cases_worker.py): the first batch trains and fails, the second resumes copies
of what the first wrote. Oracles: the exact one-line stderr, the exit code, and the files left behind.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from components.checkpoint import IDENTITY, MANIFEST, complete_steps, partial_dirs
from components.config import ConfigError, load_config
from tests.launch import python
from tests.test_checkpoint import snapshot, train_args

NO_SPACE_FIX = "free space there or choose another --job.output_dir"


def run_cases(root: Path, name: str, cases: dict[str, dict]) -> dict[str, dict]:
    """The cases {name: {"argv", "fsize", ...}} in one interpreter; {name: {rc, stdout, stderr}}."""
    (root / f"{name}.json").write_text(json.dumps(list(cases.values())))
    python(["tests/fault_cases_worker.py", str(root / f"{name}.json"), str(root / f"{name}_results.json")])
    return dict(zip(cases, json.loads((root / f"{name}_results.json").read_text())))


def resume_argv(run_dir: Path, *extra: str) -> list[str]:
    return ["--config", str(run_dir / "config.toml"), "--job.output_dir", str(run_dir.parent),
            "--job.run_name", run_dir.name, *extra]


def root_only_dirs(out: Path) -> dict[str, Path]:
    """Directories only root can make (each left out where that fails): ``disk_full``, a 2 MiB tmpfs that
    really fills (ENOSPC); ``full_at_launch``, a tmpfs already full; ``read_only``, a tmpfs mounted read-only (EROFS); ``immutable``, a directory with
    the immutable attribute (``chattr +i``: even root gets EPERM, as a user gets EACCES from a directory not
    theirs)."""
    made = {}
    for name, command in (("disk_full", ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs"]),
                          ("full_at_launch", ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs"]),
                          ("read_only", ["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs"]),
                          ("immutable", ["chattr", "+i"])):
        (out / name).mkdir()
        try:
            if subprocess.run([*command, str(out / name)], capture_output=True).returncode == 0:
                made[name] = out / name
        except FileNotFoundError:  # no mount / chattr here
            pass
    if "full_at_launch" in made:  # filled up before the launch: its first write (the lock's holder line) fails
        with (made["full_at_launch"] / "filler").open("wb", buffering=0) as filler:
            with contextlib.suppress(OSError):
                while True:
                    filler.write(b"\0" * 4096)
    return made


def undo_root_only_dirs(made: dict[str, Path]) -> None:
    for name, path in made.items():
        subprocess.run(["chattr", "-i", str(path)] if name == "immutable" else ["umount", str(path)], check=True)


@pytest.fixture(scope="module")
def faults(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("faults")
    (out / "a_file").write_text("not a directory")
    (out / "latin1.toml").write_bytes('[job]\ndescription = "caf\xe9"\n'.encode("latin-1"))
    privileged = root_only_dirs(out)
    first = {
        "ref": {"argv": train_args(out, "ref")},  # normal init; checkpoints 4, 8, 12
        "own": {"argv": train_args(out, "own", "--init.scheme", "scaled_output", "--training.steps", "4")},
        "inf_saved": {"argv": train_args(out, "inf_saved"), "inf_after_update": 8, "unchecked_saves": True},
        "inf_refused": {"argv": train_args(out, "inf_refused"), "inf_after_update": 8},
        "launch_full": {"argv": train_args(out, "launch_full"), "fsize": 50},
        # 4 kB: config.toml and init_stds.json (~3.1 kB) fit; the TensorBoard events (~5.6 kB at 12 steps) do not
        "events_full": {"argv": train_args(out, "events_full", "--checkpoint.enable", "false"), "fsize": 4000},
        "save_full": {"argv": train_args(out, "save_full", "--training.steps", "4"), "fsize": 600_000},
        "not_a_dir": {"argv": train_args(out / "a_file" / "out", "x")},
        "escaping_name": {"argv": train_args(out / "a" / "b", "../../escaped")},
        "huge_lr": {"argv": train_args(out, "huge_lr", "--optimizer.lr", "1e39")},
        "latin1_config": {"argv": ["--config", str(out / "latin1.toml")]},
    }
    for name, path in privileged.items():
        first[name] = {"argv": train_args(path, "run", "--training.steps", "4")}
    try:
        results = run_cases(out, "first", first)
        left_on_full_disk = sorted(p.name for p in privileged.get("full_at_launch", out).iterdir())
    finally:
        undo_root_only_dirs(privileged)
    for name in ("empty_manifest", "list_manifest", "latin1_run"):
        shutil.copytree(out / "ref", out / name, ignore=shutil.ignore_patterns(".lock", "finished.json"))
    (out / "empty_manifest" / "checkpoints" / "step_12" / MANIFEST).write_text("")
    (out / "list_manifest" / "checkpoints" / "step_12" / MANIFEST).write_text("[1, 2]")
    (out / "latin1_run" / "config.toml").write_bytes(b"\xff" + (out / "ref" / "config.toml").read_bytes())
    shutil.copytree(out / "ref" / "checkpoints" / "step_8", out / "own" / "checkpoints" / "step_8")
    before_foreign = snapshot(out / "own")
    results |= run_cases(out, "second", {
        "foreign": {"argv": train_args(out, "own", "--init.scheme", "scaled_output")},
        "empty_manifest": {"argv": resume_argv(out / "empty_manifest", "--training.steps", "14")},
        "list_manifest": {"argv": resume_argv(out / "list_manifest", "--training.steps", "14")},
        "inf_resumed": {"argv": resume_argv(out / "inf_saved")},
        "latin1_run": {"argv": train_args(out, "latin1_run", "--training.steps", "14")},
    })
    return {"out": out, "results": results, "privileged": privileged, "before_foreign": before_foreign,
            "left_on_full_disk": left_on_full_disk}


def stderr_line(faults: dict, name: str, rc: int = 2) -> str:
    result = faults["results"][name]
    assert result["rc"] == rc and "Traceback" not in result["stderr"], result["stderr"][-3000:]
    assert len(result["stderr"].strip().splitlines()) == 1, result["stderr"]
    return result["stderr"].strip()


# -------------------------------------------------------------------------------- checkpoints
@pytest.mark.multiprocess
def test_a_checkpoint_of_another_experiment_is_refused_with_the_config_diff(faults):
    folder = faults["out"] / "own" / "checkpoints"
    assert stderr_line(faults, "foreign") == (
        f"error: checkpoint {folder / 'step_8'} is of a different experiment (init.scheme: 'normal' -> "
        f"'scaled_output'): it was written by another run; delete {folder / 'step_8'} to fall back to "
        f"{folder / 'step_4'}, or start a new run with another --job.run_name")
    assert snapshot(faults["out"] / "own") == faults["before_foreign"]
    stamp = json.loads((folder / "step_4" / IDENTITY).read_text())
    assert stamp["init.scheme"] == "scaled_output" and stamp["job.seed"] == 0 and "optimizer.lr" not in stamp
    assert IDENTITY in json.loads((folder / "step_4" / MANIFEST).read_text())  # its bytes are checksummed too


@pytest.mark.multiprocess
def test_a_non_finite_weight_is_never_saved_and_a_saved_one_names_the_previous_checkpoint(faults):
    refused = faults["out"] / "inf_refused" / "checkpoints"
    assert stderr_line(faults, "inf_refused") == (
        "error: not saving checkpoint step_8: a weight is non-finite after the update of step 8 (first non-finite: "
        f"layers.01 attn.q weight (layers.1.attn.q.weight)); the newest complete checkpoint is {refused / 'step_4'} "
        "(unchanged); lower optimizer.lr, raise lr_scheduler.warmup_steps or pick another init")
    assert complete_steps(refused) == [4] and partial_dirs(refused) == []
    saved = faults["out"] / "inf_saved" / "checkpoints"  # written without the check, as before it existed
    assert complete_steps(saved) == [4, 8] and faults["results"]["inf_saved"]["rc"] == 1
    assert stderr_line(faults, "inf_resumed") == (
        f"error: checkpoint {saved / 'step_8'} holds non-finite weights (first: layers.01 attn.q weight "
        f"(layers.1.attn.q.weight)); delete {saved / 'step_8'} to fall back to {saved / 'step_4'}")


@pytest.mark.multiprocess
@pytest.mark.parametrize("name, problem", [("empty_manifest", "empty file"),
                                           ("list_manifest", "a JSON list, not an object")])
def test_a_damaged_checksum_manifest_is_named(faults, name, problem):
    step_12 = faults["out"] / name / "checkpoints" / "step_12"
    assert stderr_line(faults, name) == (
        f"error: checkpoint {step_12} is corrupt: {MANIFEST} ({problem}, not the file names and CRC-32s of the "
        f"save); delete {step_12} to fall back to {step_12.parent / 'step_8'} (or pass --checkpoint.verify_checksums "
        "false to load it anyway)")


# ---------------------------------------------------------------------------------- full disks
@pytest.mark.multiprocess
def test_a_save_past_the_file_size_limit_says_no_space_not_the_serializer_error(faults):
    """At 600 kB the limit falls inside the pickled part of the data file: torch's serializer then says only
    'unexpected pos 704 vs 598'; the file at the limit tells what happened."""
    tmp = faults["out"] / "save_full" / "checkpoints" / ".tmp_step_4"
    assert stderr_line(faults, "save_full") == (
        f"error: cannot write checkpoint {tmp}: no space left on {tmp}: a file reached this process's file-size "
        f"limit of 600,000 bytes (ulimit -f); {NO_SPACE_FIX}; the newest complete checkpoint is none (no complete "
        "checkpoint) (unchanged)")


@pytest.mark.multiprocess
def test_a_save_on_a_full_disk_says_no_space(faults):
    if "disk_full" not in faults["privileged"]:
        pytest.skip("mounting a tmpfs needs root")
    tmp = faults["out"] / "disk_full" / "run" / "checkpoints" / ".tmp_step_4"
    line = stderr_line(faults, "disk_full")
    assert line.startswith(f"error: cannot write checkpoint {tmp}: no space left on {tmp}: the disk is full ("), line
    assert line.endswith(f"bytes free); {NO_SPACE_FIX}; the newest complete checkpoint is none (no complete "
                         "checkpoint) (unchanged)")


@pytest.mark.multiprocess
def test_a_disk_already_full_at_launch_is_one_line(faults):
    if "full_at_launch" not in faults["privileged"]:
        pytest.skip("mounting a tmpfs needs root")
    line = stderr_line(faults, "full_at_launch")
    assert line.startswith(f"error: no space left on {faults['out'] / 'full_at_launch' / 'run'}: the disk is full ("), line
    assert line.endswith(f"bytes free); {NO_SPACE_FIX}")
    assert faults["left_on_full_disk"] == ["filler"]  # the run directory it began is gone again


@pytest.mark.multiprocess
def test_a_full_disk_at_launch_or_while_logging_is_one_line_and_keeps_what_was_written(faults):
    out = faults["out"]
    assert stderr_line(faults, "launch_full") == (
        f"error: no space left on {out / 'launch_full'}: a file reached this process's file-size limit of 50 "
        f"bytes (ulimit -f); {NO_SPACE_FIX}")
    line = stderr_line(faults, "events_full")
    events = next((out / "events_full").glob("events.out.tfevents.*"))
    assert line == (f"error: no space left on {events}: a file reached this process's file-size limit of 4,000 "
                    f"bytes (ulimit -f); {NO_SPACE_FIX}")
    lines = (out / "events_full" / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(text)["step"] for text in lines]
    assert steps == list(range(1, len(steps) + 1)) and len(steps) >= 2  # every record before the failure kept


# ------------------------------------------------------------------------------ bad output dirs
@pytest.mark.multiprocess
def test_an_output_dir_under_a_file_and_a_run_name_leaving_it_are_refused(faults):
    out = faults["out"]
    assert stderr_line(faults, "not_a_dir") == (
        f"error: {out / 'a_file' / 'out' / 'x'}: Not a directory (ENOTDIR); a part of that path is a file, not a "
        "directory: choose another --job.output_dir")
    assert stderr_line(faults, "escaping_name") == (
        "error: job.run_name = '../../escaped' does not name a directory inside job.output_dir; give a relative "
        "name without '..' (e.g. mitchell_seed0)")
    assert not (out / "escaped").exists() and not (out / "a").exists()


@pytest.mark.multiprocess
@pytest.mark.parametrize("name, meaning", [
    ("read_only", "Read-only file system (EROFS); the filesystem is mounted read-only: choose another "
                  "--job.output_dir"),
    ("immutable", "Operation not permitted (EPERM); choose a writable --job.output_dir or fix its permissions"),
])
def test_an_output_dir_that_cannot_be_written_is_one_line(faults, name, meaning):
    if name not in faults["privileged"]:
        pytest.skip("needs root (mount / chattr)")
    assert stderr_line(faults, name) == f"error: {faults['out'] / name / 'run'}: {meaning}"


# ------------------------------------------------------------------------------------- configs
@pytest.mark.multiprocess
def test_bad_config_bytes_and_an_overflowing_lr_are_one_line(faults):
    out = faults["out"]
    assert stderr_line(faults, "latin1_config") == (
        f"error: {out / 'latin1.toml'}: not UTF-8 text (byte 0xe9 at offset 24); TOML files are UTF-8: re-save it "
        "as UTF-8")
    assert stderr_line(faults, "latin1_run") == (
        f"error: cannot compare with the run's config.toml: {out / 'latin1_run' / 'config.toml'}: not UTF-8 text "
        "(byte 0xff at offset 0); TOML files are UTF-8: re-save it as UTF-8")
    assert stderr_line(faults, "huge_lr") == (
        "error: optimizer.lr = 1e+39 overflows float32 (the optimizer's arithmetic; largest 3.403e+38); give a "
        "smaller value")


@pytest.mark.parametrize("name, ok", [("", True), ("mitchell_seed0", True), ("family/seed0", True),
                                      ("../x", False), ("a/../../x", False), ("/abs", False), (".", False)])
def test_run_names_must_stay_inside_the_output_dir(name, ok):
    argv = ["--job.run_name", name, "--optimizer.lr", "3.4e38"]  # (the largest float32 lr is still accepted)
    if ok:
        assert load_config(argv)[0].job.run_name == name
    else:
        with pytest.raises(ConfigError, match="does not name a directory inside job.output_dir"):
            load_config(argv)
