"""Token shards on disk, the offline embedded corpus, and the (seed, step) -> global batch loader.

Shard directory format (written by :class:`ShardWriter`, shared with ``scripts/prepare_data.py``)::

    manifest.json        {"format": "initlab-token-shards", "version": 1,
                          "tokenizer": {"fingerprint", "description", "n_vocab",
                                        "config": {"name", "max_vocab", "split_pattern"} (optional)},
                          "eos_id", "dtype": "uint16" | "uint32", "source", "val_fraction",
                          "split_by": "document" | "position" (absent: document),
                          "splits": {"train" | "val": {"tokens", "documents",
                                                       "shards": [{"file", "tokens"}, ...]}}}
    train_00000.bin ...  flat little-endian token ids; every document is followed by EOS, so a
    val_00000.bin ...    split's shards, concatenated, are one stream of EOS-joined documents

A directory is built under a temporary name beside its target and renamed into place only after
the manifest is written, so a directory with a complete manifest is always whole; one without is
never read (the embedded cache is rebuilt, a prepared dataset is reported).

The loader cuts a split's stream into W = (n_tokens - 1) // seq_len windows of seq_len + 1 tokens
(window i starts at token i * seq_len, so consecutive windows share one token and each predicts
seq_len targets). Windows are visited in a per-epoch permutation drawn from (seed, epoch); global
batch ``step`` is positions [step * B, (step + 1) * B) of that endless epoch-after-epoch order, so
any rank computes any row alone and 1 or N ranks see the same global batch.

Validation (:class:`HeldOutPrefix`) reads the val split in stream order instead: its first
``metrics.val_tokens // seq_len`` windows, whatever the seed.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import secrets
import shutil
import socket
import sys
import sysconfig
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from components.config import Data
from components.files import file_crc32
from components.tokenizer import TextTokenizer

FORMAT_NAME = "initlab-token-shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "val")
DEFAULT_SHARD_TOKENS = 100_000_000  # 200 MB uint16 shards: few files, each easily memory-mapped
EMBEDDED_MAX_BYTES = 20_000_000  # cap on the embedded corpus's text (~12 MB of stdlib today, ~2 s to tokenize)
# Tests, third-party packages, caches, and encodings/ (machine-generated codec tables, not prose or code,
# which would otherwise dominate a hash-chosen validation split).
EMBEDDED_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__",
                                "encodings"})
_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
_TEMP_MARK = ".tmp-"  # <target>.tmp-<host>-<pid>-<random>: the owner is known, so stale ones can be removed
_ENCODE_CHUNK = 64  # documents per tiktoken thread-pool call


def token_dtype_name(n_vocab: int) -> str:
    """Smallest unsigned dtype holding ids 0 .. n_vocab - 1."""
    return "uint16" if n_vocab <= 2**16 else "uint32"


def split_of(key: str, val_fraction: float) -> str:
    """'val' for a fixed fraction of keys, decided by the key's hash alone (no other document matters)."""
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return "val" if int.from_bytes(digest, "big") / 2**64 < val_fraction else "train"


SPLIT_MODES = ("document", "position")
"""How a corpus is split: whole documents by the hash of their text (:func:`split_of`), or every document at a
position, its last ``val_fraction`` of tokens held out (:func:`split_at_position`; nanoGPT's Shakespeare split)."""


def split_at_position(token_ids: Sequence[int], val_fraction: float) -> tuple[Sequence[int], Sequence[int]]:
    """(train, val) pieces of one document: the val piece is its last floor(val_fraction * n) tokens."""
    n_val = int(len(token_ids) * val_fraction)
    cut = len(token_ids) - n_val
    return token_ids[:cut], token_ids[cut:]


@dataclass
class _SplitShards:
    """What has been written for one split: its shard files and document count."""

    shards: list[dict] = field(default_factory=list)  # [{"file": "train_00000.bin", "tokens": n, "crc32": "..."}]
    documents: int = 0
    handle: BinaryIO | None = None
    crcs: list[int] = field(default_factory=list)  # running CRC-32 of each shard's bytes

    @property
    def tokens(self) -> int:
        return sum(shard["tokens"] for shard in self.shards)


class ShardWriter:
    """Context manager writing EOS-terminated documents into ``<target>.tmp-*``, renamed to target at exit.

    On any exception (or when the result would be unusable: no documents, an empty split) the
    temporary directory is deleted and ``target`` is left as it was.
    """

    def __init__(self, target: Path, tokenizer: TextTokenizer, source: str, val_fraction: float,
                 shard_tokens: int = DEFAULT_SHARD_TOKENS, split_by: str = "document",
                 tokenizer_config: dict | None = None):
        if shard_tokens < 1:
            raise ValueError(f"shard_tokens must be >= 1; got {shard_tokens}")
        if split_by not in SPLIT_MODES:
            raise ValueError(f"split_by = {split_by!r}; use one of {', '.join(SPLIT_MODES)}")
        self._split_by = split_by
        self._tokenizer_config = tokenizer_config  # the [tokenizer] fields, so a mismatch can name the flags
        self.target = Path(target)
        self._tokenizer = tokenizer
        self._source = source
        self._val_fraction = val_fraction
        self._shard_tokens = shard_tokens
        self._dtype_name = token_dtype_name(tokenizer.n_vocab)
        self._splits = {split: _SplitShards() for split in SPLITS}
        self._temp = self.target.parent / (f"{self.target.name}{_TEMP_MARK}{socket.gethostname()}-"
                                           f"{os.getpid()}-{secrets.token_hex(4)}")

    def __enter__(self) -> ShardWriter:
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self._temp.mkdir()
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:
            if exc_type is None:
                self._finish()
        finally:
            self._close_handles()
            if self._temp.exists():
                shutil.rmtree(self._temp)

    def tokens(self, split: str) -> int:
        """Tokens written so far to ``split`` (EOS included)."""
        return self._splits[split].tokens

    def add_document(self, token_ids: Sequence[int], split: str) -> None:
        """Append one document's ids and an EOS to ``split`` ('train' or 'val')."""
        state = self._splits[split]
        array = np.empty(len(token_ids) + 1, dtype=_DTYPES[self._dtype_name])  # [doc_len + 1]
        array[:-1] = token_ids
        array[-1] = self._tokenizer.eos_id
        state.documents += 1
        while array.size:
            if state.handle is None or state.shards[-1]["tokens"] == self._shard_tokens:
                self._open_shard(split, state)
            room = self._shard_tokens - state.shards[-1]["tokens"]
            chunk = array[:room].tobytes()
            try:
                state.handle.write(chunk)
            except OSError as err:  # a full disk: name the file (a write error names none)
                raise OSError(err.errno, err.strerror, state.handle.name) from None
            state.crcs[-1] = zlib.crc32(chunk, state.crcs[-1])
            state.shards[-1]["tokens"] += min(room, array.size)
            array = array[room:]

    def _open_shard(self, split: str, state: _SplitShards) -> None:
        if state.handle is not None:
            state.handle.close()
        name = f"{split}_{len(state.shards):05d}.bin"
        state.shards.append({"file": name, "tokens": 0})
        state.crcs.append(0)
        state.handle = open(self._temp / name, "wb")  # closed by the next _open_shard or by _close_handles

    def _close_handles(self) -> None:
        for state in self._splits.values():
            if state.handle is not None:
                state.handle.close()
                state.handle = None

    def _finish(self) -> None:
        self._close_handles()
        train, val = self._splits["train"], self._splits["val"]
        total = train.documents + val.documents
        if total == 0:
            raise ValueError(f"no non-empty documents in {self._source}; give inputs that contain text")
        if train.documents == 0:
            raise ValueError(f"all {total} documents of {self._source} fell into the validation split; "
                             f"lower the validation fraction ({self._val_fraction})")
        if self._val_fraction > 0 and val.documents == 0:
            fix = ("raise the fraction or use 0" if self._split_by == "position" else
                   "split by position instead (--split-by position: the last part of every document), use 0, "
                   "or add documents")
            raise ValueError(f"none of the {total} documents of {self._source} fell into the validation split "
                             f"(fraction {self._val_fraction}, split by {self._split_by}); {fix}")
        tokenizer = {"fingerprint": self._tokenizer.fingerprint, "description": self._tokenizer.description,
                     "n_vocab": self._tokenizer.n_vocab}
        if self._tokenizer_config is not None:
            tokenizer["config"] = self._tokenizer_config
        for state in self._splits.values():
            for shard, crc in zip(state.shards, state.crcs):
                shard["crc32"] = f"{crc:08x}"
        manifest = {
            "format": FORMAT_NAME, "version": FORMAT_VERSION, "tokenizer": tokenizer,
            "eos_id": self._tokenizer.eos_id, "dtype": self._dtype_name, "source": self._source,
            "val_fraction": self._val_fraction, "split_by": self._split_by,
            "splits": {name: {"tokens": state.tokens, "documents": state.documents, "shards": state.shards}
                       for name, state in self._splits.items()},
        }
        (self._temp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1) + "\n")
        try:
            os.rename(self._temp, self.target)  # atomic; replaces only a missing or empty directory
        except OSError:
            raise FileExistsError(f"{self.target} exists and is not empty (written meanwhile by another "
                                  f"process?); nothing was overwritten") from None


def read_manifest(path: Path) -> dict:
    """The manifest of a complete shard directory; one-line ValueError if missing, foreign or damaged."""
    file = Path(path) / MANIFEST_NAME
    fix = "re-create it with scripts/prepare_data.py --output <new dir>"
    if not file.is_file():
        raise ValueError(f"{path} has no {MANIFEST_NAME}, so it is not a complete token-shard directory "
                         f"(an interrupted build?); {fix}")
    try:
        manifest = json.loads(file.read_text())
        if manifest.get("format") != FORMAT_NAME or manifest.get("version") != FORMAT_VERSION:
            raise ValueError(f"{file} is not an {FORMAT_NAME} v{FORMAT_VERSION} manifest; {fix}")
        itemsize = _DTYPES[manifest["dtype"]].itemsize
        for info in manifest["splits"].values():
            for shard in info["shards"]:
                shard_path = Path(path) / shard["file"]
                size = shard_path.stat().st_size if shard_path.is_file() else 0
                if size != shard["tokens"] * itemsize:
                    raise ValueError(f"{shard_path} has {size} bytes but the manifest says {shard['tokens']} "
                                     f"tokens of {itemsize} bytes; the directory is damaged, {fix}")
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as error:
        raise ValueError(f"{file} is malformed ({type(error).__name__}: {error}); {fix}") from None
    return manifest


def verify_shards(path: Path, manifest: dict) -> str | None:
    """The first shard whose bytes differ from the CRC-32 recorded when it was written (None if all match).

    One read of the directory (CRC-32, zlib: about 1.6 GB/s on one core of the test machine; see
    docs/fault_tolerance.md); a directory verified in this process and unchanged since (sizes, mtimes) is not
    read again. Raises ValueError for a directory written before shards carried checksums.
    """
    shards = [shard for info in manifest["splits"].values() for shard in info["shards"]]
    if any("crc32" not in shard for shard in shards):
        raise ValueError(f"{path} was written without shard checksums (an older initlab)")
    stamp = tuple((shard["file"], os.stat(Path(path) / shard["file"]).st_mtime_ns) for shard in shards)
    if _VERIFIED.get(Path(path).resolve()) == stamp:
        return None
    for shard in shards:
        if file_crc32(Path(path) / shard["file"]) != shard["crc32"]:
            return shard["file"]
    _VERIFIED[Path(path).resolve()] = stamp
    return None


_VERIFIED: dict[Path, tuple] = {}  # shard directories this process verified: {path: ((file, mtime_ns), ...)}


def check_tokenizer(manifest: dict, path: Path, tokenizer: TextTokenizer) -> None:
    """One-line ValueError unless the shards at ``path`` were written with ``tokenizer``."""
    recorded = manifest["tokenizer"]
    if recorded["fingerprint"] != tokenizer.fingerprint:
        flags = tokenizer_flags(recorded.get("config"))
        fix = (f"add {flags} to the training command (or set them in [tokenizer])" if flags else
               "set [tokenizer] to match")
        raise ValueError(f"{path} was tokenized with {recorded['description']} (fingerprint {recorded['fingerprint']}),"
                         f" not the configured {tokenizer.description} ({tokenizer.fingerprint}); {fix}, or re-run "
                         f"scripts/prepare_data.py --config <your training config> to tokenize with yours")


def tokenizer_flags(config: dict | None) -> str:
    """``--tokenizer.name X --tokenizer.max_vocab N [--tokenizer.split_pattern P]`` of a manifest's recorded
    [tokenizer] fields ('' when the manifest predates the record); the split pattern only when it matters (a file)."""
    if not config:
        return ""
    flags = f"--tokenizer.name {config['name']} --tokenizer.max_vocab {config['max_vocab']}"
    if config["name"].endswith(".tiktoken") or "/" in config["name"]:
        flags += f" --tokenizer.split_pattern {config['split_pattern']}"
    return flags


def ensure_dataset(cfg: Data, tokenizer: TextTokenizer, *, stdlib: Path | None = None,
                   max_bytes: int = EMBEDDED_MAX_BYTES, verify: bool = True) -> Path:
    """Directory of token shards for ``cfg.dataset``, building the embedded corpus on first use.

    ``stdlib`` and ``max_bytes`` choose the embedded corpus's source tree and size cap (defaults:
    this interpreter's standard library, 20 MB). ``verify`` checks every shard against the CRC-32
    recorded when it was written (:func:`verify_shards`): a damaged embedded cache is rebuilt, a damaged
    prepared dataset refused in one line. Idempotent; call it on one rank, then barrier.
    """
    if cfg.dataset == "embedded":
        return _ensure_embedded(cfg, tokenizer, Path(stdlib) if stdlib else stdlib_root(), max_bytes, verify)
    path = Path(cfg.dataset).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"data.dataset = {cfg.dataset!r} is not a directory; use 'embedded' or a "
                                f"directory written by scripts/prepare_data.py --output DIR")
    manifest = read_manifest(path)
    check_tokenizer(manifest, path, tokenizer)
    if verify and all("crc32" in shard for info in manifest["splits"].values() for shard in info["shards"]):
        bad = verify_shards(path, manifest)  # (a directory prepared before checksums existed is not checked)
        if bad:
            raise ValueError(f"{path / bad} does not match the CRC-32 recorded when it was written (its bytes changed "
                             "since): the dataset is damaged; re-create it with scripts/prepare_data.py --output "
                             "<new dir>")
    return path


def ensure_dataset_from(root: Path, cfg: Data, tokenizer: TextTokenizer) -> Path:
    """:func:`ensure_dataset` with the relative paths of ``cfg`` (``dataset``, ``cache_dir``) taken from ``root``, the
    working directory of the runs that will read it, instead of this process's."""
    data = replace(cfg, cache_dir=str(root / Path(cfg.cache_dir).expanduser()))
    if data.dataset != "embedded":
        data = replace(data, dataset=str(root / Path(data.dataset).expanduser()))
    return ensure_dataset(data, tokenizer)


def stdlib_root() -> Path:
    """This interpreter's standard-library directory (its .py sources are the embedded corpus)."""
    return Path(sysconfig.get_paths()["stdlib"])


def embedded_files(root: Path, max_bytes: int) -> list[tuple[str, Path, int]]:
    """(relative posix path, path, bytes) of the non-empty .py files under ``root``, sorted by relative
    path, skipping EMBEDDED_SKIP_DIRS and stopping before the total would exceed ``max_bytes``."""
    found = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = [name for name in subdirs if name not in EMBEDDED_SKIP_DIRS]
        for name in names:
            path = Path(directory) / name
            if name.endswith(".py") and path.is_file() and (size := path.stat().st_size) > 0:
                found.append((path.relative_to(root).as_posix(), path, size))
    found.sort(key=lambda entry: entry[0])
    kept, total = [], 0
    for entry in found:
        if total + entry[2] > max_bytes:
            break
        kept.append(entry)
        total += entry[2]
    if not kept:
        raise ValueError(f"no non-empty .py file of at most {max_bytes} bytes under {root}; point the embedded "
                         f"corpus at a Python source tree or set data.dataset to a prepared directory")
    return kept


def _ensure_embedded(cfg: Data, tokenizer: TextTokenizer, root: Path, max_bytes: int, verify: bool) -> Path:
    files = embedded_files(root, max_bytes)
    # The cache key covers everything that changes the shards besides the tokenizer (its own directory level).
    identity = json.dumps([FORMAT_VERSION, cfg.val_fraction, [(rel, size) for rel, _, size in files]])
    key = hashlib.sha256(identity.encode()).hexdigest()[:12]
    target = Path(cfg.cache_dir).expanduser() / tokenizer.fingerprint / f"embedded-{key}"
    remove_stale_temps(target)
    if target.exists():
        try:
            manifest = read_manifest(target)
            check_tokenizer(manifest, target, tokenizer)
            bad = verify_shards(target, manifest) if verify else None
            if bad:
                raise ValueError(f"{target / bad} does not match the CRC-32 recorded when it was written")
            return target
        except ValueError as problem:
            print(f"initlab: rebuilding the embedded-corpus cache ({problem})", file=sys.stderr)
            shutil.rmtree(target)
    total_bytes = sum(size for _, _, size in files)
    source = f"Python standard library: {len(files)} .py files, {total_bytes / 1e6:.1f} MB under {root}"
    print(f"initlab: tokenizing the embedded corpus once ({source}) into {target}", file=sys.stderr, flush=True)
    next_report = 0.25
    try:
        with ShardWriter(target, tokenizer, source, cfg.val_fraction) as writer:
            for start in range(0, len(files), _ENCODE_CHUNK):
                if start / len(files) >= next_report:  # a line per quarter: readable in a job log, unlike \r bars
                    print(f"initlab: tokenized {start:,}/{len(files):,} files ({start / len(files):.0%})",
                          file=sys.stderr, flush=True)
                    next_report += 0.25
                chunk = files[start:start + _ENCODE_CHUNK]
                texts = [path.read_text(encoding="utf-8", errors="replace") for _, path, _ in chunk]
                for (rel, _, _), ids in zip(chunk, tokenizer.encode_batch(texts)):
                    writer.add_document(ids, split_of(rel, cfg.val_fraction))
    except FileExistsError:
        check_tokenizer(read_manifest(target), target, tokenizer)  # another process finished the same build first
    return target


def remove_stale_temps(target: Path) -> list[Path]:
    """Delete ``<target>.tmp-*`` directories of builds on this host whose process has died."""
    removed, host = [], socket.gethostname()
    for temp in Path(target).parent.glob(f"{glob.escape(Path(target).name)}{_TEMP_MARK}*"):
        owner = temp.name[len(Path(target).name) + len(_TEMP_MARK):].rpartition("-")[0]  # "<host>-<pid>"
        owner_host, _, pid = owner.rpartition("-")
        if owner_host == host and pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(temp, ignore_errors=True)
            removed.append(temp)
    return removed


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class TokenDataset:
    """One split of a shard directory as a single memory-mapped token stream."""

    def __init__(self, path: Path, split: str):
        self.path, self.split = Path(path), split
        manifest = read_manifest(self.path)
        if split not in manifest["splits"]:
            raise ValueError(f"{self.path} has no split {split!r}; it has {', '.join(manifest['splits'])}")
        info = manifest["splits"][split]
        dtype = _DTYPES[manifest["dtype"]]
        self._shards = [np.memmap(self.path / shard["file"], dtype=dtype, mode="r", shape=(shard["tokens"],))
                        for shard in info["shards"] if shard["tokens"] > 0]
        self._starts = np.cumsum([0] + [len(shard) for shard in self._shards])  # [n_shards + 1] stream offsets
        self.n_tokens = int(self._starts[-1])
        self.n_documents = int(info["documents"])
        self.eos_id = int(manifest["eos_id"])
        self.tokenizer_fingerprint = manifest["tokenizer"]["fingerprint"]
        shards = [{"file": shard["file"], "tokens": shard["tokens"]} for shard in info["shards"]]  # (not crc32)
        identity = json.dumps([self.tokenizer_fingerprint, split, shards], sort_keys=True)
        self.fingerprint = hashlib.sha256(identity.encode()).hexdigest()[:16]
        """Digest of (tokenizer, split, shard names and sizes): stable when the directory moves."""

    def __len__(self) -> int:
        return self.n_tokens

    def read(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) of the stream as int64, across shard boundaries; shape [stop - start]."""
        if not 0 <= start <= stop <= self.n_tokens:
            raise IndexError(f"token range [{start}, {stop}) outside [0, {self.n_tokens}) of {self.path}:{self.split}")
        pieces = []
        shard = int(np.searchsorted(self._starts, start, side="right")) - 1
        while start < stop:
            offset = start - int(self._starts[shard])
            take = min(stop - start, len(self._shards[shard]) - offset)
            pieces.append(self._shards[shard][offset:offset + take])
            start += take
            shard += 1
        return np.concatenate(pieces).astype(np.int64) if pieces else np.zeros(0, dtype=np.int64)


class TokenBatches:
    """Global batch ``step`` of ``global_batch_size`` windows of ``seq_len + 1`` tokens, from (seed, step) alone."""

    _STATE_KEYS = ("seed", "seq_len", "global_batch_size", "dataset_fingerprint")

    def __init__(self, dataset: TokenDataset, seq_len: int, global_batch_size: int, seed: int):
        if seq_len < 1 or global_batch_size < 1:
            raise ValueError(f"seq_len and global_batch_size must be >= 1; got {seq_len} and {global_batch_size}")
        self.dataset, self.seq_len, self.global_batch_size, self.seed = dataset, seq_len, global_batch_size, seed
        self.n_windows = (dataset.n_tokens - 1) // seq_len
        if self.n_windows < 1:
            raise ValueError(f"split '{dataset.split}' of {dataset.path} has {dataset.n_tokens} tokens, fewer than "
                             f"one sequence of seq_len + 1 = {seq_len + 1}; use a shorter training.seq_len or more data")
        self._orders: dict[int, np.ndarray] = {}  # epoch -> window permutation [n_windows]

    def window_order(self, epoch: int) -> np.ndarray:
        """Permutation of the window indices visited in ``epoch``, drawn from (seed, epoch)."""
        if epoch not in self._orders:
            if len(self._orders) >= 2:  # a batch straddles at most two epochs
                self._orders.pop(min(self._orders))
            rng = np.random.default_rng([self.seed % 2**64, epoch])
            self._orders[epoch] = rng.permutation(self.n_windows)
        return self._orders[epoch]

    def window_ids(self, step: int, rows: slice) -> np.ndarray:
        """Window indices of rows ``rows`` of global batch ``step``; shape [n_rows]."""
        if step < 0:
            raise ValueError(f"step must be >= 0; got {step}")
        positions = [step * self.global_batch_size + row for row in range(self.global_batch_size)[rows]]
        return np.array([self.window_order(p // self.n_windows)[p % self.n_windows] for p in positions],
                        dtype=np.int64)

    def get(self, step: int, rows: slice) -> torch.Tensor:
        """LongTensor [n_rows, seq_len + 1]: inputs are [:, :-1], next-token targets [:, 1:]."""
        windows = [self.dataset.read(w * self.seq_len, w * self.seq_len + self.seq_len + 1)
                   for w in self.window_ids(step, rows)]
        if not windows:
            return torch.zeros(0, self.seq_len + 1, dtype=torch.long)
        return torch.from_numpy(np.stack(windows))

    def state_dict(self) -> dict:
        """Everything that fixes the batch sequence (the step itself is the trainer's)."""
        return {"seed": self.seed, "seq_len": self.seq_len, "global_batch_size": self.global_batch_size,
                "dataset_fingerprint": self.dataset.fingerprint}

    def load_state_dict(self, state: dict) -> None:
        """Check that a checkpoint's loader state matches this loader; one-line ValueError if not."""
        mine = self.state_dict()
        diffs = [f"{key} {state.get(key)!r} -> {mine[key]!r}" for key in self._STATE_KEYS if state.get(key) != mine[key]]
        if diffs:
            raise ValueError(f"data loader state of the checkpoint does not match this run ({'; '.join(diffs)}); "
                             f"resume with the checkpoint's seed, seq_len, global batch and dataset")


class HeldOutPrefix:
    """The validation set: the first ``n_windows`` windows of ``seq_len + 1`` tokens of a split, in stream order.

    Window i starts at token i * seq_len (as in :class:`TokenBatches`), so the windows score targets
    1 .. n_windows * seq_len of the split: the same tokens in the same order whatever the seed, the init
    or the number of ranks. :meth:`share` cuts them into equal contiguous shares, one per data-parallel rank.
    """

    def __init__(self, dataset: TokenDataset, seq_len: int, n_tokens: int):
        self.dataset, self.seq_len = dataset, seq_len
        self.n_windows = max(1, n_tokens // seq_len)
        available = (dataset.n_tokens - 1) // seq_len
        if available < 1:
            raise ValueError(f"split '{dataset.split}' of {dataset.path} holds {dataset.n_tokens} tokens, fewer than one "
                             f"sequence of seq_len + 1 = {seq_len + 1}: nothing to validate on; add --metrics.val_freq 0 "
                             f"to train without validation, or prepare the data with a larger --val-fraction")
        if self.n_windows > available:
            raise ValueError(f"metrics.val_tokens = {n_tokens} needs {self.n_windows} sequences of {seq_len + 1} "
                             f"tokens but split '{dataset.split}' of {dataset.path} holds {dataset.n_tokens} tokens "
                             f"({available} sequences); set metrics.val_tokens <= {available * seq_len}")

    @property
    def n_targets(self) -> int:
        """Tokens scored: every window predicts seq_len targets."""
        return self.n_windows * self.seq_len

    def share(self, rank: int, n_ranks: int) -> range:
        """Window indices of ``rank``'s contiguous share (ceil(n_windows / n_ranks) at most; the last may be short)."""
        per_rank = -(-self.n_windows // n_ranks)
        return range(min(rank * per_rank, self.n_windows), min((rank + 1) * per_rank, self.n_windows))

    def get(self, start: int, n_rows: int) -> torch.Tensor:
        """LongTensor [n_rows, seq_len + 1] of windows start, start + 1, ...; indices past the end wrap around
        (padding that keeps a fixed batch shape: the caller scores only the rows inside its share)."""
        ids = np.arange(start, start + n_rows) % self.n_windows
        return torch.from_numpy(np.stack([self.dataset.read(w * self.seq_len, (w + 1) * self.seq_len + 1)
                                          for w in ids]))


def batch_to_device(tokens: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The batch on ``device`` without waiting for the device: after a blocking copy torch synchronizes the
    stream (the host waits for every queued kernel); a non-blocking copy from pinned memory is queued like a
    kernel, and torch's pinned-memory cache keeps the buffer until the copy has run. On CPU the tensor is
    returned as is."""
    if device.type != "cuda":
        return tokens
    return tokens.pin_memory().to(device, non_blocking=True)
