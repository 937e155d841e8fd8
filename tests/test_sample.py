"""scripts/sample.py on a real 3-step run: greedy decoding equals transformers' generate() on the export
of the same checkpoint (the oracle), sampling is seeded and respects top-k, EOS stops, bad input exits 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from scripts import export, sample
from tests.launch import python
from tests.test_export import hf_model, train_args

PROMPT = "The quick brown"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A 3-step debug Llama run (tokenizer: cl100k_base's first 512 ranks) with checkpoints/step_3."""
    out = tmp_path_factory.mktemp("runs")
    proc = python(["tests/train_main_worker.py", json.dumps([{"argv": train_args(out, "llama")}])])
    assert '"rc": 0' in proc.stdout, proc.stdout
    return out / "llama"


@pytest.fixture(scope="module")
def loaded(run_dir):
    return sample.load_run_model(run_dir, "cpu")


def greedy(loaded, prompt: str, n: int) -> list[int]:
    model, tokenizer = loaded
    return sample.generate(model, tokenizer.encode(prompt), n, 0.0, 0, torch.Generator(), eos_id=-1)


@pytest.mark.multiprocess
def test_greedy_equals_transformers_generate_on_the_export(run_dir, loaded, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert export.main([str(run_dir), "--out", str(tmp_path / "hf")]) == 0
    prompt = loaded[1].encode(PROMPT)
    theirs = hf_model(tmp_path / "hf").generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt),
                                                dtype=torch.long), max_new_tokens=12, do_sample=False)
    assert theirs[0, len(prompt):].tolist() == greedy(loaded, PROMPT, 12)


@pytest.mark.multiprocess
def test_cli_prints_the_greedy_continuation_from_a_run_or_a_step_dir(run_dir, loaded, capsys):
    expected = PROMPT + loaded[1].decode(greedy(loaded, PROMPT, 6))
    proc = python(["scripts/sample.py", str(run_dir), "--prompt", PROMPT, "--max-new-tokens", "6"])
    assert proc.stdout == expected + "\n" and proc.stderr == ""
    assert sample.main([str(run_dir / "checkpoints" / "step_3"), "--prompt", PROMPT, "--max-new-tokens", "6"]) == 0
    assert capsys.readouterr().out == expected + "\n"


@pytest.mark.multiprocess
def test_sampling_is_seeded_and_stays_in_the_top_k(loaded):
    model, tokenizer = loaded
    prompt = tokenizer.encode(PROMPT)

    def draw(seed: int, **kw) -> list[int]:
        return sample.generate(model, prompt, 10, generator=torch.Generator().manual_seed(seed), eos_id=-1, **kw)

    assert draw(1, temperature=1.0, top_k=0) == draw(1, temperature=1.0, top_k=0)
    assert draw(1, temperature=1.0, top_k=0) != draw(2, temperature=1.0, top_k=0)
    assert draw(3, temperature=1.0, top_k=1) == greedy(loaded, PROMPT, 10)
    with torch.no_grad():
        top3 = set(model(torch.tensor([prompt]))[0, -1].topk(3).indices.tolist())
    generator = torch.Generator().manual_seed(0)
    firsts = {sample.generate(model, prompt, 1, 100.0, 3, generator, eos_id=-1)[0] for _ in range(30)}
    assert firsts == top3  # a hot softmax over the 3 kept logits: all 3 drawn, nothing else


@pytest.mark.multiprocess
def test_generation_stops_at_eos(loaded):
    first = greedy(loaded, PROMPT, 1)[0]
    model, tokenizer = loaded
    assert sample.generate(model, tokenizer.encode(PROMPT), 10, 0.0, 0, torch.Generator(), eos_id=first) == [first]


def test_bad_input_is_a_one_line_error(tmp_path, capsys):
    assert sample.main([str(tmp_path / "absent")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip().count("\n") == 0 and "absent does not exist" in err
    with pytest.raises(SystemExit) as exit_info:
        sample.main([str(tmp_path), "--max-new-tokens", "0"])
    assert exit_info.value.code == 2 and "--max-new-tokens must be >= 1" in capsys.readouterr().err
