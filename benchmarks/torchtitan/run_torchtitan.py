"""Run torchtitan 0.2.2's own trainer on the llama_1b benchmark config and summarise its per-step log.

    python benchmarks/torchtitan/run_torchtitan.py --assets .bench_assets/torchtitan --compile on \
        --steps 30 --warmup 10 --json-out benchmarks/results/torchtitan_llama_1b_compile.json \
        [--training.local_batch_size 4 ...]      # any other --section.key goes to torchtitan as is

launches ``python -m torch.distributed.run --standalone --nproc_per_node=N -m torchtitan.train
--job.config_file benchmarks/torchtitan/llama_1b_bench.toml ...`` from the repo root (so the config's
``custom_import`` of ``integrations.torchtitan.flavors`` resolves), streams and saves its log,
and writes one JSON summary of the steps after the first ``--warmup``:

* ``tokens_per_sec_per_device``: tokens of the measured steps / their wall time, i.e. the harmonic
  mean of torchtitan's logged ``tps``, each over the steps since the previous log (the config's log_freq 10, as
  initlab is measured: ten steps each, so ``--steps`` - ``--warmup`` should be a multiple of 10; with
  ``--metrics.log_freq 1`` one step each, and torchtitan then reads its loss from the GPU every step);
* ``mfu`` (fraction of peak; ``mfu_pct`` in %) and ``tflops_per_device``: torchtitan's own figures
  (its FLOPs/token = 6·non-embedding params + 12·layers·dim·seq_len, peak 989 TF/s on H100 SXM/H200),
  averaged the same way;
* ``step_time_s``: mean of tokens_per_step / tps (tokens per device per optimizer step);
* ``peak_memory_gib``: the largest per-step peak of *reserved* CUDA memory torchtitan reports.

``--profile-steps K`` adds one profiler warm-up step and K steps profiled by torchtitan's own profiler after
``--steps`` (not in the summary); the JSON names the chrome trace (``trace``), which benchmarks/device_trace.py reads.

``--preflight-only`` does not train: it parses the config, builds torchtitan's tokenizer and data
loader from the assets, draws one batch and builds the model on ``meta`` (works on CPU).
Failures (trainer exit code != 0, no step lines) still write the JSON, with ``"ok": false`` and the
log's last lines, and exit 1; bad arguments print ``error: ...`` and exit 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = Path(__file__).resolve().parent / "llama_1b_bench.toml"
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_NUM = r"[-+]?(?:[\d,]*\.?\d+(?:[eE][-+]?\d+)?|nan|inf)"
# torchtitan/components/metrics.py MetricsProcessor.log, colours stripped:
# "step:  1  loss: 12.34567  grad_norm:  1.2345  memory: 12.34GiB(15.67%)  tps: 1,234  tflops: 12.34  mfu: 1.25%"
STEP_LINE = re.compile(
    rf"(?<!validate )\bstep:\s*(?P<step>\d+)\s+loss:\s*(?P<loss>{_NUM})\s+grad_norm:\s*(?P<grad_norm>{_NUM})"
    rf"\s+memory:\s*(?P<memory_gib>{_NUM})GiB\((?P<memory_pct>{_NUM})%\)\s+tps:\s*(?P<tps>{_NUM})"
    rf"\s+tflops:\s*(?P<tflops>{_NUM})\s+mfu:\s*(?P<mfu_pct>{_NUM})%")
# torchtitan/train.py Trainer.__init__, last log line of the set-up.
TRAINER_LINE = re.compile(
    r"Trainer is initialized with local batch size (?P<local_batch_size>\d+), global batch size (?P<global_batch_size>\d+), "
    r"gradient accumulation steps (?P<grad_accum_steps>\d+), sequence length (?P<seq_len>\d+)")
PEAK_FLOPS_LINE = re.compile(rf"Peak FLOPS used for computing MFU: (?P<peak_flops>{_NUM})")
PARAMS_LINE = re.compile(r"Model \S+ \S+ size: (?P<num_params>[\d,]+) total parameters")


@dataclass(frozen=True)
class StepMetrics:
    """One logged training step of torchtitan (memory = peak reserved since the previous log)."""

    step: int
    loss: float
    grad_norm: float
    memory_gib: float
    memory_pct: float
    tps: float
    tflops: float
    mfu_pct: float


def _number(text: str) -> float:
    return float(text.replace(",", ""))


def parse_step_line(line: str) -> StepMetrics | None:
    """The metrics of a torchtitan training-step log line, or None for any other line."""
    match = STEP_LINE.search(ANSI_ESCAPE.sub("", line))
    if match is None:
        return None
    fields = {name: _number(value) for name, value in match.groupdict().items()}
    return StepMetrics(**{**fields, "step": int(fields["step"])})


def parse_steps(lines: list[str]) -> list[StepMetrics]:
    """Every training-step line of a log, in order."""
    return [m for m in map(parse_step_line, lines) if m is not None]


def parse_run_facts(lines: list[str]) -> dict:
    """Batch shape, peak FLOPs and parameter count that torchtitan logs while it sets up."""
    facts: dict = {}
    for line in (ANSI_ESCAPE.sub("", raw) for raw in lines):
        for pattern in (TRAINER_LINE, PEAK_FLOPS_LINE, PARAMS_LINE):
            match = pattern.search(line)
            if match:
                facts.update({k: _number(v) for k, v in match.groupdict().items()})
    return {k: (v if k == "peak_flops" else int(v)) for k, v in facts.items()}


def harmonic_mean(values: list[float]) -> float:
    """N / sum(1/v): the rate over the whole interval when every value covers the same amount of work."""
    if not values or min(values) <= 0:
        raise ValueError(f"harmonic mean needs positive values, got {values[:5]}...")
    return len(values) / math.fsum(1.0 / v for v in values)


def summarize(steps: list[StepMetrics], warmup: int, tokens_per_step: int, last: int | None = None) -> dict:
    """Throughput, MFU, step time and peak memory over the steps numbered above ``warmup`` (and up to ``last``).

    ``tokens_per_step`` is tokens per device per optimizer step (local batch x seq_len x accumulation).
    """
    measured = [s for s in steps if s.step > warmup and (last is None or s.step <= last)]
    if not measured:
        raise ValueError(f"no step after warm-up: {len(steps)} step lines, warmup {warmup}; "
                         "fix: raise --steps or lower --warmup")
    if tokens_per_step <= 0:
        raise ValueError(f"tokens_per_step={tokens_per_step} must be positive")
    mfu_pct = harmonic_mean([s.mfu_pct for s in measured])
    return {
        "tokens_per_sec_per_device": harmonic_mean([s.tps for s in measured]),
        "mfu": mfu_pct / 100.0,
        "mfu_pct": mfu_pct,
        "tflops_per_device": harmonic_mean([s.tflops for s in measured]),
        "step_time_s": math.fsum(tokens_per_step / s.tps for s in measured) / len(measured),
        "peak_memory_gib": max(s.memory_gib for s in measured),
        "peak_memory_pct": max(s.memory_pct for s in measured),
        "final_loss": measured[-1].loss,
        "steps_measured": [measured[0].step, measured[-1].step],
        "warmup_steps": warmup,
        "tokens_per_step_per_device": tokens_per_step,
    }


def summarize_log(lines: list[str], warmup: int, tail: int = 5, last: int | None = None) -> dict:
    """``summarize`` of a whole trainer log (steps ``warmup`` + 1 to ``last``), plus the set-up facts and the last
    ``tail`` step lines."""
    facts = parse_run_facts(lines)
    missing = {"local_batch_size", "seq_len", "grad_accum_steps"} - facts.keys()
    if missing:
        raise ValueError(f"the log has no 'Trainer is initialized with ...' line ({sorted(missing)} unknown); "
                         "fix: check that the trainer got past its set-up")
    tokens_per_step = facts["local_batch_size"] * facts["seq_len"] * facts["grad_accum_steps"]
    summary = summarize(parse_steps(lines), warmup, tokens_per_step, last)
    step_lines = [ANSI_ESCAPE.sub("", line).rstrip() for line in lines if parse_step_line(line)]
    return {**summary, **facts, "raw_lines": step_lines[-tail:]}


def last_error_line(lines: list[str]) -> str:
    """The last line that names an exception (``SomethingError: ...``), or '' when there is none."""
    for line in reversed(lines):
        if re.search(r"\b\w*(Error|Exception)\b.*:", line):
            return ANSI_ESCAPE.sub("", line).strip()
    return ""


def asset_paths(assets: Path) -> tuple[Path, Path]:
    """(tokenizer dir, dataset dir) inside a make_assets.py output directory, checked to exist."""
    tokenizer_dir, data_dir = assets / "tokenizer", assets / "data"
    for needed in (tokenizer_dir / "tokenizer.json", tokenizer_dir / "tokenizer_config.json", data_dir):
        if not needed.exists():
            raise FileNotFoundError(f"{needed} not found; fix: python benchmarks/torchtitan/make_assets.py "
                                    f"--out {assets}")
    return tokenizer_dir, data_dir


PROFILE_FOLDER = "profile_traces"


def profiling_args(steps: int, profile_steps: int) -> tuple[int, list[str]]:
    """(training steps in all, torchtitan's profiling options) for ``profile_steps`` profiled steps after ``steps``
    timed ones and one profiler warm-up step. torchtitan's schedule (``torchtitan/tools/profiling.py``) waits
    ``profile_freq - warmup - active`` steps, warms up, records ``active`` steps and writes the trace when step
    ``profile_freq`` ends; the timed steps fall in its wait, when the profiler records nothing."""
    if profile_steps == 0:
        return steps, []
    total = steps + 1 + profile_steps
    return total, ["--profiling.enable_profiling", "--profiling.save_traces_folder", PROFILE_FOLDER,
                   "--profiling.profile_freq", str(total), "--profiling.profiler_warmup", "1",
                   "--profiling.profiler_active", str(profile_steps)]


def torchtitan_args(config: Path, assets: Path, compile_on: bool, steps: int, dump_folder: Path,
                    extra: list[str]) -> list[str]:
    """torchtitan.train's arguments: the TOML, the asset paths, compile on/off, steps, then ``extra``."""
    tokenizer_dir, data_dir = asset_paths(assets)
    return ["--job.config_file", str(config), "--model.hf_assets_path", str(tokenizer_dir),
            "--training.dataset_path", str(data_dir), "--training.steps", str(steps),
            "--compile.enable" if compile_on else "--compile.no-enable",
            "--job.dump_folder", str(dump_folder), *extra]


def trainer_env(dump_folder: Path) -> dict[str, str]:
    """Environment for the trainer: repo root importable, Hugging Face libraries strictly offline."""
    python_path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": python_path, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
            "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(dump_folder / "hf_datasets_cache")}


def run_and_capture(cmd: list[str], env: dict[str, str], log_path: Path, timeout_s: float) -> tuple[int, list[str]]:
    """Run ``cmd`` from the repo root, echo and save its merged output; kill its process group at timeout."""
    lines: list[str] = []
    with log_path.open("x", encoding="utf-8") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", bufsize=1, start_new_session=True)
        timer = threading.Timer(timeout_s, os.killpg, args=(proc.pid, signal.SIGKILL))
        timer.start()
        try:
            for line in proc.stdout:
                lines.append(line)
                log.write(line)
                sys.stdout.write(line)
            returncode = proc.wait()
        finally:
            timer.cancel()
    if returncode == -signal.SIGKILL:
        lines.append(f"run_torchtitan: killed after --timeout-s {timeout_s:g} s\n")
    return returncode, lines


def preflight(config: Path, assets: Path, extra: list[str]) -> dict:
    """Everything the trainer does before it needs a GPU: config, tokenizer, one data batch, meta model.

    Returns the batch shape, the largest token id, the vocabulary size and the model's parameter
    count and FLOPs per token as torchtitan computes them.
    """
    for name, value in (("HF_HUB_OFFLINE", "1"), ("HF_DATASETS_OFFLINE", "1")):
        os.environ.setdefault(name, value)  # read when `datasets` is first imported
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))  # for the config's custom_import, integrations.torchtitan.*
    import torch
    from torchtitan.config import ConfigManager
    from torchtitan.protocols.train_spec import get_train_spec

    tokenizer_dir, data_dir = asset_paths(assets)
    job = ConfigManager().parse_args(["--job.config_file", str(config), "--model.hf_assets_path",
                                      str(tokenizer_dir), "--training.dataset_path", str(data_dir), *extra])
    if job.experimental.custom_import:
        __import__(job.experimental.custom_import)
    spec = get_train_spec(job.model.name)
    tokenizer = spec.build_tokenizer_fn(job)
    loader = spec.build_dataloader_fn(dp_world_size=1, dp_rank=0, tokenizer=tokenizer, job_config=job)
    inputs, labels = next(iter(loader))
    model_args = spec.model_args[job.model.flavor]
    with torch.device("meta"):
        model = spec.model_cls(model_args)
    num_params, flops_per_token = model_args.get_nparams_and_flops(model, job.training.seq_len)
    max_token_id = int(max(inputs["input"].max(), labels.max()))
    if max_token_id >= model_args.vocab_size:
        raise ValueError(f"token id {max_token_id} >= vocab_size {model_args.vocab_size} of flavor "
                         f"{job.model.flavor}; fix: use a flavor with a larger vocabulary")
    return {"batch_shape": list(inputs["input"].shape), "labels_shape": list(labels.shape),
            "max_token_id": max_token_id, "eos_id": tokenizer.eos_id, "bos_id": tokenizer.bos_id,
            "tokenizer_vocab_size": tokenizer.get_vocab_size(), "model_vocab_size": model_args.vocab_size,
            "flavor": job.model.flavor, "num_params": num_params, "flops_per_token": flops_per_token}


def parse_cli(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--assets", type=Path, default=Path(".bench_assets/torchtitan"),
                        help="make_assets.py output directory (default %(default)s)")
    parser.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="torchtitan TOML (default: llama_1b)")
    parser.add_argument("--compile", choices=["on", "off"], default="on", help="torch.compile the model and loss")
    parser.add_argument("--steps", type=int, default=30, help="training steps (default %(default)s)")
    parser.add_argument("--warmup", type=int, default=10, help="first steps left out of the summary")
    parser.add_argument("--nproc", type=int, default=1, help="processes (GPUs) on this host")
    parser.add_argument("--json-out", type=Path, help="summary JSON to write (must not exist)")
    parser.add_argument("--log-out", type=Path, help="trainer log to write (default: --json-out with .log)")
    parser.add_argument("--timeout-s", type=float, default=540.0, help="kill the trainer after this many seconds")
    parser.add_argument("--preflight-only", action="store_true", help="check assets/config/model; no training")
    parser.add_argument("--profile-steps", type=int, default=0,
                        help="after --steps, one profiler warm-up step and this many profiled steps (torchtitan's "
                             "own profiler; left out of the summary, whose trace path the JSON records as 'trace')")
    args, extra = parser.parse_known_args(argv)
    for arg in extra:
        if arg.startswith("-") and not re.match(r"^--[a-z_]+\.[a-z_.-]+(=.*)?$", arg):
            parser.error(f"unknown option {arg}: only --section.key options go through to torchtitan")
    if not args.preflight_only and args.json_out is None:
        parser.error("--json-out is required unless --preflight-only")
    if args.steps <= args.warmup:
        parser.error(f"--steps {args.steps} must exceed --warmup {args.warmup}")
    if args.profile_steps < 0:
        parser.error(f"--profile-steps {args.profile_steps} must be >= 0")
    return args, extra


def train_and_summarize(args: argparse.Namespace, extra: list[str]) -> int:
    """Launch the trainer, write the log and the JSON summary; 0 when the summary has numbers."""
    log_out = args.log_out or args.json_out.with_suffix(".log")
    for path in (args.json_out, log_out):
        if path.exists():
            raise FileExistsError(f"{path} already exists; fix: delete it or pass another path")
    dump_folder = REPO_ROOT / "outputs" / "torchtitan_bench" / args.json_out.stem
    total, profiling = profiling_args(args.steps, args.profile_steps)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={args.nproc}",
           "-m", "torchtitan.train",
           *torchtitan_args(args.config.resolve(), args.assets.resolve(), args.compile == "on", total,
                            dump_folder, [*profiling, *extra])]
    args.json_out.parent.mkdir(parents=True, exist_ok=True)
    log_out.parent.mkdir(parents=True, exist_ok=True)
    returncode, lines = run_and_capture(cmd, trainer_env(dump_folder), log_out, args.timeout_s)
    record = {"trainer": "torchtitan", "compile": args.compile == "on", "nproc": args.nproc,
              "returncode": returncode, "command": cmd, "log": str(log_out)}
    try:
        if returncode != 0:
            raise RuntimeError(f"torchtitan exited with code {returncode}: {last_error_line(lines)}")
        record.update(ok=True, **summarize_log(lines, args.warmup, last=args.steps))
        trace = dump_folder / PROFILE_FOLDER / f"iteration_{total}" / "rank0_trace.json"
        if args.profile_steps:
            record.update(trace=str(trace) if trace.is_file() else None,
                          profiled_steps=[total - args.profile_steps + 1, total])
    except (RuntimeError, ValueError) as err:
        record.update(ok=False, error=str(err), raw_lines=[line.rstrip() for line in lines[-40:]])
    args.json_out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"run_torchtitan: wrote {args.json_out}" + ("" if record["ok"] else f" (failed: {record['error']})"))
    return 0 if record["ok"] else 1


def main(argv: list[str] | None = None) -> int:
    args, extra = parse_cli(argv)
    try:
        if args.preflight_only:
            print(json.dumps(preflight(args.config, args.assets, extra), indent=2))
            return 0
        return train_and_summarize(args, extra)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

