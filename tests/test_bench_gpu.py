"""scripts/bench_gpu.py on CPU (--quick, the debug model): each variant in its own process, one record each,
carrying what docs/performance.md's tables need (date, torch, commit, batch split, compile, both MFUs)."""

from __future__ import annotations

import json

import pytest

from tests.launch import python

pytestmark = pytest.mark.multiprocess


def test_each_variant_is_one_record_with_its_batch_and_provenance(tmp_path):
    proc = python(["scripts/bench_gpu.py", "--quick", "--out", str(tmp_path), "--variants", "before,current"],
                  env={"INITLAB_COMMIT": "abc1234"})
    records = json.loads((tmp_path / "cpu.json").read_text())["results"]
    assert [r["variant"] for r in records] == ["before", "current"]
    for record in records:
        assert record["commit"] == "abc1234" and record["torch"] and record["date"].endswith("UTC")
        assert (record["seq_len"], record["micro_batch_sequences"], record["accumulation_steps"]) == (128, 4, 2)
        assert record["tokens_per_step"] == 128 * 4 * 2 and record["compile"] is False
        assert record["tokens_per_sec_per_device"] == pytest.approx(record["tokens_per_step"] / record["step_time_s"])
        assert set(record["flops_per_token"]) == {"non_embedding", "all_matmuls"}
        assert record["mfu"] is None and record["mfu_all_matmuls"] is None  # no peak FLOP/s on a CPU
    assert [r["reshard_after_forward"] for r in records] == [True, False]  # before: forced; current: auto on 1 rank
    assert "| initlab | debug | current | 4 x 2 |" in proc.stdout


@pytest.mark.parametrize("argv, message", [
    (["--variants", "fastest"], "unknown --variants ['fastest']"),
    (["--models", "gpt3"], "unknown --models ['gpt3']"),
    (["--steps", "0"], "--steps 0 and --warmup 5 must both be >= 1"),
])
def test_bad_arguments_are_one_line_errors_and_write_nothing(tmp_path, argv, message):
    proc = python(["scripts/bench_gpu.py", "--out", str(tmp_path / "out"), *argv], check=False)
    assert proc.returncode == 2 and message in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()
