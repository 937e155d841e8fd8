"""benchmarks/device_trace.py: device time per step by category from chrome traces, on planted traces with known
answers, on real CPU traces (torch.profiler's and torchtitan's own profiler, which hold no device kernels), and
run_torchtitan.py's profiling options checked against torchtitan's real schedule."""

from __future__ import annotations

import gzip
import json

import pytest
import torch

from benchmarks import device_trace
from benchmarks.device_trace import CATEGORIES, OTHER, TraceError, busy_and_gaps, category_of, read_trace, summarize
from benchmarks.torchtitan.run_torchtitan import PROFILE_FOLDER, profiling_args
from tests.launch import python, torchrun

CUBLAS = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_warpgroupsize2x1x1_execute_segment_k_off_kernel"
CUDNN_SDPA = "cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x128_4x1x1_kernel0_0"
ADAMW = "void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedAdamMathFunctor<float, 4>>"
CAST = "void at::native::elementwise_kernel<128, 4, at::native::gpu_kernel_impl_nocast<direct_copy_kernel_cuda>>"


def kernel(name, ts, dur, cat="kernel", stream=7):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "tid": stream, "pid": 0}


def planted_trace(steps=2, marks=True):
    """Two steps of known kernels (us): a matmul overlapping a copy on another stream, attention, a Triton kernel,
    AdamW, an unknown kernel, and annotation ranges that span the idle time and must not count."""
    events = [kernel(CUBLAS, 0, 400), kernel("Memcpy DtoD (Device -> Device)", 300, 200, cat="gpu_memcpy", stream=9),
              kernel(CUDNN_SDPA, 600, 100), kernel("triton_red_fused__to_copy_mean_mul_pow_rsqrt_0", 800, 50),
              kernel(ADAMW, 900, 60), kernel("mystery_kernel", 1000, 40),
              {"ph": "X", "cat": "gpu_user_annotation", "name": "## Call CompiledFxGraph ##", "ts": 0, "dur": 1040},
              {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 0, "dur": 5000}]
    if marks:
        events += [{"ph": "X", "cat": "user_annotation", "name": f"ProfilerStep#{i}", "ts": 0, "dur": 1}
                   for i in range(steps)]
    return {"traceEvents": events}


def test_categories_match_the_kernel_names_of_cublas_cudnn_triton_and_adamw():
    assert [category_of(name) for name in (CUBLAS, "nvjet_tst_128x256_64x4_2x1_v_bz_coopA_NNT", CUDNN_SDPA,
                                           "flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel", ADAMW, CAST,
                                           "triton_poi_fused__to_copy_add_0", "fused_sum", "ncclDevKernel_AllGather",
                                           "void at::native::reduce_kernel<512, 1>", "mystery")] == [
        "matmul", "matmul", "attention", "attention", "optimizer, clipping (multi-tensor)", "copies and casts",
        "compiled (Triton)", "gradient sum (one-rank kernel)", "communication", "eager reductions", OTHER]
    assert category_of("Memset (Device)", "gpu_memset") == "copies and casts"
    assert len({label for label, _ in CATEGORIES}) == len(CATEGORIES)


def test_busy_is_the_union_of_intervals_on_every_stream_and_gaps_are_measured_from_the_end_of_all_before():
    busy, window, gaps = busy_and_gaps([(0, 100, "a"), (50, 130, "b"), (180, 200, "c"), (210, 220, "d")], 20)
    assert (busy, window, gaps) == (160, 220, [(50, "c")])  # 130 + 20 + 10
    assert busy_and_gaps([], 0) == (0.0, 0.0, [])


def test_summary_per_step_by_category_with_busy_and_idle(tmp_path):
    path = tmp_path / "t.json.gz"
    with gzip.open(path, "wt") as handle:
        json.dump(planted_trace(), handle)
    times = summarize(read_trace(path), steps=2)
    assert times.by_category == {"matmul": 0.2, "copies and casts": 0.1, "attention": 0.05, "compiled (Triton)": 0.025,
                                 "optimizer, clipping (multi-tensor)": 0.03, OTHER: 0.02}
    # union: 0..500, 600..700, 800..850, 900..960, 1000..1040 = 750 us of a 1040 us window, over 2 steps
    assert (times.busy, times.window) == pytest.approx((0.375, 0.52)) and times.idle == pytest.approx(0.145)
    assert times.kernels[CUBLAS] == pytest.approx(0.2)
    assert times.long_gaps == 0.0 and times.longest_gap == 0.0  # every wait here is under 1 ms
    slow_host = planted_trace()
    slow_host["traceEvents"].append(kernel("after_a_data_wait", 3040, 10))  # 2 ms after the last kernel ended
    waited = summarize(slow_host, steps=2)
    assert (waited.long_gaps, waited.longest_gap) == pytest.approx((1.0, 2.0))  # 2 ms over 2 steps; the wait itself
    text = device_trace.table({"initlab": times, "other": summarize(planted_trace(), 2)})
    assert "| matmul | 0.2 | 0.2 | +0.0 |" in text and "| **device busy (union)** | 0.4 | 0.4 | +0.0 |" in text
    assert "| 0.20 | matmul | sm90_xmma_gemm" in text
    assert device_trace.short_name(ADAMW, 40) == ADAMW[:20] + "…" + ADAMW[-19:]  # the functor stays in view
    assert len(device_trace.short_name(ADAMW, 40)) == 40 and device_trace.short_name("mm", 40) == "mm"


def host(name, ts, dur, cat="cpu_op", tid=1):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "tid": tid, "pid": 0}


def device_only():
    """planted_trace's device events without its host op: the waits' tests plant their own host threads."""
    trace = planted_trace(marks=False)
    trace["traceEvents"] = [e for e in trace["traceEvents"] if e["cat"] != "cpu_op"]
    return trace


def test_each_long_wait_names_what_every_host_thread_was_doing_busiest_first():
    trace = device_only()  # its device events end at 1040 us
    trace["traceEvents"] += [
        kernel("first_kernel_of_next_step", 4040, 10),  # a 3 ms wait: the host synced, then loaded a batch
        kernel("after_a_short_wait", 4250, 10),  # 0.2 ms: listed, not a long wait
        host("train.py(140): run_steps", 0, 5000, cat="python_function"), host("aten::item", 1100, 900),
        host("cudaStreamSynchronize", 1150, 800, cat="cuda_runtime"), host("aten::copy_", 2600, 1300),
        host("aten::empty", 2600, 10), host("aten::pin_memory", 2700, 1000), host("aten::add", 100, 1),
        host("aten::zeros", 1500, 3000, tid=99),  # another thread (autograd's, say), fewer torch ops: listed second
        host("aten::zero_", 1500, 10, tid=99)]
    times = summarize(trace, steps=1)
    assert (times.long_gaps, times.longest_gap) == pytest.approx((3.0, 3.0))
    both = "[thread 1] train.py(140): run_steps; [thread 99] aten::zeros"
    assert times.waits[:2] == [  # middle of the 3 ms wait: 2540 us (the sync ended at 1950, the copy starts at 2600)
        (pytest.approx(3.0), "first_kernel_of_next_step", both), (pytest.approx(0.2), "after_a_short_wait", both)]
    assert [round(ms, 3) for ms, _, _ in times.waits] == [3.0, 0.2, 0.1, 0.1]  # >= 0.1 ms, longest first
    assert f"| 3.00 | first_kernel_of_next_step | {both} |" in device_trace.table({"initlab": times})
    loading = device_only()  # the host now copies a batch through the wait's middle (2540 us)
    loading["traceEvents"] += [kernel("first_kernel_of_next_step", 4040, 10),
                               host("train.py(140): run_steps", 0, 5000, cat="python_function"),
                               host("aten::copy_", 2500, 1500), host("aten::pin_memory", 2510, 1000),
                               host("aten::empty", 2510, 10), host("cudaStreamSynchronize", 1150, 800, cat="cuda_runtime")]
    chain = summarize(loading, steps=1).waits[0][2]
    assert chain == "[thread 1] train.py(140): run_steps > aten::copy_ > aten::pin_memory"
    deep = device_only()
    deep["traceEvents"] += [kernel("next", 3040, 10)] + [host(f"f{i}", i, 5000 - 2 * i) for i in range(8)]
    assert summarize(deep, steps=1).waits[0][2] == "[thread 1] … > f2 > f3 > f4 > f5 > f6 > f7"  # the 6 innermost
    idle_host = device_only()  # no host thread ran a recorded op at the wait's middle (2540 us)
    idle_host["traceEvents"] += [kernel("next", 4040, 10), host("aten::item", 1100, 900), host("aten::empty", 3800, 5),
                                 host("aten::zeros", 3700, 50, tid=99)]
    assert summarize(idle_host, steps=1).waits[0][2] == ("no recorded op, after aten::item (0.54 ms), "
                                                         "before aten::zeros (1.16 ms)")
    bare = device_only()
    bare["traceEvents"] += [kernel("next", 3040, 10)]
    assert summarize(bare, steps=1).waits[0][2] == "?"  # no host events in the trace


def test_a_step_count_that_disagrees_with_the_traces_own_step_marks_is_refused():
    with pytest.raises(TraceError, match=r"marks 2 profiled steps \(ProfilerStep#\), not 3; fix: pass x:2"):
        summarize(planted_trace(steps=2), steps=3, source="x")
    assert summarize(planted_trace(marks=False), steps=3).busy == pytest.approx(0.25)  # unmarked: taken as given


def test_a_cpu_only_profile_is_refused_in_one_line(tmp_path):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        torch.ones(64, 64) @ torch.ones(64, 64)
    prof.export_chrome_trace(str(tmp_path / "cpu.json"))
    with pytest.raises(TraceError, match="no device kernels, copies or sets in the trace"):
        summarize(read_trace(tmp_path / "cpu.json"), steps=1)


@pytest.mark.parametrize("argv, message", [
    (["--trace", "a=missing.json:3"], "missing.json: no such trace file"),
    (["--trace", "a=t.json"], "expected LABEL=PATH:STEPS"),
    (["--trace", "a=t.json:0"], "expected LABEL=PATH:STEPS with STEPS >= 1"),
    (["--trace", "a=t.json:2", "--trace", "a=t.json:2"], "label 'a' given twice"),
    (["--trace", "a=bad.json:2"], "bad.json: not a chrome trace"),
    (["--trace", "a=t.json:2", "--out", "t.json"], "--out t.json already exists"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "t.json").write_text(json.dumps(planted_trace()))
    (tmp_path / "bad.json").write_text("{not json")
    assert device_trace.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_the_cli_writes_the_table(tmp_path):
    (tmp_path / "t.json").write_text(json.dumps(planted_trace()))
    proc = python(["benchmarks/device_trace.py", "--trace", f"a={tmp_path / 't.json'}:2", "--out",
                   str(tmp_path / "out.md")])
    assert (tmp_path / "out.md").read_text() == proc.stdout and "| matmul | 0.2 |" in proc.stdout


@pytest.mark.multiprocess
def test_run_torchtitans_profiling_options_profile_exactly_the_steps_after_the_timed_ones(tmp_path):
    """torchtitan's own profiler on a CPU (tests/torchtitan_cpu_trainer.py) with profiling_args(2, 2): 5 steps, the
    trace written when step 5 ends, marking 2 profiled steps; a CPU trace has no kernels, so the summary refuses it."""
    from components.config import Data, Tokenizer
    from components.data import ensure_dataset
    from components.tokenizer import build_tokenizer

    token_dir = ensure_dataset(Data(dataset="embedded", cache_dir=str(tmp_path / "cache"), val_fraction=0.0),
                               build_tokenizer(Tokenizer(max_vocab=4096)), max_bytes=100_000)
    total, options = profiling_args(steps=2, profile_steps=2)
    assert total == 5 and profiling_args(7, 0) == (7, [])
    torchrun(["tests/torchtitan_cpu_trainer.py", "--job.config_file", "benchmarks/torchtitan/compare_torchtitan.toml",
              "--job.dump_folder", str(tmp_path / "tt"), "--model.flavor", "initlab_debug", "--initlab.dataset",
              str(token_dir), "--training.steps", str(total), "--training.seq_len", "32",
              "--training.local_batch_size", "2", "--training.global_batch_size", "2", "--metrics.log_freq", "1",
              "--training.mixed_precision_param", "float32", "--optimizer.implementation", "foreach", *options],
             nproc=1, timeout=300)
    traces = sorted((tmp_path / "tt" / PROFILE_FOLDER).glob("iteration_*/rank0_trace.json"))
    assert [t.parent.name for t in traces] == ["iteration_5"]
    trace = read_trace(traces[0])
    with pytest.raises(TraceError, match="marks 2 profiled steps"):
        summarize(trace, steps=3)
    with pytest.raises(TraceError, match="no device kernels"):
        summarize(trace, steps=2)
