"""benchmarks/bench_sweep.py: fresh launches against one sweep, and time to first step cold/warm, on CPU (--quick)."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_sweep
from benchmarks.bench_common import git_commit
from tests.launch import python


@pytest.mark.multiprocess
def test_quick_run_writes_one_record_with_every_launch(tmp_path):
    out, work = tmp_path / "record.json", tmp_path / "work"
    data_cache = tmp_path / "data_cache"  # empty: the embedded corpus must be built, before any timed launch
    python(["benchmarks/bench_sweep.py", "--quick", "--n", "1", "--parallel", "1", "--workdir", str(work),
            "--output", str(out), "--data.cache_dir", str(data_cache)], env={"OMP_NUM_THREADS": "1"})
    record = json.loads(out.read_text())
    assert list(data_cache.glob("*/embedded-*/manifest.json"))
    for log in (work / "fresh" / "logs" / "seed0.log", *(work / "sweep" / ".sweep" / "logs").glob("*.log")):
        assert "tokenizing the embedded corpus" not in log.read_text(), log
    assert (record["n"], record["parallel"], record["steps"], record["device"]) == (1, 1, 2, "cpu")
    assert record["commit"] == git_commit() and record["torch"] and record["date"].endswith("+00:00")
    assert record["speedup"] == round(record["fresh"]["total_s"] / record["sweep"]["total_s"], 3)
    for mode in ("fresh", "sweep"):
        (run,) = record[mode]["runs"]
        assert run["name"] == "seed0"
        assert 0 < run["first_step_s"] <= run["loop_s"] < run["launch_s"] <= record[mode]["total_s"] + 0.5
        assert run["ttfs_s"] == pytest.approx(run["launch_s"] - run["loop_s"] + run["first_step_s"], abs=0.02)
    # cold: the fresh launch itself; warm: a 2-step relaunch of it on the compiler cache it populated
    assert set(record["ttfs"]) == {"debug"}
    ttfs = record["ttfs"]["debug"]
    assert ttfs["runs"]["cold"] == record["fresh"]["runs"][0] and ttfs["cold_s"] == ttfs["runs"]["cold"]["ttfs_s"]
    assert ttfs["runs"]["warm"]["name"] == "seed0_warm" and ttfs["warm_s"] == ttfs["runs"]["warm"]["ttfs_s"] > 0
    assert (work / "fresh" / "cache" / "seed0").is_dir()  # kept for the warm relaunch
    # the sweep ran its point through the sweep runner (summary)
    assert json.loads((work / "sweep" / ".sweep" / "summary.json").read_text())[0]["status"] == "done"
    assert (work / "fresh" / "seed0" / "finished.json").is_file()


@pytest.mark.parametrize(("argv", "message"), [
    (["--quick", "--n", "0"], "error: --n 0 --parallel 2 --prestart 0: --n and --parallel must be >= 1, --prestart >= 0"),
    (["--quick", "--prestart", "-1"],
     "error: --n 2 --parallel 2 --prestart -1: --n and --parallel must be >= 1, --prestart >= 0"),
    (["--quick", "--n", "3"], "error: --n 3: the sweep has only 2 points; give --n 2 or less"),
    (["--quick", "--skip", "1", "--n", "2"], "error: --n 2: the sweep has only 2 points; give --n 1 (with --skip 1) or less"),
    (["--quick", "--skip", "-1"], "error: --skip -1: must be >= 0 (points of the sweep to leave out before the N measured)"),
    (["--sweep-file", "nope.toml"], "error: --sweep-file nope.toml: no such file; give a sweep TOML (components/sweep.py)"),
    (["--quick", "--ttfs-models", "llama_7b"], "error: --ttfs-models: unknown model 'llama_7b'; choose from "
                                                "gpt2_124m, llama_1b, debug"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    assert bench_sweep.main([*argv, "--workdir", str(tmp_path / "work")]) == 2
    assert capsys.readouterr().err.strip() == message
    assert not (tmp_path / "work").exists()  # nothing launched


@pytest.mark.multiprocess
def test_parts_measured_apart_combine_into_one_record_and_mismatched_parts_are_refused(tmp_path, monkeypatch, capsys):
    """A measurement split over calls: point 1 and point 2 launched fresh in two parts, both through the sweep in a
    third; --combine joins them. Planted defects: a missing point, a point twice, parts of another step count."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    parts = {name: tmp_path / f"{name}.json" for name in ("fresh1", "fresh2", "sweep")}
    for name, argv in (("fresh1", ["--mode", "fresh", "--n", "1"]), ("fresh2", ["--mode", "fresh", "--skip", "1", "--n", "1"]),
                       ("sweep", ["--mode", "sweep", "--n", "2", "--ttfs-models", "debug"])):
        assert bench_sweep.main(["--quick", *argv, "--workdir", str(tmp_path / name), "--output", str(parts[name])]) == 0
    records = {name: json.loads(path.read_text()) for name, path in parts.items()}
    assert [r["name"] for r in records["fresh1"]["fresh"]["runs"]] == ["seed0"] and "sweep" not in records["fresh1"]
    assert [r["name"] for r in records["fresh2"]["fresh"]["runs"]] == ["seed1"] and records["fresh2"]["skip"] == 1
    assert [r["name"] for r in records["sweep"]["sweep"]["runs"]] == ["seed0", "seed1"] and "fresh" not in records["sweep"]
    assert "speedup" not in records["sweep"] and "ttfs" not in records["fresh2"]  # --skip 1: no cold launch of its own
    # Time to first step in parts: the model's cold/warm pair from the fresh part that launched point 1 (its cold
    # launch, relaunched on its cache) and --ttfs-models' pair from the part that names it (here a run of 2 steps
    # of the debug speed point, bench_common.py, twice on one cache)
    assert set(records["fresh1"]["ttfs"]) == {"debug"} and set(records["sweep"]["ttfs"]) == {"debug"}
    assert records["fresh1"]["ttfs"]["debug"]["runs"]["cold"] == records["fresh1"]["fresh"]["runs"][0]
    assert records["fresh1"]["ttfs"]["debug"]["runs"]["warm"]["name"] == "seed0_warm"
    assert records["sweep"]["ttfs"]["debug"]["runs"]["warm"]["name"] == "debug_warm"
    # the sweep part without its pair (the quick runs' two pairs are of one model, the debug one)
    sweep_only = tmp_path / "sweep_no_ttfs.json"
    sweep_only.write_text(json.dumps({k: v for k, v in records["sweep"].items() if k != "ttfs"}))
    combined_path = tmp_path / "combined.json"
    capsys.readouterr()
    fresh1, fresh2, swept = map(str, parts.values())
    assert bench_sweep.main(["--combine", fresh1, fresh2, str(sweep_only), "--output", str(combined_path)]) == 0
    combined = json.loads(combined_path.read_text())
    assert combined["ttfs"] == records["fresh1"]["ttfs"]  # carried over as measured
    fresh_total = records["fresh1"]["fresh"]["total_s"] + records["fresh2"]["fresh"]["total_s"]
    assert combined["fresh"]["total_s"] == pytest.approx(fresh_total, abs=0.01) and combined["n"] == 2
    assert combined["speedup"] == round(combined["fresh"]["total_s"] / records["sweep"]["sweep"]["total_s"], 3)
    assert combined["mode"] == "combined" and combined["commit"] == git_commit() and combined["steps"] == 2
    err = capsys.readouterr().err
    assert "speed-up" in err and "time to first step, debug: cold " in err
    loops = sum(run["loop_s"] for run in combined["fresh"]["runs"]) / combined["fresh"]["total_s"]
    assert f"fresh: 2 launches in {combined['fresh']['total_s']:.1f} s; per launch, means: launch to exit " in err
    assert f"runs in their loops on average {loops:.2f}" in err
    # planted: the same model's pair in two parts
    assert bench_sweep.main(["--combine", fresh1, fresh2, swept]) == 2
    assert f"time to first step of debug is in both {fresh1} and {swept}" in capsys.readouterr().err
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**records["fresh2"], "steps": 3}))
    for argv, message in (([fresh1, swept], "seed1 is not launched"), ([fresh1, fresh1, fresh2, swept], "seed0 is launched twice"),
                          ([fresh1, str(other), swept], "the parts differ in steps (2, 3)"),
                          ([fresh1, fresh2], "0 sweep parts among 2 files; give exactly one")):
        assert bench_sweep.main(["--combine", *argv]) == 2
        assert message in capsys.readouterr().err
