"""benchmarks/bench_variance_stats.py on CPU (debug model): the record performance.md and variance_dynamics.md
quote, with its provenance, from a real run."""

from __future__ import annotations

import json

import pytest

from tests.launch import python

pytestmark = pytest.mark.multiprocess


def test_logging_cost_record_carries_its_provenance_and_consistent_overheads(tmp_path):
    python(["benchmarks/bench_variance_stats.py", "--model", "debug", "--compile", "off", "--steps", "3", "--warmup", "2",
            "--out", str(tmp_path)], env={"INITLAB_COMMIT": "abc1234"})
    record = json.loads((tmp_path / "variance_stats_cpu_debug.json").read_text())
    assert record["commit"] == "abc1234" and record["torch"] and record["date"].endswith("UTC")
    assert (record["model"], record["compile"], record["seq_len"]) == ("debug", False, 128)
    assert record["n_activation_statistics"] == 5 * 4 + 2  # 4 blocks x 5 statistics + the final residual + the logits
    cost, step = record["logging_call_ms"], record["plain_step_ms"]
    assert cost == pytest.approx(record["logging_step_ms"] - step)
    for log_freq, pct in record["overhead_pct_at_log_freq"].items():
        assert pct == pytest.approx(100 * cost / (int(log_freq) * step))
