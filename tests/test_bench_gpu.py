"""benchmarks/bench_gpu.py on CPU (--quick, the debug model): each variant in its own process, one record each,
carrying what docs/performance.md's tables need (date, torch, commit, batch split, compile, both MFUs)."""

from __future__ import annotations

import json

import pytest

from benchmarks.device_trace import read_trace
from tests.launch import python

pytestmark = pytest.mark.multiprocess


def test_each_variant_is_one_record_with_its_batch_and_provenance(tmp_path):
    proc = python(["benchmarks/bench_gpu.py", "--quick", "--out", str(tmp_path), "--variants", "before,current",
                   "--profile", "current", "--trace-dir", str(tmp_path / "traces")], env={"INITLAB_COMMIT": "abc1234"})
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
    # the profiled variant's summary and chrome trace (CPU ops only here: device_trace.py refuses it as CPU-only)
    assert (tmp_path / "profiles" / "profile_debug_current.txt").read_text().startswith("debug_current: wall ")
    trace = read_trace(tmp_path / "traces" / "trace_debug_current.json.gz")
    assert any(event.get("cat") == "cpu_op" for event in trace["traceEvents"])
    assert sorted(path.name for path in (tmp_path / "traces").iterdir()) == ["trace_debug_current.json.gz"]


@pytest.mark.parametrize("argv, message", [
    (["--variants", "fastest"], "unknown --variants ['fastest']"),
    (["--models", "gpt3"], "unknown --models ['gpt3']"),
    (["--steps", "0"], "--steps 0 and --warmup 5 must both be >= 1"),
])
def test_bad_arguments_are_one_line_errors_and_write_nothing(tmp_path, argv, message):
    proc = python(["benchmarks/bench_gpu.py", "--out", str(tmp_path / "out"), *argv], check=False)
    assert proc.returncode == 2 and message in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_idle_gap_report_finds_the_waits_between_overlapping_kernels_and_names_their_launchers():
    """Kernels on two streams overlap (their union is the busy time); gaps are measured from the end of
    everything before, and each names the host ops that launched the kernel after it."""
    from types import SimpleNamespace

    from torch.autograd import DeviceType

    from benchmarks.bench_gpu import idle_gap_report

    def op(id_, name, parent=None):
        return SimpleNamespace(id=id_, name=name, cpu_parent=parent, device_type=DeviceType.CPU)

    def kernel(name, start, end, launched_by, annotation=False):
        return SimpleNamespace(name=name, time_range=SimpleNamespace(start=start, end=end), is_user_annotation=annotation,
                               linked_correlation_id=launched_by, device_type=DeviceType.CUDA)

    step = op(1, "train_step")
    fsdp = op(2, "FSDP::pre_forward", step)
    cast = op(3, "aten::_to_copy", fsdp)
    events = [step, fsdp, cast, op(4, "aten::mm"),
              kernel("mm_a", 0, 100, 4), kernel("copy_b", 50, 130, 4),  # overlapping: busy 0..130
              kernel("cast_c", 180, 200, 3),                              # 50 us gap, launched under FSDP
              kernel("tiny_d", 210, 220, 4),                              # 10 us: below min_us
              kernel("## Call CompiledFxGraph", 0, 220, 4, annotation=True)]  # spans the gaps: not a kernel
    report = idle_gap_report(events, steps=2, min_us=20)
    # busy 130 + 20 + 10 = 160 us of a 220 us window over 2 steps
    assert report.splitlines()[0].startswith("device busy 0.08 ms/step, idle 0.03 of 0.11 (1 gaps >= 20 us: 0.03")
    assert "| 50 | cast_c | train_step > FSDP::pre_forward > aten::_to_copy |" in report
    assert "tiny_d" not in report
    assert idle_gap_report([step], steps=1) == "no device events"
