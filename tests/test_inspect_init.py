"""scripts/inspect_init.py: the docs/design.md §10 contract, world-size-invariant digests, no full copies.

The multi-rank runs go through a small runner (written to tmp_path) that shrinks
``init_schemes.apply.BLOCK_NUMEL`` to 4096 elements -- so every 2-D debug weight spans many
generator blocks whose edges fall inside shards -- and records, for each ``fill_`` call, the
largest new storage any aten op created while it ran (a TorchDispatchMode: an output whose storage
no input shares is an allocation; in-place results, views and the DTensor's own shard are not).
"""

from __future__ import annotations

import importlib.util
import json
import math
import re

import pytest
from scipy.stats import truncnorm

from tests.launch import REPO, python, side_by_side, torchrun

CONFIG = "train_configs/debug.toml"
BLOCK = 4096
# 301 rows: uneven shards for 2 and 4 ranks (151/150, 76/76/76/73), none aligned with 32-row blocks.
SMALL = ["--tokenizer.max_vocab", "256", "--model.vocab_size", "301"]
CONTRACT_KEYS = {"name", "role", "layer", "shape", "std", "expected_std", "mean", "absmax", "sha256"}

RUNNER = '''
"""inspect_init.py with BLOCK_NUMEL = argv[1]; writes argv[2]/rank_<RANK>.json: per-parameter allocations."""
import json, os, runpy, sys

import torch
from torch.distributed.tensor import DTensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import init_schemes.apply as apply

apply.BLOCK_NUMEL = int(sys.argv[1])
out_dir = sys.argv[2]
records = {}


def storage_ptr(t):
    local = t._local_tensor if isinstance(t, DTensor) else t
    return local.untyped_storage().data_ptr()


class LargestAllocation(TorchDispatchMode):
    """Largest new storage (in elements) created by any op: outputs whose storage no input had."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {storage_ptr(t) for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and storage_ptr(t) not in inputs:
                local = t._local_tensor if isinstance(t, DTensor) else t
                self.largest = max(self.largest, local.untyped_storage().nbytes() // local.element_size())
        return out


original_fill = apply.fill_


def recording_fill(param, spec, seed, key, local_rows=apply.whole_rows):
    with LargestAllocation() as mode:
        original_fill(param, spec, seed, key, local_rows)
    local, _ = local_rows(param)
    records[key] = {"largest": mode.largest, "numel": param.numel(), "local_numel": local.numel(),
                    "row_numel": param[0].numel() if param.ndim > 1 else 1, "sharded": isinstance(param, DTensor)}


apply.fill_ = recording_fill
sys.argv = ["scripts/inspect_init.py", *sys.argv[3:]]
try:
    runpy.run_path("scripts/inspect_init.py", run_name="__main__")
finally:
    with open(os.path.join(out_dir, f"rank_{os.environ.get('RANK', '0')}.json"), "w") as f:
        json.dump(records, f)
'''


@pytest.fixture(scope="module")
def sharded_runs(tmp_path_factory) -> dict[int, tuple[list[dict], list[dict]]]:
    """world size -> (rank 0's JSON report, every rank's allocation records) for 1, 2 and 4 ranks."""
    root = tmp_path_factory.mktemp("inspect")
    runner = root / "runner.py"
    runner.write_text(RUNNER)

    def launch(world: int) -> tuple[list[dict], list[dict]]:
        out_dir = root / f"world_{world}"
        out_dir.mkdir()
        proc = torchrun([str(runner), str(BLOCK), str(out_dir), "--config", CONFIG, *SMALL, "--init.scheme",
                         "depth_aware", "--json"], world)
        return json.loads(proc.stdout), [json.loads((out_dir / f"rank_{r}.json").read_text()) for r in range(world)]

    one, two = side_by_side(lambda: launch(1), lambda: launch(2))  # 3 ranks on the cores, then the 4 alone
    return {1: one, 2: two, 4: launch(4)}


@pytest.mark.multiprocess
def test_digests_are_identical_for_1_2_4_ranks(sharded_runs):
    reference = {r["name"]: r["sha256"] for r in sharded_runs[1][0]}
    assert len(reference) == 39  # llama debug: embedding, 4 x (2 norms + 7 weights), final norm, head
    for world in (2, 4):
        digests = {r["name"]: r["sha256"] for r in sharded_runs[world][0]}
        assert digests == reference, f"{world} ranks: {sorted(k for k in digests if digests[k] != reference.get(k))}"


@pytest.mark.multiprocess
def test_no_rank_allocates_a_full_copy_of_a_sharded_tensor(sharded_runs):
    checked = 0
    for world in (2, 4):
        for rank_records in sharded_runs[world][1]:
            for key, rec in rank_records.items():
                assert rec["sharded"], key  # FSDP2 shards every parameter, also on world size 1
                assert rec["largest"] < rec["numel"] or rec["numel"] == 0, (world, key, rec)
                if rec["numel"] > BLOCK:
                    # one generator block: whole rows, at most BLOCK elements (rows here are <= 384)
                    assert rec["largest"] <= BLOCK, (world, key, rec)
                    checked += 1
    assert checked > 2 * 30  # the 2-D weights of every rank were exercised


@pytest.mark.multiprocess
def test_json_contract_and_expected_std_formula(sharded_runs):
    reports = sharded_runs[1][0]
    shrink = truncnorm(-3, 3).std()  # torchtitan's head: +-3 sigma
    for r in reports:
        assert set(r) == CONTRACT_KEYS, r["name"]
        assert re.fullmatch(r"[0-9a-f]{64}", r["sha256"])
        assert r["absmax"] >= abs(r["mean"])
        layer = int(r["name"].split(".")[1]) if r["name"].startswith("layers.") else None
        assert r["layer"] == layer
        # depth_aware (passed on the command line) written out: sigma0 = 0.02, L = 4, d = 128
        expected = {
            "tok_embedding": 1.0, "attn.q": 0.02, "attn.k": 0.02, "attn.v": 0.02, "mlp.gate": 0.02,
            "attn.out": 0.02 / math.sqrt(2 * ((layer or 0) + 1)), "mlp.up": 0.02 / math.sqrt(2 * ((layer or 0) + 1)),
            "mlp.out": 0.02 / math.sqrt(2 * ((layer or 0) + 1)), "lm_head": 128 ** -0.5 * shrink, "norm": 0.0,
        }[r["role"]]
        assert r["expected_std"] == pytest.approx(expected, rel=1e-9), r["name"]
        n = math.prod(r["shape"])
        assert abs(r["std"] - expected) <= 5 * expected / math.sqrt(2 * n), r["name"]
    shapes = {r["name"]: r["shape"] for r in reports}
    assert shapes["tok_embedding.weight"] == [301, 128] and shapes["layers.3.attn.k.weight"] == [64, 128]


def load_script():
    """scripts/inspect_init.py as a module (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location("inspect_init", REPO / "scripts" / "inspect_init.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.multiprocess
def test_plain_python_prints_the_table():
    """Without torchrun (a world of one), GPT-2 + scaled_output: one row per parameter, HF's formula."""
    proc = python(["scripts/inspect_init.py", "--config", CONFIG, *SMALL, "--model.name", "gpt2",
                   "--init.scheme", "scaled_output"])
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("# gpt2/debug: L=4 d=128") and "1 rank(s)" in lines[0]
    assert lines[1].split() == ["parameter", "role", "layer", "shape", "dist", "std", "expected", "ratio"]
    rows = [line.split() for line in lines[3:]]
    assert len(rows) == 4 * 16 + 4  # per block 2 LayerNorms (w, b) + 4 attn + 2 mlp linears (w, b); wte, wpe, ln_f
    for name, role, layer, shape, dist, std, expected, ratio in rows:
        formula = {"attn.out": 0.02 / math.sqrt(8), "mlp.out": 0.02 / math.sqrt(8), "norm": 0.0, "bias": 0.0}.get(
            role, 0.02)
        assert float(expected) == pytest.approx(formula, rel=1e-5), name
        assert layer == (name.split(".")[1] if name.startswith("layers.") else "-"), name
        n = math.prod(int(x) for x in shape.split("x"))
        if formula > 0:
            assert dist == "N" and abs(float(ratio) - 1) <= 5 / math.sqrt(2 * n) + 1e-4, name
        else:
            assert ratio == "-" and float(std) == 0.0 and dist in ("=0", "=1"), name


@pytest.mark.parametrize("bad, culprit", [
    (["--init.scheme", "mitchel"], "mitchell"),
    (["--model.n_heads", "5"], "model.n_heads"),
    (["--config", "train_configs/no_such.toml"], "no_such.toml"),
    (["--init.base_std", "-1"], "init.base_std"),
])
def test_bad_config_is_a_one_line_error(bad, culprit, capsys):
    assert load_script().main(["--config", CONFIG, *SMALL, *bad]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.count("\n") == 1 and err.startswith("error: ") and culprit in err, err


@pytest.mark.multiprocess
def test_bad_config_exits_2_from_the_shell():
    proc = python(["scripts/inspect_init.py", "--config", CONFIG, "--init.scheme", "mitchel"], check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.strip().splitlines() == ["error: init.scheme = 'mitchel' is unknown; did you mean 'mitchell'?"]
