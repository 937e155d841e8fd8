"""Embedded corpus cache, shard format and the world-size-invariant batch loader of components/data.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from components.config import Data, Tokenizer
from components.data import (
    HeldOutPrefix,
    ShardWriter,
    TokenBatches,
    TokenDataset,
    embedded_files,
    ensure_dataset,
    read_manifest,
    split_of,
)
from components.tokenizer import build_tokenizer
from tests.launch import REPO


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(Tokenizer(name="cl100k_base", max_vocab=512))


def _fake_stdlib(root: Path, n_files: int = 40) -> Path:
    """A small source tree: n_files modules, plus dirs and files the corpus must skip."""
    for i in range(n_files):
        package = root / f"pkg{i % 4}"
        package.mkdir(parents=True, exist_ok=True)
        body = "".join(f"def function_{i}_{j}(x):\n    return x * {i + j}  # line {j}\n" for j in range(10 + i))
        (package / f"module_{i:02d}.py").write_text(f'"""Module {i}."""\n' + body)
    (root / "pkg0" / "__init__.py").write_text("")  # empty: skipped
    for skipped in ("site-packages", "test", "pkg1/__pycache__"):
        (root / skipped).mkdir(parents=True, exist_ok=True)
        (root / skipped / "skip_me.py").write_text("raise RuntimeError('must not be in the corpus')\n")
    (root / "notes.txt").write_text("not python\n")
    return root


@pytest.fixture()
def small_stdlib(tmp_path):
    return _fake_stdlib(tmp_path / "stdlib")


def _expected_streams(root: Path, tokenizer, val_fraction: float) -> dict[str, list[int]]:
    """The two token streams computed independently: sorted files, each + EOS, split by path hash."""
    streams = {"train": [], "val": []}
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        rel = path.relative_to(root).as_posix()
        if path.stat().st_size == 0 or {"site-packages", "test", "__pycache__"} & set(rel.split("/")):
            continue
        streams[split_of(rel, val_fraction)] += tokenizer.encode(path.read_text()) + [tokenizer.eos_id]
    return streams


def test_embedded_corpus_builds_exact_disjoint_splits_and_is_cached(tmp_path, small_stdlib, tokenizer, monkeypatch):
    cfg = Data(cache_dir=str(tmp_path / "cache"), val_fraction=0.2)
    path = ensure_dataset(cfg, tokenizer, stdlib=small_stdlib)
    assert path.parent.name == tokenizer.fingerprint
    expected = _expected_streams(small_stdlib, tokenizer, 0.2)
    manifest = read_manifest(path)
    assert manifest["dtype"] == "uint16" and manifest["eos_id"] == 512
    assert manifest["splits"]["train"]["documents"] + manifest["splits"]["val"]["documents"] == 40
    for split in ("train", "val"):
        dataset = TokenDataset(path, split)
        assert len(expected[split]) > 0 and dataset.n_tokens == len(expected[split])
        # Train and val are exactly the EOS-joined files of their split, so no document is in both.
        assert dataset.read(0, dataset.n_tokens).tolist() == expected[split]
        assert dataset.n_documents == expected[split].count(tokenizer.eos_id)
    assert 0 < manifest["splits"]["val"]["documents"] < 20

    manifest_mtime = (path / "manifest.json").stat().st_mtime_ns
    shard_mtime = (path / "train_00000.bin").stat().st_mtime_ns
    monkeypatch.setattr(type(tokenizer), "encode_batch", lambda *a, **k: pytest.fail("cache was rebuilt"))
    time.sleep(0.01)
    assert ensure_dataset(cfg, tokenizer, stdlib=small_stdlib) == path
    assert (path / "manifest.json").stat().st_mtime_ns == manifest_mtime
    assert (path / "train_00000.bin").stat().st_mtime_ns == shard_mtime
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp dirs left


def test_size_cap_keeps_a_sorted_prefix(small_stdlib):
    every = embedded_files(small_stdlib, max_bytes=10**9)
    assert len(every) == 40 and [e[0] for e in every] == sorted(e[0] for e in every)
    cap = sum(e[2] for e in every[:7]) + 1
    assert [e[0] for e in embedded_files(small_stdlib, cap)] == [e[0] for e in every[:7]]
    with pytest.raises(ValueError, match="no non-empty .py file"):
        embedded_files(small_stdlib, max_bytes=10)


@pytest.mark.multiprocess
def test_damaged_cache_is_rebuilt_and_stale_temp_removed(tmp_path, small_stdlib, tokenizer):
    cfg = Data(cache_dir=str(tmp_path / "cache"), val_fraction=0.2)
    path = ensure_dataset(cfg, tokenizer, stdlib=small_stdlib)
    good_size = (path / "train_00000.bin").stat().st_size
    with open(path / "train_00000.bin", "r+b") as shard:
        shard.truncate(good_size // 2)  # as if killed while copying
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = path.parent / f"{path.name}.tmp-{socket.gethostname()}-{int(dead.stdout)}-abcd1234"
    live = path.parent / f"{path.name}.tmp-{socket.gethostname()}-{os.getppid()}-abcd1234"
    for temp in (stale, live):
        temp.mkdir()
        (temp / "train_00000.bin").write_bytes(b"\0" * 10)
    with pytest.raises(ValueError, match=f"has {good_size // 2} bytes but the manifest says {good_size // 2} tokens"):
        TokenDataset(path, "train")
    assert ensure_dataset(cfg, tokenizer, stdlib=small_stdlib) == path
    assert (path / "train_00000.bin").stat().st_size == good_size
    assert not stale.exists() and live.exists()  # a build whose process still runs is left alone


@pytest.mark.parametrize("new_id", [0xFFFF, None])  # out of the 512-token vocabulary; another valid id
def test_changed_cache_bytes_are_caught_when_opened_and_rebuilt(tmp_path, small_stdlib, tokenizer, capsys, new_id):
    """Same size, valid manifest: before the checksums, 0xFFFF gave an IndexError in the embedding at whichever
    step sampled it, and a valid id silently changed the data."""
    cfg = Data(cache_dir=str(tmp_path / "cache"), val_fraction=0.2)
    path = ensure_dataset(cfg, tokenizer, stdlib=small_stdlib)
    capsys.readouterr()
    shard = path / "train_00000.bin"
    good = shard.read_bytes()
    tokens = np.frombuffer(good, dtype="<u2").copy()
    tokens[len(tokens) // 2] = new_id if new_id is not None else (tokens[len(tokens) // 2] + 1) % 512
    shard.write_bytes(tokens.tobytes())
    assert len(TokenDataset(path, "train")) == len(tokens)  # the sizes alone see nothing wrong
    assert ensure_dataset(cfg, tokenizer, stdlib=small_stdlib) == path
    assert capsys.readouterr().err.splitlines()[0] == (
        f"initlab: rebuilding the embedded-corpus cache ({shard} does not match the CRC-32 recorded when it was "
        "written)")
    assert shard.read_bytes() == good
    prepared = tmp_path / "prepared"  # the same bytes as a prepared dataset: nothing to rebuild from, so refused
    path.rename(prepared)
    (prepared / "train_00000.bin").write_bytes(tokens.tobytes())
    with pytest.raises(ValueError) as refused:
        ensure_dataset(Data(dataset=str(prepared)), tokenizer)
    assert str(refused.value) == (f"{prepared / 'train_00000.bin'} does not match the CRC-32 recorded when it was "
                                  "written (its bytes changed since): the dataset is damaged; re-create it with "
                                  "scripts/prepare_data.py --output <new dir>")
    assert ensure_dataset(Data(dataset=str(prepared)), tokenizer, verify=False) == prepared  # asked not to check


def test_a_cache_without_checksums_is_rebuilt_with_them(tmp_path, small_stdlib, tokenizer, capsys):
    cfg = Data(cache_dir=str(tmp_path / "cache"), val_fraction=0.2)
    path = ensure_dataset(cfg, tokenizer, stdlib=small_stdlib)
    manifest = read_manifest(path)
    recorded = [shard.pop("crc32") for info in manifest["splits"].values() for shard in info["shards"]]
    (path / "manifest.json").write_text(json.dumps(manifest))  # as an older initlab wrote it
    fingerprint = TokenDataset(path, "train").fingerprint
    assert ensure_dataset(cfg, tokenizer, stdlib=small_stdlib) == path
    assert "was written without shard checksums" in capsys.readouterr().err
    rebuilt = read_manifest(path)
    assert [shard["crc32"] for info in rebuilt["splits"].values() for shard in info["shards"]] == recorded
    assert TokenDataset(path, "train").fingerprint == fingerprint  # a run's data position still loads


def test_real_embedded_corpus_builds_quickly(tmp_path):
    tokenizer = build_tokenizer(Tokenizer(name="cl100k_base", max_vocab=4096))
    start = time.perf_counter()
    path = ensure_dataset(Data(cache_dir=str(tmp_path)), tokenizer)
    seconds = time.perf_counter() - start
    splits = read_manifest(path)["splits"]
    # Measured on CPython 3.11: 731 files, 12.1 MB, ~4.0M train / ~67k val tokens in ~4 s.
    assert seconds < 20
    assert splits["train"]["documents"] > 300 and splits["train"]["tokens"] > 1_000_000
    assert splits["val"]["documents"] >= 1 and splits["val"]["tokens"] > 2 * 257
    batch = TokenBatches(TokenDataset(path, "val"), seq_len=256, global_batch_size=4, seed=0).get(0, slice(None))
    assert batch.shape == (4, 257) and int(batch.max()) <= tokenizer.eos_id


def test_prepared_dataset_errors_are_one_line(tmp_path, small_stdlib, tokenizer):
    with pytest.raises(FileNotFoundError, match="is not a directory") as caught:
        ensure_dataset(Data(dataset=str(tmp_path / "missing")), tokenizer)
    (tmp_path / "half").mkdir()
    with pytest.raises(ValueError, match="has no manifest.json") as caught_half:
        ensure_dataset(Data(dataset=str(tmp_path / "half")), tokenizer)
    built = ensure_dataset(Data(cache_dir=str(tmp_path / "cache"), val_fraction=0.2), tokenizer, stdlib=small_stdlib)
    other = build_tokenizer(Tokenizer(name="cl100k_base", max_vocab=1024))
    with pytest.raises(ValueError, match="was tokenized with cl100k_base \\(first 512 ranks\\)") as caught_other:
        ensure_dataset(Data(dataset=str(built)), other)
    assert ensure_dataset(Data(dataset=str(built)), tokenizer) == built
    for error in (caught, caught_half, caught_other):
        assert "\n" not in str(error.value)


def _stream_dataset(tmp_path, tokenizer, n_tokens: int, shard_tokens: int) -> TokenDataset:
    """A train split whose stream is 0, 1, 2, ... (mod 500) so every window is recognisable."""
    target = tmp_path / "counting"
    with ShardWriter(target, tokenizer, "counting", val_fraction=0.0, shard_tokens=shard_tokens) as writer:
        for start in range(0, n_tokens, 100):  # documents of 99 ids + EOS
            writer.add_document([i % 500 for i in range(start, start + 99)], "train")
    return TokenDataset(target, "train")


def test_shards_concatenate_across_boundaries(tmp_path, tokenizer):
    dataset = _stream_dataset(tmp_path, tokenizer, n_tokens=1000, shard_tokens=37)
    manifest = read_manifest(dataset.path)
    assert len(manifest["splits"]["train"]["shards"]) == 28  # ceil(1000 / 37)
    expected = np.array([tokenizer.eos_id if i % 100 == 99 else i % 500 for i in range(1000)])
    assert np.array_equal(dataset.read(0, 1000), expected)
    assert np.array_equal(dataset.read(30, 80), expected[30:80])  # spans shards 0, 1, 2
    assert np.array_equal(dataset.read(74, 74), expected[74:74])


def test_global_batch_is_the_same_for_one_and_two_ranks(tmp_path, tokenizer):
    dataset = _stream_dataset(tmp_path, tokenizer, n_tokens=2000, shard_tokens=300)
    one_rank = TokenBatches(dataset, seq_len=16, global_batch_size=8, seed=3)
    rank0, rank1 = (TokenBatches(TokenDataset(dataset.path, "train"), 16, 8, 3) for _ in range(2))
    for step in (0, 1, 7, 40):  # 124 windows / 8 rows: step 40 is in the third epoch
        whole = one_rank.get(step, slice(0, 8))
        halves = torch.cat([rank0.get(step, slice(0, 4)), rank1.get(step, slice(4, 8))])
        assert whole.dtype == torch.long and whole.shape == (8, 17)
        assert torch.equal(whole, halves)
        assert torch.equal(one_rank.get(step, slice(2, 3)), whole[2:3])
    assert not torch.equal(one_rank.get(0, slice(None)), one_rank.get(1, slice(None)))
    other_seed = TokenBatches(dataset, 16, 8, seed=4)
    assert not torch.equal(one_rank.get(0, slice(None)), other_seed.get(0, slice(None)))


def test_windows_cover_each_epoch_once_and_shift_into_targets(tmp_path, tokenizer):
    dataset = _stream_dataset(tmp_path, tokenizer, n_tokens=1000, shard_tokens=128)
    seq_len, batch = 16, 4
    loader = TokenBatches(dataset, seq_len, batch, seed=0)
    assert loader.n_windows == (1000 - 1) // seq_len == 62
    steps_per_epoch = -(-62 // batch)  # 16 steps; step 15 takes 2 windows of epoch 0 and 2 of epoch 1
    first_epoch = np.concatenate([loader.window_ids(s, slice(None)) for s in range(steps_per_epoch)])[:62]
    assert sorted(first_epoch.tolist()) == list(range(62))
    assert not np.array_equal(loader.window_order(0), loader.window_order(1))
    stream = dataset.read(0, dataset.n_tokens)
    for step in range(steps_per_epoch):  # includes window 61, which ends at token 62 * 16 + 1 = 993 <= 1000
        rows = loader.get(step, slice(None))
        for window, row in zip(loader.window_ids(step, slice(None)), rows):
            assert torch.equal(row, torch.from_numpy(stream[window * seq_len:window * seq_len + seq_len + 1]))
        inputs, targets = rows[:, :-1], rows[:, 1:]
        assert inputs.shape == targets.shape == (batch, seq_len)
        assert torch.equal(inputs[:, 1:], targets[:, :-1])  # target t is input t + 1


def test_held_out_prefix_is_the_stream_in_order_split_evenly_across_ranks(tmp_path, tokenizer):
    """val_tokens 100 at seq_len 16: windows 0..5 (targets 1..96 of the stream), whatever the rank count; each
    world size's shares cover them once, in order, at most ceil(6 / ranks) each; past the end rows wrap."""
    dataset = _stream_dataset(tmp_path, tokenizer, n_tokens=1000, shard_tokens=128)
    prefix = HeldOutPrefix(dataset, seq_len=16, n_tokens=100)
    assert (prefix.n_windows, prefix.n_targets) == (6, 96)
    stream = torch.from_numpy(dataset.read(0, 97))
    rows = prefix.get(0, 6)
    assert rows.shape == (6, 17) and torch.equal(rows[:, 1:].flatten(), stream[1:])
    for n_ranks in (1, 2, 4, 5, 8):
        shares = [prefix.share(rank, n_ranks) for rank in range(n_ranks)]
        assert [w for share in shares for w in share] == list(range(6))
        assert max(len(share) for share in shares) == -(-6 // n_ranks)
    assert [prefix.share(rank, 4) for rank in range(4)] == [range(0, 2), range(2, 4), range(4, 6), range(6, 6)]
    assert torch.equal(prefix.get(5, 3), torch.stack([rows[5], rows[0], rows[1]]))
    assert HeldOutPrefix(dataset, seq_len=16, n_tokens=3).n_windows == 1  # at least one sequence
    assert HeldOutPrefix(dataset, seq_len=16, n_tokens=992).n_windows == 62  # all (1000 - 1) // 16 windows
    with pytest.raises(ValueError, match=r"metrics.val_tokens = 1008 needs 63 sequences .* holds 1000 tokens "
                                         r"\(62 sequences\); set metrics.val_tokens <= 992"):
        HeldOutPrefix(dataset, seq_len=16, n_tokens=1008)



@pytest.mark.parametrize("n_tokens", [0, 16])
def test_a_validation_split_without_one_sequence_names_val_freq_0(tmp_path, tokenizer, n_tokens):
    with ShardWriter(tmp_path / "data", tokenizer, "test", val_fraction=0.0) as writer:
        writer.add_document(list(range(100)), "train")
        if n_tokens:
            writer.add_document(list(range(n_tokens - 1)), "val")  # + EOS: n_tokens
    dataset = TokenDataset(tmp_path / "data", "val")
    assert dataset.n_tokens == n_tokens
    with pytest.raises(ValueError, match=f"holds {n_tokens} tokens, fewer than one sequence of seq_len \\+ 1 = 17: "
                                         f"nothing to validate on; add --metrics.val_freq 0 to train without"):
        HeldOutPrefix(dataset, seq_len=16, n_tokens=8192)


def test_loader_state_round_trips_and_rejects_mismatch(tmp_path, tokenizer):
    dataset = _stream_dataset(tmp_path, tokenizer, n_tokens=1000, shard_tokens=1000)
    loader = TokenBatches(dataset, 16, 4, seed=1)
    state = json.loads(json.dumps(loader.state_dict()))  # survives a JSON/checkpoint round trip
    TokenBatches(TokenDataset(dataset.path, "train"), 16, 4, seed=1).load_state_dict(state)
    with pytest.raises(ValueError, match=r"seed 1 -> 2; global_batch_size 4 -> 8") as caught:
        TokenBatches(dataset, 16, 8, seed=2).load_state_dict(state)
    assert "\n" not in str(caught.value)


def test_split_shorter_than_one_sequence_is_refused(tmp_path, tokenizer):
    dataset = _stream_dataset(tmp_path, tokenizer, n_tokens=100, shard_tokens=1000)
    assert TokenBatches(dataset, seq_len=99, global_batch_size=1, seed=0).n_windows == 1
    with pytest.raises(ValueError, match="has 100 tokens, fewer than one sequence of seq_len \\+ 1 = 101"):
        TokenBatches(dataset, seq_len=100, global_batch_size=1, seed=0)
    with pytest.raises(ValueError, match="has 0 tokens"):
        TokenBatches(TokenDataset(dataset.path, "val"), seq_len=8, global_batch_size=1, seed=0)


def test_writer_leaves_nothing_behind_on_failure(tmp_path, tokenizer):
    target = tmp_path / "out"
    with pytest.raises(ValueError, match="no non-empty documents in nothing"):
        with ShardWriter(target, tokenizer, "nothing", val_fraction=0.1):
            pass
    with pytest.raises(RuntimeError, match="interrupted"):
        with ShardWriter(target, tokenizer, "half", val_fraction=0.0) as writer:
            writer.add_document([1, 2, 3], "train")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.multiprocess
def test_the_trainer_imports_neither_datasets_nor_wandb():
    code = "import sys, train; print([name for name in ('datasets', 'wandb', 'components.data') if name in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}, check=True)
    assert result.stdout.strip() == "['components.data']"  # optional packages are imported only when used


def test_large_vocabulary_is_stored_as_uint32(tmp_path):
    full = build_tokenizer(Tokenizer(name="cl100k_base"))
    ids = full.encode("Grüße aus Köln: 日本語テキスト, naïve café, Pokémon")
    assert max(ids) >= 2**16  # ids that uint16 would wrap
    with ShardWriter(tmp_path / "big", full, "unicode", val_fraction=0.0) as writer:
        writer.add_document(ids, "train")
    assert read_manifest(tmp_path / "big")["dtype"] == "uint32"
    assert TokenDataset(tmp_path / "big", "train").read(0, len(ids) + 1).tolist() == ids + [full.eos_id]
