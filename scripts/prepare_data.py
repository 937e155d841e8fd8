"""Tokenize local txt/jsonl/parquet files or a Hugging Face hub dataset into initlab token shards.

    python scripts/prepare_data.py --input PATH [PATH ...] --output DIR [options]
    python scripts/prepare_data.py --hf-dataset NAME [--hf-config C] [--hf-split S] --output DIR [options]
    python scripts/prepare_data.py --html-docs PKG.deb|DIR [...] --output DIR [options]

Inputs: a ``.txt`` file is one document; a ``.jsonl`` file holds one JSON object per line with its
text in ``--text-field``; a ``.parquet`` file holds the text in column ``--text-field``; a directory
written by ``datasets``' ``save_to_disk`` holds one document per row (split ``--hf-split`` of a
DatasetDict); any other directory stands for its .txt/.jsonl/.parquet files (recursively, in sorted
order). A hub dataset is streamed with ``datasets.load_dataset(..., streaming=True)``, so nothing is
downloaded whole; ``--hf-dataset`` also takes a local folder that ``load_dataset`` reads.
``--html-docs`` reads HTML documentation (Debian doc packages as downloaded by ``apt-get download``,
or directories of .html files) and keeps the English prose of each page as one document, without
code blocks, tables, navigation or repeated paragraphs (components/html_docs.py says exactly what is
kept): the offline natural-language corpus of docs/ablation_llama_1b/README.md.
Empty documents are skipped; each other document is followed by EOS. ``--split-by document`` sends a
whole document to the validation split when the hash of its text falls below ``--val-fraction``
(duplicates share a split); ``--split-by position`` cuts every document, its last
floor(``--val-fraction`` x its tokens) tokens going to validation (each piece followed by EOS), as
nanoGPT's Shakespeare example holds out the end of its one file. ``auto`` (the default) splits by
position when the inputs are .txt files that would put fewer than 10 documents in validation on
average (files x fraction < 10: e.g. one book), and by document otherwise.

The result (the format of components/data.py) is what ``[data] dataset = "DIR"`` trains on; the
tokenizer must match the training config's ``[tokenizer]`` (checked at training time):
``--config X.toml`` takes it from the training config itself, ``--tokenizer.*`` flags override it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python scripts/prepare_data.py` from anywhere

from tqdm import tqdm  # noqa: E402

from components import html_docs  # noqa: E402
from components.config import ConfigError, Data, Tokenizer, load_config  # noqa: E402
from components.data import (  # noqa: E402
    DEFAULT_SHARD_TOKENS,
    SPLIT_MODES,
    ShardWriter,
    read_manifest,
    split_at_position,
    split_of,
    tokenizer_flags,
)
from components.tokenizer import TextTokenizer, build_tokenizer  # noqa: E402

SUFFIXES = (".txt", ".jsonl", ".parquet")
_CHUNK_DOCUMENTS = 256  # documents per tiktoken thread-pool call
_CHUNK_CHARS = 8_000_000  # ... or fewer, when they are long
_AUTO_POSITION_EXPECTED_VAL = 10  # auto: split .txt inputs by position below this many expected val documents
_SAVED_DATASET_MARKERS = ("dataset_dict.json", "state.json")  # what datasets' save_to_disk writes at the top


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = Tokenizer()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", metavar="PATH",
                        help="local .txt/.jsonl/.parquet files, directories of them, or save_to_disk directories")
    source.add_argument("--hf-dataset", metavar="NAME", help="Hugging Face hub dataset, streamed through `datasets`")
    source.add_argument("--html-docs", nargs="+", metavar="PATH",
                        help="HTML documentation: Debian doc packages (.deb) or directories; each page's prose is a document")
    parser.add_argument("--hf-config", default=None, help="hub dataset configuration (subset) name")
    parser.add_argument("--hf-split", default="train", help="hub dataset split to read (default: train)")
    parser.add_argument("--output", required=True, metavar="DIR", help="new (or empty) directory for the shards")
    parser.add_argument("--text-field", default="text", help="jsonl key / parquet column / hub field with the text")
    parser.add_argument("--config", metavar="TOML", default=None,
                        help="training config whose [tokenizer] to use (so training accepts the shards)")
    parser.add_argument("--tokenizer.name", dest="tokenizer_name", default=None,
                        help=f"tiktoken encoding name or .tiktoken file (as [tokenizer] name; default "
                             f"{defaults.name} or --config's)")
    parser.add_argument("--tokenizer.max_vocab", dest="tokenizer_max_vocab", type=int, default=None,
                        help=f"keep only the first N BPE ranks (0 = all), as [tokenizer] max_vocab (default "
                             f"{defaults.max_vocab} or --config's)")
    parser.add_argument("--tokenizer.split_pattern", dest="tokenizer_split_pattern", default=None,
                        choices=["cl100k", "gpt2"], help="split regex for a .tiktoken file (default "
                                                         f"{defaults.split_pattern} or --config's)")
    parser.add_argument("--val-fraction", type=float, default=Data().val_fraction,
                        help="fraction held out for validation, in [0, 0.5): of documents, or of every "
                             "document's tokens with --split-by position")
    parser.add_argument("--split-by", choices=["auto", *SPLIT_MODES], default="auto",
                        help="document: whole documents by text hash; position: the last --val-fraction of every "
                             "document's tokens; auto (default): position for a few .txt files, else document")
    parser.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard file")
    parser.add_argument("--max-documents", type=int, default=0, help="stop after N non-empty documents (0 = all)")
    parser.add_argument("--max-tokens", type=int, default=0,
                        help="stop once N tokens (train + val, EOS included) are written; the document that "
                             "reaches N is kept whole (0 = all)")
    return parser.parse_args(argv)


def input_files(paths: list[str]) -> list[Path]:
    """The files that ``--input`` names, directories expanded to their supported files (sorted); a
    ``save_to_disk`` directory stays one entry."""
    files = []
    for name in paths:
        path = Path(name).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"--input {name} does not exist; pass existing .txt/.jsonl/.parquet files or "
                                    f"directories")
        if is_saved_dataset(path):
            files.append(path)
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
            if not found:
                raise ValueError(f"--input directory {name} holds no .txt/.jsonl/.parquet file")
            files.extend(found)
        elif path.suffix in SUFFIXES:
            files.append(path)
        else:
            raise ValueError(f"--input {name}: unsupported file type {path.suffix or '(none)'!r}; use .txt (one "
                             f"document), .jsonl (one JSON object per line) or .parquet")
    return files


def is_saved_dataset(path: Path) -> bool:
    """Whether ``path`` is a directory written by ``datasets``' ``Dataset/DatasetDict.save_to_disk``."""
    return path.is_dir() and any((path / marker).is_file() for marker in _SAVED_DATASET_MARKERS)


def html_doc_paths(paths: list[str]) -> list[Path]:
    """The ``--html-docs`` paths, each an existing .deb file or directory (checked before any work)."""
    checked = []
    for name in paths:
        path = Path(name).expanduser()
        if not (path.is_dir() or (path.is_file() and path.suffix == ".deb")):
            raise FileNotFoundError(f"--html-docs {name} is not an existing .deb file or directory; download a "
                                    f"Debian doc package with 'apt-get download python3.11-doc' and pass its path")
        checked.append(path)
    return checked


def _text_of(record: object, field: str, where: str) -> str:
    """``record[field]`` as a string, or a one-line error naming the record and the fields it has."""
    if not isinstance(record, dict) or field not in record:
        fields = ", ".join(map(str, record)) if isinstance(record, dict) else type(record).__name__
        raise ValueError(f"{where} has no field {field!r} (it has: {fields}); pass --text-field NAME")
    return _as_text(record[field], where)


def _as_text(value: object, where: str) -> str:
    if not isinstance(value, str):
        raise ValueError(f"{where}: the text field holds {type(value).__name__}, not a string; pass --text-field NAME")
    return value


def local_documents(files: list[Path], field: str, split: str = "train") -> Iterator[str]:
    """Texts of the documents in ``files``, in order (``split``: the split of a saved DatasetDict)."""
    for path in files:
        if path.is_dir():
            yield from _saved_dataset_documents(path, field, split)
        elif path.suffix == ".txt":
            try:
                yield path.read_text(encoding="utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}); convert it "
                                 f"to UTF-8") from None
        elif path.suffix == ".jsonl":
            yield from _jsonl_documents(path, field)
        else:
            yield from _parquet_documents(path, field)


def _jsonl_documents(path: Path, field: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{line_number}: invalid JSON ({error.msg}); write one JSON object per "
                                 f"line") from None
            yield _text_of(record, field, f"{path}:{line_number}")


def _parquet_documents(path: Path, field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as parquet
    except ImportError:
        raise ValueError(f"reading {path} needs pyarrow; pip install pyarrow") from None
    table = parquet.ParquetFile(path)
    if field not in table.schema_arrow.names:
        raise ValueError(f"{path} has no column {field!r} (it has: {', '.join(table.schema_arrow.names)}); "
                         f"pass --text-field NAME")
    row = 0
    for batch in table.iter_batches(columns=[field], batch_size=1024):
        for value in batch.column(0).to_pylist():
            yield _as_text(value, f"{path} row {row}")
            row += 1


def _saved_dataset_documents(path: Path, field: str, split: str) -> Iterator[str]:
    """Rows of a ``save_to_disk`` directory (``datasets`` is imported here only); a DatasetDict's ``split``."""
    import datasets

    dataset = datasets.load_from_disk(str(path))
    if isinstance(dataset, datasets.DatasetDict):
        if split not in dataset:
            raise ValueError(f"{path} holds splits {', '.join(dataset)}, not {split!r}; pass --hf-split NAME")
        dataset = dataset[split]
    if field not in dataset.column_names:
        raise ValueError(f"{path} has no column {field!r} (it has: {', '.join(dataset.column_names)}); "
                         f"pass --text-field NAME")
    for row, value in enumerate(dataset.select_columns([field]).iter(batch_size=1024)):
        for offset, text in enumerate(value[field]):
            yield _as_text(text, f"{path} row {row * 1024 + offset}")


def hub_documents(name: str, config: str | None, split: str, field: str) -> Iterator[str]:
    """Texts of a Hugging Face hub dataset, streamed (``datasets`` is imported here only)."""
    import datasets

    try:
        stream = datasets.load_dataset(name, config, split=split, streaming=True)
    except Exception as error:  # network, unknown name/config/split: all end the same way for the user
        reason = (str(error).splitlines() or [type(error).__name__])[0][:200]
        raise ValueError(f"could not open hub dataset {name!r} (config {config}, split {split}): {reason}; check "
                         f"the name or, offline, prepare local files with --input") from None
    for index, record in enumerate(stream):
        yield _text_of(record, field, f"{name}[{split}][{index}]")


def _chunks(documents: Iterable[str], max_documents: int) -> Iterator[list[str]]:
    """Non-empty documents grouped for batch encoding, at most ``max_documents`` of them (0 = all)."""
    chunk, chars, count = [], 0, 0
    for text in documents:
        if not text:
            continue
        chunk.append(text)
        chars += len(text)
        count += 1
        if len(chunk) >= _CHUNK_DOCUMENTS or chars >= _CHUNK_CHARS or count == max_documents:
            yield chunk
            chunk, chars = [], 0
        if count == max_documents:
            return
    if chunk:
        yield chunk


def write_shards(output: Path, tokenizer: TextTokenizer, documents: Iterable[str], source: str,
                 val_fraction: float, shard_tokens: int, max_documents: int = 0, max_tokens: int = 0,
                 split_by: str = "document", tokenizer_config: dict | None = None) -> dict:
    """Tokenize ``documents`` into the shard directory ``output``; returns its manifest.

    At most ``max_documents`` documents (0 = all); none after the one that brings the written
    tokens to ``max_tokens`` or more (0 = no limit). ``split_by``: see the module docstring.
    """
    with ShardWriter(output, tokenizer, source, val_fraction, shard_tokens, split_by, tokenizer_config) as writer, \
            tqdm(desc="tokenizing", unit=" doc", file=sys.stderr) as progress:
        for chunk in _chunks(documents, max_documents):
            for text, ids in zip(chunk, tokenizer.encode_batch(chunk)):
                if split_by == "position":
                    train, val = split_at_position(ids, val_fraction)
                    writer.add_document(train, "train")
                    if len(val):
                        writer.add_document(val, "val")
                else:
                    writer.add_document(ids, split_of(text, val_fraction))
                written = writer.tokens("train") + writer.tokens("val")
                if max_tokens and written >= max_tokens:
                    break
            progress.update(len(chunk))
            progress.set_postfix(tokens=f"{written:,}", refresh=False)
            if max_tokens and written >= max_tokens:
                break
    return read_manifest(output)


def run(args: argparse.Namespace) -> None:
    output = Path(args.output).expanduser()
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise FileExistsError(f"--output {output} exists and is not empty; nothing was written: pass a new directory")
    if not 0 <= args.val_fraction < 0.5:
        raise ValueError(f"--val-fraction must be in [0, 0.5); got {args.val_fraction}")
    if args.shard_tokens < 1 or args.max_documents < 0 or args.max_tokens < 0:
        raise ValueError(f"--shard-tokens must be >= 1, --max-documents and --max-tokens >= 0; got "
                         f"{args.shard_tokens}, {args.max_documents} and {args.max_tokens}")
    tokenizer_config = resolve_tokenizer(args)
    tokenizer = build_tokenizer(tokenizer_config)
    split_by = args.split_by
    if args.input:
        files = input_files(args.input)
        documents = local_documents(files, args.text_field, args.hf_split)
        source = f"{len(files)} local file(s): {', '.join(str(f) for f in files[:3])}{' ...' if len(files) > 3 else ''}"
        if split_by == "auto":
            few_texts = all(f.suffix == ".txt" for f in files) and len(files) * args.val_fraction < \
                _AUTO_POSITION_EXPECTED_VAL
            split_by = "position" if few_texts else "document"
    elif args.html_docs:
        packages = html_doc_paths(args.html_docs)
        documents = html_docs.documents(packages)
        source = f"prose of HTML documentation: {', '.join(p.name for p in packages)}"
    else:
        documents = hub_documents(args.hf_dataset, args.hf_config, args.hf_split, args.text_field)
        source = f"hub dataset {args.hf_dataset} (config {args.hf_config}, split {args.hf_split})"
    split_by = "document" if split_by == "auto" else split_by
    start = time.perf_counter()
    manifest = write_shards(output, tokenizer, documents, source, args.val_fraction, args.shard_tokens,
                            args.max_documents, args.max_tokens, split_by, asdict(tokenizer_config))
    elapsed = time.perf_counter() - start
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    tokens = train["tokens"] + val["tokens"]
    documents = train["documents"] if split_by == "position" else train["documents"] + val["documents"]
    print(f"wrote {tokens:,} tokens ({train['tokens']:,} train / {val['tokens']:,} val, split by {split_by}) from "
          f"{documents:,} documents with {tokenizer.description} to {output} "
          f"in {elapsed:.1f} s: {tokens / max(elapsed, 1e-9):,.0f} tokens/s")
    no_val = " --metrics.val_freq 0" if val["tokens"] == 0 else ""  # nothing to validate on
    print(f"train on it with: --data.dataset {output} {tokenizer_flags(asdict(tokenizer_config))}{no_val}")


def resolve_tokenizer(args: argparse.Namespace) -> Tokenizer:
    """[tokenizer] of ``--config`` (or the defaults), each ``--tokenizer.*`` flag given overriding its field."""
    base = Tokenizer()
    if args.config is not None:
        try:
            base = load_config(["--config", args.config])[0].tokenizer
        except ConfigError as error:
            raise ValueError(f"--config {args.config}: {error}") from None
    given = {"name": args.tokenizer_name, "max_vocab": args.tokenizer_max_vocab,
             "split_pattern": args.tokenizer_split_pattern}
    return replace(base, **{key: value for key, value in given.items() if value is not None})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
