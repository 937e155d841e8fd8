"""train.py end to end on CPU: world-size invariance, learning, the metrics contract, failures and bad inputs.

Every run is a real ``train.py`` run: single-process runs execute ``train.main(argv)`` one after
another inside one interpreter (tests/train_cases_worker.py, one torch import for all of them),
multi-rank runs go through ``torchrun`` with gloo (tests/launch.py). The shapes are tiny: a 2-layer
Llama/GPT-2 with d=128, 513 tokens (the first 512 cl100k ranks + EOS), 4 sequences of 32 tokens.
The runs are shared by the tests through module-scoped fixtures; each test asserts numbers read
back from ``metrics.jsonl``, the TensorBoard event file, checkpoints or the process's output.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2
from tensorboard.plugins.hparams import plugin_data_pb2
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from components.checkpoint import complete_steps
from components.config import LRScheduler, Tokenizer
from components.data import ShardWriter
from components.lr_schedule import lr_factor
from components.tokenizer import build_tokenizer
from init_schemes.base import truncation_shrink
from tests.launch import build_training_data, pythons_side_by_side, torchrun

pytestmark = pytest.mark.multiprocess  # every test here launches training processes

# 5 held-out sequences: uneven across 2 ranks (3 + 2) and across micro-batches (padded forwards).
VAL_TOKENS = 5 * 32
# Tiny shapes on top of the debug config (d=128, 4 heads, 2 KV heads); 513 = 512 BPE ranks + EOS.
DIM, N_LAYERS, N_HEADS, N_KV_HEADS, VOCAB, SEQ_LEN = 128, 2, 4, 2, 513, 32
TINY = ["--config", "train_configs/debug.toml", "--model.n_layers", str(N_LAYERS), "--training.seq_len", str(SEQ_LEN),
        "--training.global_batch_size", "4", "--tokenizer.max_vocab", "512", "--metrics.val_tokens", str(VAL_TOKENS)]
EQUIVALENCE = [*TINY, "--training.steps", "10", "--metrics.log_freq", "1", "--metrics.val_freq", "5"]
HSDP_REFERENCE = [*TINY, "--training.steps", "4", "--metrics.log_freq", "1", "--metrics.val_freq", "0"]
LLAMA_ROLES = ("attn.q", "attn.k", "attn.v", "attn.out", "mlp.gate", "mlp.up", "mlp.out")
GPT2_ROLES = ("attn.q", "attn.k", "attn.v", "attn.out", "mlp.up", "mlp.out")
BASE_METRICS = ("loss/train", "lr", "grad_norm_total", "throughput/tokens_per_sec",
                "throughput/tokens_per_sec_per_device", "memory/peak_gib")
# The metrics run: 9 steps, logged at 1, every 2nd step and the last; validation every 4th logged step.
METRICS_STEPS, METRICS_LOG_FREQ, METRICS_VAL_FREQ = 9, 2, 4
# The loss-falls runs: the debug config's own shape (4 layers, d=128, 4096 tokens, 16 x 128 tokens, lr 3e-3).
LEARNING_STEPS, LOSS_FALL_MARGIN = 20, 1.0
MITCHELL_FFN_DIM = 256
# lr 1e2 without clipping: grad norm 1.5e19 at step 2, inf at step 3, NaN at step 4, NaN loss at step 5.
NONFINITE_INTERVAL = 1  # a checkpoint every step: the newest complete one must precede the blow-up
REL_TOL_WORLD_SIZE = 1e-4
# LoRA fine-tuning of the (randomly initialized) tiny Llama: rank-4 adapters on q and v, everything else frozen.
LORA_STEPS = 4
LORA = [*TINY, "--training.steps", str(LORA_STEPS), "--metrics.log_freq", "1", "--metrics.val_freq", "0",
        "--model.lora_rank", "4", "--training.trainable", "lora", "--optimizer.lr", "1e-2",
        "--checkpoint.enable", "true", "--checkpoint.interval", str(LORA_STEPS)]
REL_TOL_ACTIVATION_CHECKPOINT = 1e-5
# Validation after one step at lr 1e-9 from one set of weights (a seed checkpoint), under two data/init seeds.
VAL_SEED_RUN = [*TINY, "--training.steps", "1", "--metrics.log_freq", "1", "--metrics.val_freq", "1",
                "--optimizer.lr", "1e-9"]
REL_TOL_SAME_WEIGHTS = 1e-6


def run_args(out: Path, name: str, *extra: str) -> list[str]:
    return [*extra, "--job.output_dir", str(out), "--job.run_name", name]


@dataclass
class Run:
    """One train.py invocation: its exit code, output and run directory."""

    rc: int
    stdout: str
    stderr: str
    run_dir: Path
    seconds: float = 0.0

    def metrics(self) -> list[dict]:
        return [json.loads(line) for line in (self.run_dir / "metrics.jsonl").read_text().splitlines()]

    def column(self, name: str) -> dict[int, float]:
        """{step: value} of one metric over the logged steps that carry it."""
        return {record["step"]: record[name] for record in self.metrics() if name in record}


def run_in_one_process(cases: dict[str, list[str]], scratch: Path) -> dict[str, dict]:
    """Each argv of ``cases`` as ``python train.py <argv>`` would run it, all in one interpreter, in order."""
    return run_side_by_side([cases], scratch)


def run_side_by_side(groups: list[dict[str, list[str]]], scratch: Path) -> dict[str, dict]:
    """Each group of cases in its own interpreter, in order (as ``run_in_one_process``), the interpreters side by
    side (one thread each, on the machine's cores)."""
    scratch.mkdir(parents=True, exist_ok=True)
    commands, results_files = [], []
    for i, cases in enumerate(groups):
        cases_file, results_file = scratch / f"cases_{i}.json", scratch / f"results_{i}.json"
        cases_file.write_text(json.dumps(list(cases.values())))
        commands.append(["tests/train_cases_worker.py", str(cases_file), str(results_file)])
        results_files.append(results_file)
    pythons_side_by_side(commands, env={"OMP_NUM_THREADS": "1"})
    return {name: result for cases, results_file in zip(groups, results_files)
            for name, result in zip(cases, json.loads(results_file.read_text()))}


def run_in_two_ranks(cases: dict[str, list[str]], scratch: Path) -> dict[str, dict]:
    """Each argv of ``cases`` as ``torchrun --nproc_per_node=2 train.py <argv>`` would run it, all in one
    launch, in order; every case must succeed on both ranks. Returns rank 0's result of each case."""
    scratch.mkdir(parents=True, exist_ok=True)
    cases_file, results_file = scratch / "cases.json", scratch / "results.json"
    cases_file.write_text(json.dumps(list(cases.values())))
    torchrun(["tests/train_cases_worker.py", str(cases_file), str(results_file)], nproc=2)
    ranks = [json.loads(results_file.read_text()), json.loads(results_file.with_name("results.json.rank1").read_text())]
    for name, *per_rank in zip(cases, *ranks):
        assert all(result["rc"] == 0 for result in per_rank), f"{name}: {[r['stderr'][-2000:] for r in per_rank]}"
    return dict(zip(cases, ranks[0]))


def as_run(result: dict, out: Path, name: str) -> Run:
    return Run(result["rc"], result["stdout"], result["stderr"], out / name, result["seconds"])


def run_torchrun(out: Path, name: str, nproc: int, argv: list[str], check: bool = True) -> Run:
    proc = torchrun(["train.py", *run_args(out, name, *argv)], nproc=nproc, check=check)
    return Run(proc.returncode, proc.stdout, proc.stderr, out / name)


def assert_close_series(measured: dict[int, float], reference: dict[int, float], rel_tol: float, what: str) -> None:
    assert measured.keys() == reference.keys(), f"{what}: logged steps {sorted(measured)} != {sorted(reference)}"
    for step, ref in reference.items():
        assert math.isfinite(ref), f"{what}: step {step} is {ref}"
        assert abs(measured[step] - ref) <= rel_tol * abs(ref), \
            f"{what} at step {step}: {measured[step]!r} vs {ref!r} (rel {abs(measured[step] - ref) / abs(ref):.2e})"


def one_line_error(stderr: str) -> str:
    """The single ``error: ...`` line that is the whole of ``stderr``."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), f"expected one 'error:' line, got {stderr!r}"
    return lines[0]


def tree_state(root: Path) -> dict[str, tuple[int, str]]:
    """{relative path: (mtime_ns, sha256 of the contents or 'dir')} of everything under ``root``."""
    state = {}
    for path in sorted(root.rglob("*")):
        if path.name == ".lock":  # the run-directory lock: touched by every launch, holds no data
            continue
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
        state[str(path.relative_to(root))] = (path.stat().st_mtime_ns, digest)
    return state


def llama_metric_names() -> list[str]:
    per_layer = [f"weight_std/{role}/layer_{layer:02d}" for role in LLAMA_ROLES for layer in range(N_LAYERS)]
    means = [f"weight_std/{role}/mean_over_layers" for role in LLAMA_ROLES]
    return [*BASE_METRICS, *per_layer, *means, "weight_std/tok_embedding", "weight_std/lm_head"]


def tensorboard(run_dir: Path) -> EventAccumulator:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


# ------------------------------------------------------------------------------------------ runs
@pytest.fixture(scope="module")
def out(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("train_runs")


def single_process_cases(out: Path) -> dict[str, list[str]]:
    """Name -> argv of every single-process training run the tests read (the run dir is out/<name>)."""
    learning = ["--config", "train_configs/debug.toml", "--training.steps", str(LEARNING_STEPS),
                "--metrics.log_freq", "1", "--metrics.val_freq", "0"]
    extra = {
        "llama": EQUIVALENCE,
        "gpt2": [*EQUIVALENCE, "--model.name", "gpt2"],
        "accumulation": [*EQUIVALENCE, "--training.local_batch_size", "1"],  # auto: gathered for all 4 micro-batches
        "accumulation_resharded": [*EQUIVALENCE, "--training.local_batch_size", "1",
                                   "--parallelism.reshard_after_forward", "true"],
        "ac_full": [*EQUIVALENCE, "--activation_checkpoint.mode", "full"],
        "ac_selective": [*EQUIVALENCE, "--activation_checkpoint.mode", "selective",
                         "--activation_checkpoint.every_k", "2"],
        "hsdp_reference": HSDP_REFERENCE,
        "metrics": [*TINY, "--training.steps", str(METRICS_STEPS), "--metrics.log_freq", str(METRICS_LOG_FREQ),
                    "--metrics.val_freq", str(METRICS_VAL_FREQ)],
        "mitchell": [*TINY, "--training.steps", "1", "--init.scheme", "mitchell", "--optimizer.lr", "1e-9",
                     "--model.ffn_dim", str(MITCHELL_FFN_DIM), "--metrics.val_freq", "0"],
        "nonfinite": [*TINY, "--training.steps", "10", "--optimizer.lr", "1e2", "--training.max_norm", "0",
                      "--checkpoint.enable", "true", "--checkpoint.interval", str(NONFINITE_INTERVAL),
                      "--metrics.log_freq", "100", "--metrics.val_freq", "0"],
        "existing": [*TINY, "--training.steps", "2", "--checkpoint.enable", "true", "--checkpoint.interval", "1",
                     "--metrics.val_freq", "0"],
        "learning": learning,
        "tiny_lr": [*learning, "--optimizer.lr", "1e-9"],
        "lora": LORA,
        "lora_seed": [*LORA, "--checkpoint.create_seed_checkpoint", "true"],
        "val_start": [*TINY, "--checkpoint.create_seed_checkpoint", "true", "--checkpoint.enable", "true"],
        **{f"val_seed{seed}": [*VAL_SEED_RUN, "--init.from_checkpoint", str(out / "val_start" / "checkpoints" / "step_0"),
                               "--job.seed", str(seed)] for seed in (0, 1)},
    }
    return {name: run_args(out, name, *argv) for name, argv in extra.items()}


# The single-process runs in two interpreters side by side: the two 20-step runs of the debug shape (most of
# the time) one in each; val_seed* read val_start's checkpoint, so they follow it in the same interpreter.
SIDE_BY_SIDE = [("llama", "gpt2", "accumulation", "accumulation_resharded", "ac_full", "ac_selective", "learning"),
                ("hsdp_reference", "metrics", "mitchell", "nonfinite", "existing", "tiny_lr", "lora", "lora_seed",
                 "val_start", "val_seed0", "val_seed1")]


@pytest.fixture(scope="module")
def single(out) -> dict[str, Run]:
    """All single-process runs (two interpreters, side by side): name -> Run."""
    cases = single_process_cases(out)
    assert sorted(name for group in SIDE_BY_SIDE for name in group) == sorted(cases)
    for name in ("llama", "learning"):  # the two corpora (512 and 4096 tokens): built before, not by both at once
        build_training_data(cases[name])
    results = run_side_by_side([{name: cases[name] for name in group} for group in SIDE_BY_SIDE], out / "_single")
    return {name: as_run(result, out, name) for name, result in results.items()}


def two_rank_cases() -> dict[str, list[str]]:
    """Name -> argv of every 2-rank training run the tests read (the run dir is out/<name>)."""
    return {
        "llama_2rank": EQUIVALENCE,
        "gpt2_2rank": [*EQUIVALENCE, "--model.name", "gpt2"],
        # 2 micro-batches each, parameters gathered once per step and kept across micro-batches.
        "kept_gathered_2rank": [*EQUIVALENCE, "--training.local_batch_size", "1",
                                "--parallelism.reshard_after_forward", "false"],
        # 2 replicas of a one-rank shard group (FSDP2's reduce-scatter without its copy, then the all-reduce),
        # with 2 accumulated micro-batches per rank.
        "replicate_2rank": [*HSDP_REFERENCE, "--parallelism.data_parallel_replicate_degree", "2",
                            "--training.local_batch_size", "1"],
        "lora_2rank": LORA,
    }


@pytest.fixture(scope="module")
def two_rank(out) -> dict[str, Run]:
    """All 2-rank runs, one after another in one torchrun launch (tests/train_cases_worker.py): name -> Run."""
    results = run_in_two_ranks({name: run_args(out, name, *argv) for name, argv in two_rank_cases().items()},
                               out / "_two_rank")
    return {name: as_run(result, out, name) for name, result in results.items()}


@pytest.fixture(scope="module")
def two_rank_llama(two_rank) -> Run:
    return two_rank["llama_2rank"]


@pytest.fixture(scope="module")
def two_rank_gpt2(two_rank) -> Run:
    return two_rank["gpt2_2rank"]


@pytest.fixture(scope="module")
def two_rank_kept_gathered(two_rank) -> Run:
    return two_rank["kept_gathered_2rank"]


@pytest.fixture(scope="module")
def replicated(two_rank) -> Run:
    return two_rank["replicate_2rank"]


@pytest.fixture(scope="module")
def hsdp(out) -> Run:
    return run_torchrun(out, "hsdp_4rank", 4, [*HSDP_REFERENCE, "--parallelism.data_parallel_replicate_degree", "2"])


# ------------------------------------------------------------------------- 1. world size, accumulation
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_two_rank_fsdp_matches_one_process(family, single, request):
    """1 process vs 2 FSDP2 ranks, same global batch, 10 steps: loss/train, grad_norm, loss/val and every
    weight std (1 rank: the whole tensor; 2 ranks: the packed all-reduce of shards) agree to 1e-4."""
    one, two = single[family], request.getfixturevalue(f"two_rank_{family}")
    assert one.rc == 0, one.stderr
    assert sorted(one.column("loss/train")) == list(range(1, 11))
    for name in ("loss/train", "grad_norm_total", "loss/val"):
        assert_close_series(two.column(name), one.column(name), REL_TOL_WORLD_SIZE, f"{family} {name}")
    first_one, first_two = one.metrics()[0], two.metrics()[0]
    std_names = [name for name in first_one if name.startswith("weight_std/")]
    assert len(std_names) >= 4 * N_LAYERS
    for name in std_names:
        assert_close_series({1: first_two[name]}, {1: first_one[name]}, REL_TOL_WORLD_SIZE, f"{family} {name}")
    print(f"{family}: 1 rank {[round(v, 5) for v in one.column('loss/train').values()]}; "
          f"2 ranks {[round(v, 5) for v in two.column('loss/train').values()]}")


def test_validation_loss_does_not_depend_on_the_seed(single):
    """Two seeds from the same weights: different training batches (loss/train differs), the same held-out
    tokens (loss/val agrees to 1e-6, the weights having moved by at most ~1e-9 each)."""
    runs = [single[f"val_seed{seed}"] for seed in (0, 1)]
    for run in runs:
        assert run.rc == 0, run.stderr
    (train0, val0), (train1, val1) = [(run.column("loss/train")[1], run.column("loss/val")[1]) for run in runs]
    assert abs(train0 - train1) > 1e-3, (train0, train1)  # the seeds did pick different training batches
    assert abs(val0 - val1) <= REL_TOL_SAME_WEIGHTS * val0, (val0, val1)


def test_gradient_accumulation_matches_one_pass(single):
    """local_batch_size 1 (4 accumulated microbatches) gives the losses of one batch of 4 (1e-4 relative)."""
    assert single["accumulation"].rc == 0, single["accumulation"].stderr
    for name in ("loss/train", "grad_norm_total"):
        assert_close_series(single["accumulation"].column(name), single["llama"].column(name),
                            REL_TOL_WORLD_SIZE, f"accumulation {name}")


def test_parameters_kept_gathered_across_micro_batches(single, two_rank_kept_gathered):
    """No resharding after forward keeps the gathered parameters for all micro-batches of a step (the auto
    setting on one rank): bitwise the resharding run on one rank, and on 2 ranks x 2 micro-batches the
    one-pass losses (1e-4), so no micro-batch or step ever computes with stale gathered weights."""
    kept, resharded = single["accumulation"], single["accumulation_resharded"]
    assert resharded.rc == 0, resharded.stderr
    assert "reshard_after_forward = true" in (resharded.run_dir / "config.toml").read_text()
    for name in ("loss/train", "grad_norm_total", "loss/val"):
        assert kept.column(name) == resharded.column(name), name
    for name in ("loss/train", "grad_norm_total", "loss/val"):
        assert_close_series(two_rank_kept_gathered.column(name), single["llama"].column(name),
                            REL_TOL_WORLD_SIZE, f"kept gathered, 2 ranks {name}")


def test_hsdp_four_ranks_matches_one_process(single, hsdp):
    """2 replicas x 2 shards (4 ranks) gives the 1-process losses and grad norms over 4 steps (1e-4)."""
    reference = single["hsdp_reference"]
    assert reference.rc == 0, reference.stderr
    assert "4 rank(s)" in hsdp.stdout
    assert "data_parallel_replicate_degree = 2" in (hsdp.run_dir / "config.toml").read_text()
    assert sorted(reference.column("loss/train")) == [1, 2, 3, 4]
    for name in ("loss/train", "grad_norm_total", "weight_std/attn.q/layer_01"):
        assert_close_series(hsdp.column(name), reference.column(name), REL_TOL_WORLD_SIZE, f"hsdp {name}")


def test_replicas_of_one_rank_shard_groups_match_one_process(single, replicated):
    """2 replicas x 1 shard: the sharded gradients are views of the packed reduce-scatter input
    (distributed/one_rank.py: OneRankReduceScatter), all-reduced in place; losses and grad norms of 4 steps
    are the 1-process ones (1e-4)."""
    reference = single["hsdp_reference"]
    assert replicated.rc == 0, replicated.stderr
    assert "data_parallel_replicate_degree = 2" in (replicated.run_dir / "config.toml").read_text()
    for name in ("loss/train", "grad_norm_total", "weight_std/attn.q/layer_01"):
        assert_close_series(replicated.column(name), reference.column(name), REL_TOL_WORLD_SIZE, f"replicated {name}")


@pytest.mark.parametrize("mode", ["full", "selective"])
def test_activation_checkpointing_keeps_losses(mode, single):
    """Recomputing activations (every block, or every 2nd) changes no loss or grad norm beyond 1e-5."""
    run = single[f"ac_{mode}"]
    assert run.rc == 0, run.stderr
    for name in ("loss/train", "grad_norm_total", "loss/val"):
        assert_close_series(run.column(name), single["llama"].column(name), REL_TOL_ACTIVATION_CHECKPOINT,
                            f"AC {mode} {name}")


# ------------------------------------------------------------------------------------- 2. learning
def test_loss_falls_on_the_embedded_corpus(single):
    """Debug shape, 20 steps at lr 3e-3: mean loss of the last 5 steps < step-1 loss - 1.0;
    the same run at lr 1e-9 does not fall by that margin (so the assertion can fail)."""
    falls = {}
    for name in ("learning", "tiny_lr"):
        assert single[name].rc == 0, single[name].stderr
        losses = single[name].column("loss/train")
        assert sorted(losses) == list(range(1, LEARNING_STEPS + 1))
        final = sum(losses[s] for s in range(LEARNING_STEPS - 4, LEARNING_STEPS + 1)) / 5
        falls[name] = losses[1] - final
        print(f"{name}: step-1 loss {losses[1]:.3f}, mean of last 5 {final:.3f}, fall {falls[name]:.3f}")
    assert falls["learning"] > LOSS_FALL_MARGIN
    assert falls["tiny_lr"] < LOSS_FALL_MARGIN


# ------------------------------------------------------------------------------------- 3. metrics
def expected_logged_steps() -> list[int]:
    return sorted({1, METRICS_STEPS, *range(METRICS_LOG_FREQ, METRICS_STEPS + 1, METRICS_LOG_FREQ)})


def test_metrics_jsonl_has_every_name_at_every_logged_step(single):
    """Logged steps are exactly 1, every 2nd and the last; each carries every §8 name (finite); loss/val at
    the logged multiples of val_freq and the last step; no mfu on CPU; per-role means are the layer means."""
    run = single["metrics"]
    assert run.rc == 0, run.stderr
    initial, *records = run.metrics()
    assert [r["step"] for r in records] == expected_logged_steps() == [1, 2, 4, 6, 8, 9]
    std_names = [name for name in llama_metric_names() if name.startswith("weight_std/")]
    assert initial["step"] == 0 and sorted(initial) == sorted(["step", "loss/val", *std_names])  # no backward yet
    for record in records:
        missing = [name for name in llama_metric_names() if name not in record]
        assert not missing, f"step {record['step']} lacks {missing}"
        assert all(math.isfinite(record[name]) for name in llama_metric_names())
        assert "mfu" not in record
        assert record["throughput/tokens_per_sec"] > 0 and record["memory/peak_gib"] > 0
        assert record["throughput/tokens_per_sec_per_device"] == record["throughput/tokens_per_sec"]  # 1 device
        for role in LLAMA_ROLES:
            layers = [record[f"weight_std/{role}/layer_{layer:02d}"] for layer in range(N_LAYERS)]
            assert record[f"weight_std/{role}/mean_over_layers"] == pytest.approx(sum(layers) / N_LAYERS, rel=1e-12)
    val_steps = [0] + [s for s in expected_logged_steps() if s % METRICS_VAL_FREQ == 0 or s == METRICS_STEPS]
    assert sorted(run.column("loss/val")) == val_steps == [0, 4, 8, 9]


def test_gpt2_metrics_name_every_layer_of_its_roles(single):
    """GPT-2 (no gate, learned positions, tied head) logs weight_std/<role>/layer_<NN> for its own roles."""
    for record in single["gpt2"].metrics()[1:]:  # (step 0 has the weight stds only)
        names = [f"weight_std/{role}/layer_{layer:02d}" for role in GPT2_ROLES for layer in range(N_LAYERS)]
        names += ["weight_std/tok_embedding", "weight_std/pos_embedding", *BASE_METRICS]
        assert not [n for n in names if n not in record], f"step {record['step']}"
        assert not any(name.startswith("weight_std/mlp.gate") for name in record)
        assert "weight_std/lm_head" not in record  # tied: the one tensor is logged as tok_embedding


def test_logged_lr_is_the_lr_of_that_step(single):
    """'lr' at step s is the learning rate step s trained with: peak * lr_factor(s) (warmup 10 of 9 steps)."""
    schedule = LRScheduler(warmup_steps=10, decay_type="cosine")  # debug.toml's
    for step, lr in single["metrics"].column("lr").items():
        assert lr == pytest.approx(3e-3 * lr_factor(step, schedule, METRICS_STEPS), rel=1e-9), f"step {step}"


def test_tensorboard_has_every_name_at_every_logged_step(single):
    """The event file holds each jsonl metric at exactly the same steps with the same values (float32)."""
    run = single["metrics"]
    events = tensorboard(run.run_dir)
    for name in [*llama_metric_names(), "loss/val"]:
        jsonl = run.column(name)
        scalars = {event.step: event.value for event in events.Scalars(name)}
        assert sorted(scalars) == sorted(jsonl), name
        assert all(scalars[s] == pytest.approx(jsonl[s], rel=1e-6) for s in jsonl), name
    assert not [tag for tag in events.Tags()["scalars"] if tag == "mfu"]


def test_tensorboard_custom_scalars_chart_per_role_line_per_layer(single):
    """The weight_std category has one chart per role whose line regexes match exactly that role's layers."""
    events = tensorboard(single["metrics"].run_dir)
    proto = events.Tensors("custom_scalars__config__")[0].tensor_proto
    layout = layout_pb2.Layout.FromString(proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for category in layout.category
              if category.title == "weight_std" for chart in category.chart}
    assert set(LLAMA_ROLES) <= set(charts)
    all_names = [f"weight_std/{role}/layer_{layer:02d}" for role in LLAMA_ROLES for layer in range(N_LAYERS)]
    for role in LLAMA_ROLES:
        matched = [name for name in all_names if any(re.fullmatch(rx, name) for rx in charts[role])]
        assert matched == [f"weight_std/{role}/layer_{layer:02d}" for layer in range(N_LAYERS)], role


def test_tensorboard_hparams_name_the_scheme_and_final_losses(single):
    """HParams: session start holds scheme/lr/steps, the experiment lists final/loss/{train,val},
    whose scalars equal the last logged losses."""
    run = single["metrics"]
    events = tensorboard(run.run_dir)
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = start.session_start_info.hparams
    assert hparams["scheme"].string_value == "scaled_output"
    assert hparams["lr"].number_value == pytest.approx(3e-3)
    assert hparams["steps"].number_value == METRICS_STEPS
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert {info.name.tag for info in experiment.metric_infos} == {"final/loss/train", "final/loss/val"}
    for name in ("loss/train", "loss/val"):
        (final,) = events.Scalars(f"final/{name}")
        assert final.value == pytest.approx(run.column(name)[METRICS_STEPS], rel=1e-6)


# ------------------------------------------------------------------------------- 4. init std at step 1
def mitchell_expected_std(role: str, layer: int | None) -> float:
    """OLMo mitchell init std (docs/design.md §5) times the +-3 sigma truncation shrink."""
    shrink = truncation_shrink(-3.0, 3.0)
    if role == "attn.out":
        return shrink / math.sqrt(2 * DIM * (layer + 1))
    if role == "mlp.out":
        return shrink / math.sqrt(2 * MITCHELL_FFN_DIM * (layer + 1))
    return shrink * DIM ** -0.5


def mitchell_numel(role: str) -> int:
    kv_dim = DIM // N_HEADS * N_KV_HEADS
    return {"attn.q": DIM * DIM, "attn.k": kv_dim * DIM, "attn.v": kv_dim * DIM, "attn.out": DIM * DIM,
            "mlp.gate": MITCHELL_FFN_DIM * DIM, "mlp.up": MITCHELL_FFN_DIM * DIM, "mlp.out": DIM * MITCHELL_FFN_DIM,
            "tok_embedding": VOCAB * DIM, "lm_head": VOCAB * DIM}[role]


def test_weight_std_at_step_0_is_the_mitchell_formula(single):
    """Step 0 (the initialized weights, before any update): weight_std/attn.out/layer_01 = 1/sqrt(2 d (l+1)) *
    shrink within 4 sampling SEs; pooled over all 2 x 7 + 2 weights (426k draws) the measured/expected ratio is
    1 within 4 SEs (0.4%), which tells the truncated draw (shrink 0.9866) from an untruncated one."""
    run = single["mitchell"]
    assert run.rc == 0, run.stderr
    record = run.metrics()[0]
    assert record["step"] == 0 and "loss/train" not in record
    # SE of a sample std relative to the std: sqrt((kurtosis - 1) / 4n) <= sqrt(1 / 2n) (kurtosis <= 3 here).
    measured, expected = record["weight_std/attn.out/layer_01"], mitchell_expected_std("attn.out", 1)
    assert abs(measured / expected - 1) < 4 * math.sqrt(1 / (2 * mitchell_numel("attn.out"))), (measured, expected)
    tensors = [(role, layer) for role in LLAMA_ROLES for layer in range(N_LAYERS)]
    tensors += [("tok_embedding", None), ("lm_head", None)]
    total = sum(mitchell_numel(role) for role, _ in tensors)
    pooled = sum(mitchell_numel(role) * record[f"weight_std/{role}" + ("" if layer is None else f"/layer_{layer:02d}")]
                 / mitchell_expected_std(role, layer) for role, layer in tensors) / total
    print(f"mitchell: attn.out/layer_01 {measured:.6f} vs {expected:.6f}; pooled ratio {pooled:.5f} over {total}")
    assert abs(pooled - 1) < 4 * math.sqrt(1 / (2 * total))


def test_step_0_row_holds_the_stds_of_the_initial_weights(single, out, tmp_path):
    """A fresh start from a seed checkpoint's weights: its step-0 row's weight_std values are the (unbiased)
    stds of the checkpoint's tensors, to float32 rounding."""
    run = single["val_seed0"]
    assert run.rc == 0, run.stderr
    initial, first = run.metrics()[:2]
    dcp_to_torch_save(out / "val_start" / "checkpoints" / "step_0", tmp_path / "start.pt")
    weights = torch.load(tmp_path / "start.pt", weights_only=True)["model"]
    expected = {"weight_std/tok_embedding": weights["tok_embedding.weight"], "weight_std/lm_head": weights["lm_head.weight"],
                "weight_std/attn.q/layer_01": weights["layers.1.attn.q.weight"],
                "weight_std/mlp.out/layer_00": weights["layers.0.mlp.out.weight"]}
    for name, tensor in expected.items():
        assert initial[name] == pytest.approx(tensor.double().std().item(), rel=1e-6), name
    assert (initial["step"], first["step"]) == (0, 1) and "loss/train" not in initial


# --------------------------------------------------------------------------------- 5. non-finite loss
def test_nonfinite_loss_stops_with_step_and_role_and_no_poisoned_checkpoint(single, tmp_path):
    """lr 1e2 without clipping blows up within 5 steps: exit 1 with one 'error:' line naming the step and a
    role; every complete checkpoint is from before that step, and the newest one holds finite weights."""
    run = single["nonfinite"]
    assert run.rc == 1
    line = one_line_error(run.stderr)
    # Either a weight/grad holds a NaN/inf, or every value is finite and only the norm overflowed.
    match = re.search(r"non-finite at step (\d+); .*?(?:first non-finite|largest gradient): (.*?) (weight|grad) \(",
                      line)
    assert match, line
    bad_step, culprit = int(match.group(1)), match.group(2)
    roles = (*LLAMA_ROLES, "tok_embedding", "lm_head", "norm")
    assert re.fullmatch(r"(layers\.\d\d )?(" + "|".join(map(re.escape, roles)) + ")", culprit), culprit
    assert 1 < bad_step <= 5
    assert all(record["step"] < bad_step for record in run.metrics())
    saved = complete_steps(run.run_dir / "checkpoints")
    assert saved and all(step < bad_step for step in saved), (saved, bad_step)
    dcp_to_torch_save(run.run_dir / "checkpoints" / f"step_{saved[-1]}", tmp_path / "newest.pt")
    model = torch.load(tmp_path / "newest.pt", weights_only=False)["model"]
    poisoned = [name for name, tensor in model.items() if not torch.isfinite(tensor).all()]
    assert not poisoned, f"checkpoint step_{saved[-1]} (error names step {bad_step}) holds non-finite {poisoned}"


def model_state(checkpoint: Path, scratch: Path) -> dict[str, torch.Tensor]:
    """The full model tensors of a DCP checkpoint directory."""
    dcp_to_torch_save(checkpoint, scratch / f"{checkpoint.parent.parent.name}_{checkpoint.name}.pt")
    return torch.load(scratch / f"{checkpoint.parent.parent.name}_{checkpoint.name}.pt", weights_only=False)["model"]


def test_lora_training_moves_only_the_adapters(single, tmp_path):
    """From the seed checkpoint (step 0) to the last: base tensors bitwise unchanged, every B left zero."""
    run, seed_run = single["lora"], single["lora_seed"]
    assert run.rc == 0 and seed_run.rc == 0, run.stderr + seed_run.stderr
    start = model_state(seed_run.run_dir / "checkpoints" / "step_0", tmp_path)
    end = model_state(run.run_dir / "checkpoints" / f"step_{LORA_STEPS}", tmp_path)
    adapters = sorted(name for name in start if name.endswith((".lora_a", ".lora_b")))
    assert len(adapters) == N_LAYERS * 2 * 2  # q and v, A and B
    frozen = [name for name in start if name not in adapters]
    assert [name for name in frozen if not torch.equal(start[name], end[name])] == []
    for name in adapters:
        if name.endswith(".lora_b"):
            assert torch.count_nonzero(start[name]) == 0 and torch.count_nonzero(end[name]) == end[name].numel()
    assert all(not torch.equal(start[name], end[name]) for name in adapters)
    assert run.column("weight_std/attn.q.lora_b/layer_00")[1] > 0  # B moves off zero on the first step
    assert "weight_std/attn.v.lora_a/mean_over_layers" in run.metrics()[0]


def test_lora_two_ranks_match_one_process(single, two_rank):
    """FSDP2 with frozen and trainable tensors in one group: the same losses on 2 ranks."""
    two = two_rank["lora_2rank"]
    assert_close_series(two.column("loss/train"), single["lora"].column("loss/train"), REL_TOL_WORLD_SIZE, "loss")
    assert_close_series(two.column("grad_norm_total"), single["lora"].column("grad_norm_total"), REL_TOL_WORLD_SIZE, "grad_norm_total")


# ------------------------------------------------------------------------- 6-8. run dir and bad inputs
def make_short_corpus(path: Path) -> None:
    """A valid shard directory (the tests' tokenizer) whose train split is 3 tokens: less than one sequence."""
    tokenizer = build_tokenizer(Tokenizer(name="cl100k_base", max_vocab=512))
    with ShardWriter(path, tokenizer, source="test: a train split shorter than one sequence", val_fraction=0.5) as w:
        w.add_document(tokenizer.encode("hi"), "train")
        w.add_document(tokenizer.encode("def f(x):\n    return x + 1\n" * 20), "val")


@pytest.fixture(scope="module")
def refused(single, out) -> dict:
    """Runs that must be refused (plus --dry-run and --help), after the 'existing' run finished.

    Returns {"runs": name -> Run, "existing_before": tree_state of the existing run dir before them}.
    Every case but 'rerun' writes under its own absent output dir out/refused/<name>.
    """
    assert single["existing"].rc == 0, single["existing"].stderr
    base = out / "refused"
    short_corpus = out / "short_corpus"
    make_short_corpus(short_corpus)
    cases = {
        "rerun": run_args(out, "existing", *TINY, "--training.steps", "2", "--checkpoint.resume", "false"),
        "rerun_auto": run_args(out, "existing", *TINY, "--training.steps", "2"),
        "resume_missing": run_args(base / "resume_missing", "r", *TINY, "--checkpoint.resume", "true"),
        "bad_key": run_args(base / "bad_key", "r", *TINY, "--training.stepz", "3"),
        "bad_tokenizer": run_args(base / "bad_tokenizer", "r", *TINY, "--tokenizer.name", "/nonexistent.tiktoken"),
        "bad_data": run_args(base / "bad_data", "r", *TINY, "--data.dataset", str(out / "no_such_dataset")),
        "short_corpus": run_args(base / "short_corpus", "r", *TINY, "--data.dataset", str(short_corpus)),
        "adapters_dropped": run_args(base / "adapters_dropped", "r", *TINY, "--init.from_checkpoint",
                                     str(out / "lora" / "checkpoints" / f"step_{LORA_STEPS}")),
        "dry_run": run_args(base / "dry_run", "r", *TINY, "--model.ffn_dim", "256",
                            "--data.cache_dir", str(base / "dry_run_cache"), "--dry-run"),
        "dry_run_lora": run_args(base / "dry_run_lora", "r", *TINY, "--model.ffn_dim", "256", "--model.lora_rank", "4",
                                 "--training.trainable", "lora", "--data.cache_dir", str(base / "dry_run_cache"),
                                 "--dry-run"),
        "help": ["--help"],
    }
    before = tree_state(out / "existing")
    results = run_in_one_process(cases, out / "_refused")
    runs = {name: as_run(result, base / name, "r") for name, result in results.items()}
    runs["rerun"].run_dir = runs["rerun_auto"].run_dir = out / "existing"
    return {"runs": runs, "existing_before": before}


def test_rerun_into_existing_run_dir_is_refused_and_changes_nothing(refused, out):
    run = refused["runs"]["rerun"]
    assert run.rc == 2
    line = one_line_error(run.stderr)
    assert "already exists" in line and "--checkpoint.resume" in line and str(out / "existing") in line
    before, after = refused["existing_before"], tree_state(out / "existing")
    assert {"config.toml", "metrics.jsonl", "checkpoints/step_2", "finished.json"} <= set(before)
    assert after == before


def test_rerun_of_a_finished_run_does_nothing(refused, out):
    """The default resume = auto: the same command again finds the run complete and changes nothing."""
    run = refused["runs"]["rerun_auto"]
    assert run.rc == 0 and run.stderr == ""
    assert f"run {out / 'existing'} already trained all 2 steps; nothing to do" in run.stdout
    assert tree_state(out / "existing") == refused["existing_before"]


def test_resume_of_missing_run_dir_is_refused_and_creates_nothing(refused):
    run = refused["runs"]["resume_missing"]
    assert run.rc == 2
    assert "does not exist" in one_line_error(run.stderr)
    assert not run.run_dir.parent.exists()


@pytest.mark.parametrize("case, culprit", [
    ("bad_key", "training.stepz"),
    ("bad_tokenizer", "/nonexistent.tiktoken"),
    ("bad_data", "no_such_dataset"),
    ("short_corpus", "fewer than one sequence"),
    ("adapters_dropped", "holds LoRA adapters the model lacks (layers.0.attn.q.lora_a, ...); merge them"),
])
def test_bad_input_gives_one_line_error_and_touches_nothing(case, culprit, refused):
    """Exit 2, one 'error:' line naming the culprit, and the (absent) output dir is still absent."""
    run = refused["runs"][case]
    assert run.rc == 2, run.stderr
    assert culprit in one_line_error(run.stderr)
    assert not run.run_dir.parent.exists(), \
        f"{case}: {sorted(str(p) for p in run.run_dir.parent.rglob('*'))} created by a refused run"


def test_global_batch_not_divisible_by_ranks_is_refused(out):
    """2 ranks, global batch 3: the ranks exit 2, rank 0 prints one 'error:' line, no run dir is created."""
    run = run_torchrun(out / "indivisible", "r", 2, [*TINY, "--training.global_batch_size", "3",
                                                     "--training.steps", "2"], check=False)
    assert run.rc != 0
    # torchrun reports the first failed rank's code, then every rank's: 2, or -15 for a rank it SIGTERMed first.
    codes = re.findall(r"exitcode\s*:\s*(-?\d+)", run.stderr)
    assert codes and codes[0] == "2" and set(codes) <= {"2", "-15"}, run.stderr[-2000:]
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "training.global_batch_size = 3" in errors[0], errors
    assert not (out / "indivisible").exists(), sorted(str(p) for p in (out / "indivisible").rglob("*"))


def test_dry_run_prints_parameter_count_and_flops_and_creates_nothing(refused):
    """Llama L=2, d=128, 4/2 heads, d_ff=256, vocab 513: parameters and 6N + 12 L H Q T FLOPs/token by hand."""
    run = refused["runs"]["dry_run"]
    assert run.rc == 0, run.stderr
    head_dim = DIM // N_HEADS
    attention = 2 * DIM * DIM + 2 * DIM * N_KV_HEADS * head_dim
    per_layer = attention + 3 * DIM * MITCHELL_FFN_DIM + 2 * DIM  # + attn/mlp RMSNorm weights
    embeddings = VOCAB * DIM
    total = embeddings + N_LAYERS * per_layer + DIM + VOCAB * DIM  # + final norm + untied LM head
    params = re.search(r"# parameters: ([\d,]+) \(([\d,]+) without embeddings\)", run.stdout)
    flops = re.search(r"# training FLOPs/token: ([\d,]+)", run.stdout)
    assert params and flops, run.stdout[-500:]
    assert int(params.group(1).replace(",", "")) == total == 426_880
    assert int(params.group(2).replace(",", "")) == total - embeddings
    expected_flops = 6 * (total - embeddings) + 12 * N_LAYERS * N_HEADS * head_dim * SEQ_LEN
    assert int(flops.group(1).replace(",", "")) == expected_flops
    assert not run.run_dir.parent.exists()
    assert not (run.run_dir.parent.parent / "dry_run_cache").exists()


def test_dry_run_of_lora_counts_frozen_weights_without_weight_gradients(refused):
    """Frozen tensors cost 4N (forward + input gradients), the rank-4 q/v adapters 6N: 4N + 2 N_trainable."""
    plain, lora = refused["runs"]["dry_run"], refused["runs"]["dry_run_lora"]
    assert lora.rc == 0, lora.stderr
    head_dim = DIM // N_HEADS
    adapters = N_LAYERS * (4 * (DIM + DIM) + 4 * (DIM + N_KV_HEADS * head_dim))  # q: 128 -> 128, v: 128 -> 64
    no_emb = int(re.search(r"\(([\d,]+) without embeddings\)", plain.stdout).group(1).replace(",", "")) + adapters
    assert f"# trainable: {adapters:,} parameters without embeddings" in lora.stdout
    expected = 4 * no_emb + 2 * adapters + 12 * N_LAYERS * N_HEADS * head_dim * SEQ_LEN
    assert re.search(r"# training FLOPs/token: ([\d,]+)", lora.stdout).group(1) == f"{expected:,}"


def test_help_exits_zero_and_documents_every_section(refused):
    run = refused["runs"]["help"]
    assert run.rc == 0 and run.stderr == ""
    assert run.stdout.startswith("usage: train.py")
    for option in ("--training.steps", "--init.scheme", "--checkpoint.resume", "--activation_checkpoint.mode",
                   "--parallelism.data_parallel_replicate_degree", "--metrics.log_freq"):
        assert option in run.stdout
