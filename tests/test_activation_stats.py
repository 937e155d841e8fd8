"""components/activation_stats.py against a direct recomputation of every statistic; compile, AC, ranks.

The oracle (``direct_statistics``) re-runs each block's pieces by hand in float64 statistics and
materializes the full causal attention logits before taking the sampled rows, so it shares no
code path with the hooks. Trainer-level cases run train.py: 2 gloo ranks vs 1 process, and
activation checkpointing vs none.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

from components.activation_stats import LOGIT_QUERIES, ActivationStats
from distributed.parallelize import apply_activation_checkpointing, apply_compile
from models import build_model, make_model_args
from models.common import apply_rope, scaled
from tests.launch import build_training_data, python, side_by_side, torchrun

VOCAB, SEQ_LEN, BATCH = 97, 100, 2  # SEQ_LEN > LOGIT_QUERIES: the logit max really samples
TOLERANCE = 1e-5  # relative, float32 model vs float64 statistics of the same tensors


def tiny_model(family: str, n_layers: int = 2, **overrides) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(make_model_args(family, "debug", VOCAB, SEQ_LEN, {"n_layers": n_layers, **overrides}))


def batch() -> torch.Tensor:
    return torch.randint(0, VOCAB, (BATCH, SEQ_LEN), generator=torch.Generator().manual_seed(1))


def rms(x: torch.Tensor) -> float:
    return x.double().square().mean().sqrt().item()


def sampled_logit_max(attn: torch.nn.Module, x: torch.Tensor, rope: torch.Tensor | None) -> float:
    """max |q.k| * scale over the documented query rows of the FULL causal logit matrix."""
    bsz, seqlen, _ = x.shape
    q = attn.q(x).view(bsz, seqlen, attn.n_heads, attn.head_dim)
    k = attn.k(x).view(bsz, seqlen, attn.n_kv_heads, attn.head_dim)
    if rope is not None:
        q, k = apply_rope(q, rope), apply_rope(k, rope)
    k = k.repeat_interleave(attn.n_heads // attn.n_kv_heads, dim=2)
    scale = attn.scale if attn.scale is not None else attn.head_dim ** -0.5
    logits = torch.einsum("bthd,bshd->bhts", q.double(), k.double()) * scale  # [B, H, T, T]
    causal = torch.ones(seqlen, seqlen, dtype=torch.bool).tril()
    n = min(LOGIT_QUERIES, seqlen)
    rows = [round(i * (seqlen - 1) / (n - 1)) for i in range(n)]
    return logits.abs().masked_fill(~causal, 0.0)[:, :, rows].max().item()


@torch.no_grad()
def direct_statistics(model: torch.nn.Module, tokens: torch.Tensor) -> dict[str, float]:
    """Every logged statistic from a hand-written forward of a pre-norm TransformerBase."""
    h = scaled(model.embed(tokens), model.args.embedding_multiplier)
    rope = model.rope_for(tokens.shape[1])
    values = {"act_rms/residual/embedding": rms(h)}
    for i, block in enumerate(model.layers.values()):
        x = block.attn_norm(h)
        values[f"attn_logit_max/layer_{i:02d}"] = sampled_logit_max(block.attn, x, rope)
        attn_out = scaled(block.attn(x, rope), block.residual_multiplier)
        h = h + attn_out
        y = block.mlp_norm(h)
        pre_activation = (block.mlp.gate if hasattr(block.mlp, "gate") else block.mlp.up)(y)
        mlp_out = scaled(block.mlp(y), block.residual_multiplier)
        h = h + mlp_out
        values.update({f"act_rms/attn_out/layer_{i:02d}": rms(attn_out), f"act_rms/mlp_out/layer_{i:02d}": rms(mlp_out),
                       f"act_std/mlp_pre/layer_{i:02d}": pre_activation.double().std().item(),
                       f"act_rms/residual/layer_{i:02d}": rms(h)})
    logits = model.output_logits(scaled(model.final_norm(h), model.args.logit_multiplier))
    n = min(LOGIT_QUERIES, tokens.shape[1])
    values["act_rms/logits"] = rms(logits[:, [round(i * (tokens.shape[1] - 1) / (n - 1)) for i in range(n)]])
    return values


def assert_close(measured: dict[str, float], expected: dict[str, float], rel: float = TOLERANCE) -> None:
    assert measured.keys() == expected.keys()
    errors = {k: abs(measured[k] - v) / abs(v) for k, v in expected.items()}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= rel, f"{worst}: {measured[worst]} vs {expected[worst]}"


def measured_statistics(model: torch.nn.Module, stats: ActivationStats, tokens: torch.Tensor) -> dict[str, float]:
    with stats.capture():
        logits = model(tokens)
    logits.float().square().mean().backward()
    return stats.compute()


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_statistics_match_direct_computation(family):
    model = tiny_model(family)
    stats = ActivationStats(model)
    measured = measured_statistics(model, stats, batch())
    assert len(measured) == 1 + 5 * 2 + 1  # embedding, 5 per block, logits
    assert_close(measured, direct_statistics(model, batch()))


def test_mup_multipliers_are_in_the_branch_rms_and_logit_scale():
    model = tiny_model("llama", residual_multiplier=0.5, attn_scale=0.3, logit_multiplier=0.25)
    measured = measured_statistics(model, ActivationStats(model), batch())
    assert_close(measured, direct_statistics(model, batch()))


def test_only_forwards_inside_capture_are_measured_and_disabled_registers_nothing():
    model = tiny_model("llama")
    stats = ActivationStats(model)
    with pytest.raises(RuntimeError, match="inside ActivationStats.capture"):
        stats.compute()
    first = measured_statistics(model, stats, batch())
    model(batch() % 7)  # a different forward outside capture() changes nothing
    assert stats.compute() == first
    with stats.capture(measure=False):  # a non-logging step
        model(batch() % 5)
    assert stats.compute() == first
    plain = tiny_model("llama")
    off = ActivationStats(plain, enabled=False)
    with off.capture():
        plain(batch())
    assert off.compute() == {} and off.charts() == {}
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in plain.modules())


def test_activation_checkpointing_recomputation_does_not_count_twice():
    model = tiny_model("llama")
    expected = direct_statistics(model, batch())
    apply_activation_checkpointing(model, "full", 1)
    calls = []
    model.layers["0"]._checkpoint_wrapped_module.attn.register_forward_hook(lambda *_: calls.append(1))
    stats = ActivationStats(model)
    assert_close(measured_statistics(model, stats, batch()), expected)
    assert len(calls) == 2  # the attention ran twice (forward + recomputation), its statistics once


@pytest.mark.slow
def test_compiled_blocks_match_eager_with_and_without_checkpointing():
    model = tiny_model("gpt2", n_layers=2, dim=32, n_heads=2)
    eager = measured_statistics(model, ActivationStats(model), batch())
    apply_activation_checkpointing(model, "selective", 2)  # block 0 checkpointed, block 1 not
    stats = ActivationStats(model)
    apply_compile(model)  # the trainer's per-block torch.compile(fullgraph=True): a graph break would raise
    torch._dynamo.utils.counters.clear()
    for measure in (False, True, False, True):
        with stats.capture(measure):
            logits = model(batch())
        logits.float().square().mean().backward()
    assert_close(stats.compute(), eager)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 4  # off and on, for each kind of block
    torch._dynamo.reset()


def test_graph_off_has_the_ops_of_a_model_without_statistics():
    def ops(with_stats: bool, measure: bool) -> int:
        model = tiny_model("llama", n_layers=2)
        stats = ActivationStats(model, enabled=with_stats)
        counter = CompileCounterWithBackend("eager")
        for block in model.layers.values():
            block.compile(fullgraph=True, backend=counter)
        with stats.capture(measure):
            model(batch())
        assert counter.frame_count == 1  # one graph for both blocks
        return counter.op_count

    try:
        assert ops(with_stats=True, measure=False) == ops(with_stats=False, measure=False)
        assert ops(with_stats=True, measure=True) > ops(with_stats=False, measure=False)
    finally:
        torch._dynamo.reset()


# ------------------------------------------------------------------ through train.py
TRAIN = ["train.py", "--config", "train_configs/debug.toml", "--model.n_layers", "2", "--training.seq_len", "32",
         "--training.global_batch_size", "4", "--training.steps", "2", "--metrics.log_freq", "1",
         "--metrics.val_freq", "0", "--metrics.log_variance_stats", "true"]
FAMILIES = ("act_rms/", "act_std/", "attn_logit_max/", "grad_rms/")


def logged(run_dir: Path) -> list[dict[str, float]]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k.startswith(FAMILIES)} for r in records]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, list[dict[str, float]]]:
    out = tmp_path_factory.mktemp("variance_runs")
    args = ["--job.output_dir", str(out)]
    build_training_data(TRAIN[1:])  # before the runs side by side, not by each of them at once
    side_by_side(lambda: torchrun([*TRAIN, *args, "--job.run_name", "two"], nproc=2, timeout=300),
                 lambda: python([*TRAIN, *args, "--job.run_name", "one"], timeout=300, env={"OMP_NUM_THREADS": "1"}),
                 lambda: python([*TRAIN, *args, "--job.run_name", "ac", "--activation_checkpoint.mode", "full"],
                                timeout=300, env={"OMP_NUM_THREADS": "1"}))
    return {name: logged(out / name) for name in ("one", "two", "ac")}


@pytest.mark.multiprocess
def test_trainer_logs_every_statistic_at_every_logging_step(runs):
    """Steps 1, 2 carry every family; step 0 (before any update) the forward-only ones, measured on step 1's
    first micro-batch with the same weights: step 1's values."""
    initial, first, _ = runs["one"]
    assert sorted(initial) == sorted(k for k in first if not k.startswith("grad_rms/"))
    assert_close(initial, {k: first[k] for k in initial}, rel=1e-5)
    for record in runs["one"][1:]:
        assert len([k for k in record if k.startswith(("act_", "attn_logit_max/"))]) == 1 + 5 * 2 + 1
        assert len([k for k in record if k.startswith("grad_rms/")]) == 7 * 2 + 2  # block roles + embedding, head
        assert all(math.isfinite(v) and v > 0 for v in record.values())


@pytest.mark.multiprocess
@pytest.mark.parametrize("other", ["two", "ac"])
def test_two_ranks_and_activation_checkpointing_match_one_plain_process(runs, other):
    for one, measured in zip(runs["one"], runs[other], strict=True):
        assert_close(measured, one, rel=1e-4)
