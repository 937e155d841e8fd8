"""Where a GPU step's device time goes, read from chrome traces (``torch.profiler``'s ``export_chrome_trace``), so that
two trainers profiled on the same GPU are put side by side with one set of rules.

    python benchmarks/device_trace.py --trace initlab=trace_a.json:3 --trace torchtitan=rank0_trace.json:3 \
        [--out device_time.md] [--top 15]

Each ``LABEL=PATH:STEPS`` is a trace (``.json`` or ``.json.gz``) holding ``STEPS`` profiled optimizer steps; where the
trace marks its steps (``ProfilerStep#N``, torch.profiler's schedule, as torchtitan's profiler uses) their count must
equal ``STEPS``. Of each trace only the device's kernels, copies and sets are read (every stream; annotation ranges
such as a compiled graph's span the idle time between its kernels and are left out). Each is put into the first
``CATEGORIES`` entry whose pattern its name matches and summed per step; the busy time is the union of their
intervals (:func:`busy_and_gaps`, which ``bench_gpu.py``'s idle-gap report uses too), the idle time the rest of the
window from the first kernel's start to the last one's end, of which the waits of 1 ms or more (the host busy with
something other than launching kernels: data, Python, a sync) are shown apart, with the longest, and for the longest
few what each host thread was doing at the middle of the wait (its ops, runtime calls and Python frames that
span that instant, innermost last). Prints (and with ``--out`` writes) one markdown table, a row per category
and a column per trace in ms per step, then each trace's longest waits and longest kernels. Exit 2 with one line on
bad input (a missing file, a trace without device events, a step count that disagrees with the trace).
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

# (category, pattern on the kernel's name or the event's category), the first match wins. Kernel names: cuBLAS
# (sm90_xmma_gemm_*, nvjet_*, cutlass_*), cuDNN's and FlashAttention's attention (cudnn_generated_fort_native_sdpa_*,
# flash_fwd_*, fmha_*), Triton kernels of torch.compile (triton_*), PyTorch's fused AdamW (a multi_tensor_apply
# kernel over FusedAdamMathFunctor; the gradient clipping's foreach kernels too), initlab's one-rank gradient
# sum (distributed/one_rank.py: fused_sum), PyTorch's eager copies and casts, elementwise and reduction kernels.
CATEGORIES = (
    ("attention", r"sdpa|flash|fmha|attention"),
    ("matmul", r"gemm|nvjet|xmma|cutlass|cublas|splitKreduce"),
    ("optimizer, clipping (multi-tensor)", r"adam|multi_tensor_apply"),
    ("gradient sum (one-rank kernel)", r"^fused_sum"),
    ("compiled (Triton)", r"^triton_"),
    ("copies and casts", r"^(gpu_memcpy|gpu_memset)$|memcpy|memset|copy|CatArrayBatched|chunk_cat"),
    ("communication", r"nccl"),
    ("eager elementwise", r"elementwise"),
    ("eager reductions", r"reduce"),
)
OTHER = "other"
DEVICE_EVENT_CATEGORIES = {"kernel", "gpu_memcpy", "gpu_memset"}
LONG_GAP_US = 1000.0  # a device wait this long is the host doing something else, not kernel-launch latency
STEP_MARK = re.compile(r"^ProfilerStep#\d+$")
# Host-side events: torch ops, annotations, CUDA runtime/driver calls and (with_stack) Python frames.
HOST_EVENT_CATEGORIES = {"cpu_op", "user_annotation", "cuda_runtime", "cuda_driver", "python_function"}
SHOWN_WAIT_US = 100.0  # waits this long or longer are candidates for the list of longest waits
WAITS_SHOWN = 8  # longest waits listed per trace with the host's call chain
CHAIN_DEPTH = 6  # innermost host events shown per wait


class TraceError(ValueError):
    """A trace that cannot be summarized; the message names the file and a fix."""


def category_of(name: str, event_category: str = "kernel") -> str:
    """The first ``CATEGORIES`` entry matching the kernel's name (copies and sets also by their event category)."""
    for label, pattern in CATEGORIES:
        if re.search(pattern, name, re.IGNORECASE) or re.search(pattern, event_category):
            return label
    return OTHER


def busy_and_gaps(intervals: list[tuple[float, float, object]], min_gap: float) -> tuple[float, float, list]:
    """(busy, window, gaps) of intervals ``(start, end, payload)`` on any number of streams: busy is the length of
    their union, window the span from the first start to the last end, gaps ``(length, payload)`` each wait of at
    least ``min_gap`` before an interval, measured from the end of everything that started before it."""
    ordered = sorted(intervals, key=lambda item: item[0])
    if not ordered:
        return 0.0, 0.0, []
    busy, gaps, busy_end = 0.0, [], ordered[0][0]
    for start, end, payload in ordered:
        if start - busy_end >= min_gap:
            gaps.append((start - busy_end, payload))
        busy += max(0.0, end - max(start, busy_end))
        busy_end = max(busy_end, end)
    return busy, busy_end - ordered[0][0], gaps


@dataclass
class DeviceTime:
    """One trace's device time per step (ms): by category, busy, idle and window; kernel name -> ms per step."""

    steps: int
    by_category: dict[str, float] = field(default_factory=dict)
    busy: float = 0.0
    window: float = 0.0
    long_gaps: float = 0.0  # idle in waits of at least LONG_GAP_US: the host busy elsewhere (data, Python, a sync)
    longest_gap: float = 0.0
    kernels: dict[str, float] = field(default_factory=dict)
    waits: list[tuple[float, str, str]] = field(default_factory=list)  # (ms, next kernel, host chain), longest first

    @property
    def idle(self) -> float:
        return self.window - self.busy


def read_trace(path: Path) -> dict:
    """The chrome trace at ``path`` (json, or gzip'd json when the name ends in .gz)."""
    if not path.is_file():
        raise TraceError(f"{path}: no such trace file; fix: pass the path export_chrome_trace wrote")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise TraceError(f"{path}: not a chrome trace ({err}); fix: pass a file export_chrome_trace wrote") from None


def summarize(trace: dict, steps: int, source: str = "trace") -> DeviceTime:
    """Device time per step of a trace holding ``steps`` optimizer steps."""
    events = [e for e in trace.get("traceEvents", []) if isinstance(e, dict) and e.get("ph") == "X"]
    marks = sum(1 for e in events if STEP_MARK.match(str(e.get("name", ""))) and e.get("cat") == "user_annotation")
    if marks and marks != steps:
        raise TraceError(f"{source}: the trace marks {marks} profiled steps (ProfilerStep#), not {steps}; "
                         f"fix: pass {source}:{marks}")
    device = [e for e in events if e.get("cat") in DEVICE_EVENT_CATEGORIES and "dur" in e and "ts" in e]
    if not device:
        raise TraceError(f"{source}: no device kernels, copies or sets in the trace (a CPU-only profile?); fix: "
                         "profile with ProfilerActivity.CUDA on a GPU")
    result = DeviceTime(steps)
    by_category: dict[str, float] = defaultdict(float)
    kernels: dict[str, float] = defaultdict(float)
    for event in device:
        ms = float(event["dur"]) / 1e3 / steps
        by_category[category_of(str(event["name"]), str(event["cat"]))] += ms
        kernels[str(event["name"])] += ms
    busy, window, waits = busy_and_gaps([(float(e["ts"]), float(e["ts"]) + float(e["dur"]), e) for e in device],
                                        SHOWN_WAIT_US)
    result.waits = host_during_waits(events, waits)
    gaps = [(gap, after) for gap, after in waits if gap >= LONG_GAP_US]
    result.long_gaps = sum(gap for gap, _ in gaps) / 1e3 / steps
    result.longest_gap = max((gap for gap, _ in gaps), default=0.0) / 1e3
    result.by_category, result.kernels = dict(by_category), dict(kernels)
    result.busy, result.window = busy / 1e3 / steps, window / 1e3 / steps
    return result


def host_during_waits(events: list[dict], gaps: list[tuple[float, dict]], shown: int = WAITS_SHOWN) -> list:
    """The ``shown`` longest ``gaps`` (length us, the device event after it) as (ms, that event's name, what the host
    did): on every host thread, the events that span the wait's middle, outermost first, ``CHAIN_DEPTH`` innermost
    kept, as ``[thread T] a > b``, threads with more torch ops first (the Python thread and, on a GPU, autograd's
    device thread both launch kernels); where none spans it, :func:`between_ops` over all host events."""
    host = [e for e in events if e.get("cat") in HOST_EVENT_CATEGORIES and "dur" in e and "ts" in e]
    threads: dict[tuple, list[dict]] = defaultdict(list)
    for event in sorted(host, key=lambda e: (float(e["ts"]), -float(e["dur"]))):
        threads[(event.get("pid"), event.get("tid"))].append(event)
    order = sorted(threads, key=lambda t: -sum(e.get("cat") == "cpu_op" for e in threads[t]))
    waits = []
    for gap, after in sorted(gaps, key=lambda item: -item[0])[:shown]:
        middle = float(after["ts"]) - gap / 2
        chains = []
        for thread in order:
            chain = [str(e["name"]) for e in threads[thread]
                     if float(e["ts"]) <= middle <= float(e["ts"]) + float(e["dur"])]
            if chain:
                chains.append(f"[thread {thread[1]}] " + ("… > " if len(chain) > CHAIN_DEPTH else "")
                              + " > ".join(chain[-CHAIN_DEPTH:]))
        text = "; ".join(chains) if chains else between_ops(sorted(host, key=lambda e: float(e["ts"])), middle)
        waits.append((gap / 1e3, str(after["name"]), text))
    return waits


def between_ops(main: list[dict], instant: float) -> str:
    """Where no host event spans ``instant``: the host event that ended last before it and the next to start after
    it, with their distances in ms (the host ran code the profiler does not record); "?" without host events."""
    before = max((e for e in main if float(e["ts"]) + float(e["dur"]) < instant),
                 key=lambda e: float(e["ts"]) + float(e["dur"]), default=None)
    after = min((e for e in main if float(e["ts"]) > instant), key=lambda e: float(e["ts"]), default=None)
    if before is None and after is None:
        return "?"
    parts = ["no recorded op"]
    if before is not None:
        parts.append(f"after {before['name']} ({(instant - float(before['ts']) - float(before['dur'])) / 1e3:.2f} ms)")
    if after is not None:
        parts.append(f"before {after['name']} ({(float(after['ts']) - instant) / 1e3:.2f} ms)")
    return ", ".join(parts)


def table(times: dict[str, DeviceTime], top: int = 15) -> str:
    """Markdown: ms per step by category for every trace (the difference column when there are two), then each
    trace's ``top`` kernels by time. Kernel time on several streams at once counts in every row it falls in, so
    the category rows can add up to more than the busy time."""
    labels = list(times)
    pair = len(labels) == 2
    head = "| ms per step | " + " | ".join(labels) + (f" | {labels[1]} − {labels[0]} |" if pair else " |")
    lines = [head, "|---" * (len(labels) + 1 + pair) + "|"]
    rows = [label for label, _ in CATEGORIES] + [OTHER]

    def row(name: str, values: list[float]) -> str:
        cells = " | ".join(f"{v:.1f}" for v in values)
        return f"| {name} | {cells}" + (f" | {values[1] - values[0]:+.1f} |" if pair else " |")

    for name in rows:
        values = [times[label].by_category.get(name, 0.0) for label in labels]
        if any(values):
            lines.append(row(name, values))
    for name, attr in (("device busy (union)", "busy"), ("device idle", "idle"),
                       (f"idle in waits of {LONG_GAP_US / 1e3:g} ms or more", "long_gaps"),
                       ("longest wait (ms, not per step)", "longest_gap"), ("window", "window")):
        lines.append(row(f"**{name}**", [getattr(times[label], attr) for label in labels]))
    for label in labels:
        if times[label].waits:
            lines += ["", f"{label}: the longest waits of the device, and each host thread's call chain at each one's "
                      "middle (innermost last)", "", "| wait ms | next device event | host |", "|---|---|---|"]
            lines += [f"| {ms:.2f} | {short_name(name, 60)} | {chain} |" for ms, name, chain in times[label].waits]
        lines += ["", f"{label}: the {top} longest kernels ({times[label].steps} steps profiled)", "",
                  "| ms per step | category | kernel |", "|---|---|---|"]
        longest = sorted(times[label].kernels.items(), key=lambda item: -item[1])[:top]
        lines += [f"| {ms:.2f} | {category_of(name)} | {short_name(name)} |" for name, ms in longest]
    return "\n".join(lines)


def short_name(name: str, width: int = 100) -> str:
    """A kernel's name cut to ``width`` characters in the middle, where a C++ template's boilerplate is: its start
    and its end (the functor or the tile shape) both stay."""
    if len(name) <= width:
        return name
    head = width // 2
    return f"{name[:head]}…{name[-(width - head - 1):]}"


def parse_trace_arg(text: str) -> tuple[str, Path, int]:
    """``LABEL=PATH:STEPS`` -> (label, path, steps)."""
    match = re.fullmatch(r"([^=]+)=(.+):(\d+)", text)
    if match is None or int(match.group(3)) < 1:
        raise TraceError(f"--trace {text!r}: expected LABEL=PATH:STEPS with STEPS >= 1, e.g. initlab=trace.json:3")
    return match.group(1), Path(match.group(2)), int(match.group(3))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trace", action="append", required=True, help="LABEL=PATH:STEPS (repeat for each trace)")
    parser.add_argument("--out", type=Path, help="also write the table here (must not exist)")
    parser.add_argument("--top", type=int, default=15, help="longest kernels listed per trace (default 15)")
    args = parser.parse_args(argv)
    try:
        if args.out is not None and args.out.exists():
            raise TraceError(f"--out {args.out} already exists; fix: delete it or pass another path")
        times = {}
        for label, path, steps in map(parse_trace_arg, args.trace):
            if label in times:
                raise TraceError(f"--trace label {label!r} given twice; fix: give each trace its own label")
            times[label] = summarize(read_trace(path), steps, f"{label}={path}")
    except TraceError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    text = table(times, args.top)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
