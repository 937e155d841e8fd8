"""initlab's tiktoken BPE (components/tokenizer.py) as a Hugging Face ``tokenizers`` ``tokenizer.json``.

The conversion is transformers' ``TikTokenConverter`` (transformers/convert_slow_tokenizer.py): each
token of rank r > 255 bytes long becomes the merges (left, right) of its splits into two lower-rank
tokens, ordered by r, so HF's lowest-merge-rank-first BPE picks tiktoken's lowest-rank-first merges;
``ignore_merges`` takes a whole pre-token found in the vocabulary at once, as tiktoken does; bytes
map to printable characters with GPT-2's ``bytes_to_unicode`` (the ByteLevel pre-tokenizer's). The
split regex is the tokenizer's own, so any ``max_vocab`` slice converts (its ranks are a closed
set: every kept token's merge halves have lower ranks). ``<|endoftext|>`` is the one special token.
"""

from __future__ import annotations

import re

from components.tokenizer import EOS_TOKEN, TextTokenizer


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (openai/gpt-2 src/encoder.py)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, shift = list(printable), 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + shift)
            shift += 1
    return dict(zip(printable, map(chr, chars)))


def vocab_and_merges(ranks: dict[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """({byte-level token string: id}, merges in priority order) of tiktoken ``ranks``."""
    to_char = bytes_to_unicode()

    def as_text(token: bytes) -> str:
        return "".join(to_char[byte] for byte in token)

    merges: list[tuple[int, int, int, bytes, bytes]] = []  # (merged rank, left rank, right rank, left, right)
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort()
    return ({as_text(token): rank for token, rank in ranks.items()},
            [(as_text(left), as_text(right)) for *_, left, right in merges])


def onig_pattern(pattern: str) -> str:
    """``pattern`` for the Oniguruma engine of ``tokenizers``: there ``X{1,3}+`` is not possessive but a
    repetition of ``X{1,3}`` (so cl100k's ``\\p{N}{1,3}+`` would take "2026" whole); a greedy ``{1,3}``
    matches the same, since nothing follows it in its alternative. ``?+``, ``*+``, ``++`` stay possessive."""
    return re.sub(r"(\{\d+(?:,\d*)?\})\+", r"\1", pattern)


def tokenizer_json(tokenizer: TextTokenizer) -> str:
    """The ``tokenizer.json`` text of ``tokenizer`` (ids equal to tiktoken's on ordinary text)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers, processors
    from tokenizers.models import BPE

    vocab, merges = vocab_and_merges(tokenizer.mergeable_ranks)
    hf = Tokenizer(BPE(vocab, merges, fuse_unk=False, ignore_merges=True))
    hf.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(onig_pattern(tokenizer.split_pattern)), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    hf.decoder = decoders.ByteLevel()
    hf.post_processor = processors.ByteLevel(trim_offsets=False)
    hf.add_special_tokens([AddedToken(EOS_TOKEN, normalized=False, special=True)])
    if hf.token_to_id(EOS_TOKEN) != tokenizer.eos_id:
        raise ValueError(f"{EOS_TOKEN} got id {hf.token_to_id(EOS_TOKEN)} in tokenizer.json, not initlab's "
                         f"{tokenizer.eos_id}: the kept ranks of {tokenizer.description} are not 0..{tokenizer.eos_id - 1}")
    return hf.to_str(pretty=False)


def tokenizer_config(tokenizer: TextTokenizer, max_length: int) -> dict:
    """``tokenizer_config.json``: what makes ``AutoTokenizer`` load tokenizer.json with initlab's EOS."""
    return {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS_TOKEN, "pad_token": EOS_TOKEN,
            "bos_token": None, "unk_token": None, "model_max_length": max_length, "clean_up_tokenization_spaces": False,
            "initlab_tokenizer": tokenizer.description, "initlab_fingerprint": tokenizer.fingerprint}

