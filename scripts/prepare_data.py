"""Tokenize local txt/jsonl/parquet files or a Hugging Face hub dataset into initlab token shards.

    python scripts/prepare_data.py --input PATH [PATH ...] --output DIR [options]
    python scripts/prepare_data.py --hf-dataset NAME [--hf-config C] [--hf-split S] --output DIR [options]
    python scripts/prepare_data.py --html-docs PKG.deb|DIR [...] --output DIR [options]

Inputs: a ``.txt`` file is one document; a ``.jsonl`` file holds one JSON object per line with its
text in ``--text-field``; a ``.parquet`` file holds the text in column ``--text-field``; a directory
stands for its .txt/.jsonl/.parquet files (recursively, in sorted order). A hub dataset is
streamed with ``datasets.load_dataset(..., streaming=True)``, so nothing is downloaded whole.
``--html-docs`` reads HTML documentation (Debian doc packages as downloaded by ``apt-get download``,
or directories of .html files) and keeps the English prose of each page as one document, without
code blocks, tables, navigation or repeated paragraphs (scripts/html_docs.py says exactly what is
kept): the offline natural-language corpus of docs/ablation_llama_1b/README.md.
Empty documents are skipped; each other document is followed by EOS, and goes to the validation
split when the hash of its text falls below ``--val-fraction`` (duplicates share a split).

The result (the format of components/data.py) is what ``[data] dataset = "DIR"`` trains on; the
tokenizer options must match the training config's ``[tokenizer]`` (checked at training time).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python scripts/prepare_data.py` from anywhere

from tqdm import tqdm  # noqa: E402

from components.config import Data, Tokenizer  # noqa: E402
from components.data import DEFAULT_SHARD_TOKENS, ShardWriter, read_manifest, split_of  # noqa: E402
from components.tokenizer import TextTokenizer, build_tokenizer  # noqa: E402
from scripts import html_docs  # noqa: E402

SUFFIXES = (".txt", ".jsonl", ".parquet")
_CHUNK_DOCUMENTS = 256  # documents per tiktoken thread-pool call
_CHUNK_CHARS = 8_000_000  # ... or fewer, when they are long


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    defaults = Tokenizer()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", metavar="PATH", help="local .txt/.jsonl/.parquet files or directories")
    source.add_argument("--hf-dataset", metavar="NAME", help="Hugging Face hub dataset, streamed through `datasets`")
    source.add_argument("--html-docs", nargs="+", metavar="PATH",
                        help="HTML documentation: Debian doc packages (.deb) or directories; each page's prose is a document")
    parser.add_argument("--hf-config", default=None, help="hub dataset configuration (subset) name")
    parser.add_argument("--hf-split", default="train", help="hub dataset split to read (default: train)")
    parser.add_argument("--output", required=True, metavar="DIR", help="new (or empty) directory for the shards")
    parser.add_argument("--text-field", default="text", help="jsonl key / parquet column / hub field with the text")
    parser.add_argument("--tokenizer.name", dest="tokenizer_name", default=defaults.name,
                        help="tiktoken encoding name or .tiktoken file (as [tokenizer] name)")
    parser.add_argument("--tokenizer.max_vocab", dest="tokenizer_max_vocab", type=int, default=defaults.max_vocab,
                        help="keep only the first N BPE ranks (0 = all), as [tokenizer] max_vocab")
    parser.add_argument("--tokenizer.split_pattern", dest="tokenizer_split_pattern", default=defaults.split_pattern,
                        choices=["cl100k", "gpt2"], help="split regex for a .tiktoken file")
    parser.add_argument("--val-fraction", type=float, default=Data().val_fraction,
                        help="fraction of documents held out for validation, in [0, 0.5)")
    parser.add_argument("--shard-tokens", type=int, default=DEFAULT_SHARD_TOKENS, help="tokens per shard file")
    parser.add_argument("--max-documents", type=int, default=0, help="stop after N non-empty documents (0 = all)")
    parser.add_argument("--max-tokens", type=int, default=0,
                        help="stop once N tokens (train + val, EOS included) are written; the document that "
                             "reaches N is kept whole (0 = all)")
    return parser.parse_args(argv)


def input_files(paths: list[str]) -> list[Path]:
    """The files that ``--input`` names, directories expanded to their supported files (sorted)."""
    files = []
    for name in paths:
        path = Path(name).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"--input {name} does not exist; pass existing .txt/.jsonl/.parquet files or "
                                    f"directories")
        if path.is_dir():
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


def local_documents(files: list[Path], field: str) -> Iterator[str]:
    """Texts of the documents in ``files``, in order."""
    for path in files:
        if path.suffix == ".txt":
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
                 val_fraction: float, shard_tokens: int, max_documents: int = 0, max_tokens: int = 0) -> dict:
    """Tokenize ``documents`` into the shard directory ``output``; returns its manifest.

    At most ``max_documents`` documents (0 = all); none after the one that brings the written
    tokens to ``max_tokens`` or more (0 = no limit).
    """
    with ShardWriter(output, tokenizer, source, val_fraction, shard_tokens) as writer, \
            tqdm(desc="tokenizing", unit=" doc", file=sys.stderr) as progress:
        for chunk in _chunks(documents, max_documents):
            for text, ids in zip(chunk, tokenizer.encode_batch(chunk)):
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
    tokenizer = build_tokenizer(Tokenizer(name=args.tokenizer_name, max_vocab=args.tokenizer_max_vocab,
                                          split_pattern=args.tokenizer_split_pattern))
    if args.input:
        files = input_files(args.input)
        documents = local_documents(files, args.text_field)
        source = f"{len(files)} local file(s): {', '.join(str(f) for f in files[:3])}{' ...' if len(files) > 3 else ''}"
    elif args.html_docs:
        packages = html_doc_paths(args.html_docs)
        documents = html_docs.documents(packages)
        source = f"prose of HTML documentation: {', '.join(p.name for p in packages)}"
    else:
        documents = hub_documents(args.hf_dataset, args.hf_config, args.hf_split, args.text_field)
        source = f"hub dataset {args.hf_dataset} (config {args.hf_config}, split {args.hf_split})"
    start = time.perf_counter()
    manifest = write_shards(output, tokenizer, documents, source, args.val_fraction, args.shard_tokens,
                            args.max_documents, args.max_tokens)
    elapsed = time.perf_counter() - start
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    tokens = train["tokens"] + val["tokens"]
    print(f"wrote {tokens:,} tokens ({train['tokens']:,} train / {val['tokens']:,} val) from "
          f"{train['documents'] + val['documents']:,} documents with {tokenizer.description} to {output} "
          f"in {elapsed:.1f} s: {tokens / max(elapsed, 1e-9):,.0f} tokens/s")


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
