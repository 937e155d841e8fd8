"""benchmarks/bench_checkpoint.py: a save's cost against a run without saves, from logged throughput (arithmetic on
planted records) and through real train.py runs of the debug model on CPU."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench_checkpoint
from components.run_dir import read_metrics
from tests.launch import python

TOKENS = 1000  # tokens per step


def rows(rates: dict[int, float], blocked: dict[int, float] | None = None) -> list[dict]:
    """metrics.jsonl records: a logged tokens/s at each step of ``rates``, blocked seconds where given."""
    return [{"step": step, bench_checkpoint.THROUGHPUT_KEY: rate, **({"checkpoint/blocked_s": blocked[step]}
                                                                 if blocked and step in blocked else {})}
            for step, rate in rates.items()]


def test_a_save_costs_its_block_plus_the_slower_steps_until_the_next():
    # 60 steps logged every 10, a save every 20: steps take 1 s without saves; after the save at step 20 training
    # blocks 1.5 s (logged at step 30) and steps 21-30 run at 800 tokens/s (1.25 s each) while it writes.
    base = rows({step: 1000.0 for step in range(10, 61, 10)})
    rates = {step: 1000.0 for step in range(10, 61, 10)} | {30: 800.0}
    saved = rows(rates, blocked={30: 1.5, 50: 0.5})
    costs = bench_checkpoint.save_costs(saved, base, TOKENS, interval=20, steps=60)
    assert [c["step"] for c in costs] == [20, 40]
    first, second = costs
    assert (first["blocked_s"], first["slowdown_s"], first["cost_s"]) == (1.5, 2.5, 4.0)  # 10 steps x 0.25 s
    assert first["steps_s_without_saves"] == 20.0 and first["share_of_interval"] == 0.2
    assert first["share_of_200_steps"] == 0.02  # 4 s of 200 steps of 1 s
    assert (second["blocked_s"], second["slowdown_s"], second["cost_s"]) == (0.5, 0.0, 0.5)
    with pytest.raises(ValueError, match="the save at step 20: .*give --log-freq dividing --interval"):
        bench_checkpoint.save_costs(rows(rates), base, TOKENS, interval=20, steps=60)  # no blocked_s logged
    cut = [r for r in base if r["step"] <= 40]  # the run without saves stopped at step 40 (a call cut off)
    first_only = bench_checkpoint.save_costs(saved, cut, TOKENS, interval=20, steps=60)
    assert first_only[0] == first and first_only[1] == {
        "step": 40, "not_measured": "no_save logged up to step 40 of 60"}  # said, not averaged in
    both_cut = bench_checkpoint.save_costs([r for r in saved if r["step"] <= 50], cut, TOKENS, interval=20, steps=60)
    assert both_cut[1]["not_measured"] == ("the saving run logged up to step 50 of 60; "
                                          "no_save logged up to step 40 of 60")
    assert "| x | 40 | not measured: no_save logged up to step 40 of 60 |" in bench_checkpoint.tables(
        {"x": {"blocked_s_per_save": [1.5], "median_tokens_per_sec": 1000.0, "mfu": None, "save_costs": first_only}})


@pytest.mark.multiprocess
def test_real_runs_give_each_save_its_cost_against_the_run_without_saves(tmp_path):
    out = tmp_path / "bench"
    proc = python(["benchmarks/bench_checkpoint.py", "--config", "train_configs/debug.toml", "--steps", "6",
                   "--interval", "2", "--log-freq", "1", "--variants", "async_save,no_save", "--out", str(out),
                   "--model.n_layers", "1", "--training.seq_len", "32"], env={"OMP_NUM_THREADS": "1"})
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"async_save", "no_save"} and "save_costs" not in summary["no_save"]
    costs = summary["async_save"]["save_costs"]
    assert [c["step"] for c in costs] == [2, 4]
    saved = bench_checkpoint.step_seconds(read_metrics(out / "async_save" / "metrics.jsonl"), 16 * 32)
    base = bench_checkpoint.step_seconds(read_metrics(out / "no_save" / "metrics.jsonl"), 16 * 32)
    for cost in costs:
        window = [cost["step"] + 1, cost["step"] + 2]
        assert cost["slowdown_s"] == pytest.approx(sum(saved[s] - base[s] for s in window), abs=2e-3)
        assert cost["cost_s"] == pytest.approx(cost["blocked_s"] + cost["slowdown_s"], abs=2e-3) and cost["blocked_s"] > 0
    assert "| async_save | 2 |" in proc.stdout and "share of a 200-step interval" in proc.stdout
    # --from-runs reads the same directories back (interval and steps from the saving run's config) ...
    again = python(["benchmarks/bench_checkpoint.py", "--from-runs", "--out", str(out), "--variants",
                    "async_save,no_save"])
    assert json.loads((out / "summary_from_runs.json").read_text())["async_save"]["save_costs"] == costs
    assert "unfinished" not in again.stdout
    # ... and, with the run without saves cut off after step 5 (killed: no finished.json), measures only the saves
    # whose steps up to the next save both runs logged, and names the unfinished run
    records = (out / "no_save" / "metrics.jsonl").read_text().splitlines()
    (out / "no_save" / "metrics.jsonl").write_text("\n".join(line for line in records
                                                             if json.loads(line)["step"] <= 5) + "\n")
    (out / "no_save" / "finished.json").unlink()
    cut = python(["benchmarks/bench_checkpoint.py", "--from-runs", "--out", str(out), "--variants",
                  "async_save,no_save"])
    summary = json.loads((out / "summary_from_runs.json").read_text())
    assert summary["async_save"]["save_costs"] == [costs[0], {"step": 4, "not_measured":
                                                              "no_save logged up to step 5 of 6"}]
    assert summary["no_save"]["finished"] is False and "unfinished runs: no_save (step 5 of 6)" in cut.stdout
    missing = python(["benchmarks/bench_checkpoint.py", "--from-runs", "--out", str(tmp_path / "none")], check=False)
    assert missing.returncode == 2 and missing.stderr.strip().startswith("error: --from-runs: no run directory")


@pytest.mark.parametrize(("argv", "message"), [
    (["--variants", "async_save,fast"], "error: --variants: unknown 'fast'; choose from sync_save, async_save, "),
    (["--interval", "4", "--log-freq", "3"], "error: --interval 4 --log-freq 3 --steps 30: the log frequency must "
                                              "divide the interval, which must be below the steps"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, argv, message):
    with pytest.raises(SystemExit) as stop:
        bench_checkpoint.main(["--config", "train_configs/debug.toml", "--out", str(tmp_path / "o"), *argv])
    assert stop.value.code == 2 and capsys.readouterr().err.startswith(message)
    assert not (tmp_path / "o").exists()


def test_a_run_without_config_or_a_summary_without_runs_is_one_line_and_exit_2(tmp_path, capsys):
    assert bench_checkpoint.main(["--out", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip() == "error: --config is required (the train.py config of the model to measure)"
    assert bench_checkpoint.main(["--from-runs", "--out", str(tmp_path), "--variants", "async_save,no_save"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --from-runs: no run directory {tmp_path / 'async_save'}")
    assert list(tmp_path.iterdir()) == []  # nothing written
