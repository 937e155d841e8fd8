"""Count a shard directory's tokens as written and as another tokenizer would write them.

    python scripts/count_tokens.py DIR [--tokenizer.name cl100k_base] [--tokenizer.max_vocab 0]

Decodes each split of DIR (written by scripts/prepare_data.py) with the tokenizer its manifest
names (the ``--shards-tokenizer.*`` options must rebuild it; checked by fingerprint), splits it into
documents at EOS and re-encodes them with ``--tokenizer.*`` (default: the full cl100k vocabulary),
EOS included, e.g. how many cl100k tokens a corpus stored with a truncated vocabulary holds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # `python scripts/count_tokens.py` from anywhere

from components.config import Tokenizer  # noqa: E402
from components.data import SPLITS, TokenDataset, check_tokenizer, read_manifest  # noqa: E402
from components.tokenizer import EOS_TOKEN, build_tokenizer  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="shard directory written by scripts/prepare_data.py")
    for prefix, default_vocab in (("shards-tokenizer", None), ("tokenizer", 0)):
        dest = prefix.replace("-", "_")
        parser.add_argument(f"--{prefix}.name", dest=f"{dest}_name", default="cl100k_base",
                            help=f"{prefix}: tiktoken encoding name or .tiktoken file")
        parser.add_argument(f"--{prefix}.max_vocab", dest=f"{dest}_max_vocab", type=int, default=default_vocab,
                            help=f"{prefix}: first N ranks (0 = all)"
                                 + ("; default: the manifest's n_vocab - 1" if default_vocab is None else ""))
    return parser.parse_args(argv)


def count(directory: Path, stored: Tokenizer, other: Tokenizer) -> dict[str, tuple[int, int, int]]:
    """Split -> (documents, tokens as stored, tokens under ``other``), EOS counted in both."""
    manifest = read_manifest(directory)
    decoder, encoder = build_tokenizer(stored), build_tokenizer(other)
    check_tokenizer(manifest, directory, decoder)
    result = {}
    for split in SPLITS:
        dataset = TokenDataset(directory, split)
        documents = decoder.decode(dataset.read(0, dataset.n_tokens).tolist()).split(EOS_TOKEN)[:-1]
        result[split] = (len(documents), dataset.n_tokens, sum(len(ids) + 1 for ids in encoder.encode_batch(documents)))
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        n_vocab = read_manifest(args.directory)["tokenizer"]["n_vocab"]
        stored_vocab = args.shards_tokenizer_max_vocab
        stored = Tokenizer(name=args.shards_tokenizer_name, max_vocab=n_vocab - 1 if stored_vocab is None else stored_vocab)
        other = Tokenizer(name=args.tokenizer_name, max_vocab=args.tokenizer_max_vocab)
        counts = count(args.directory, stored, other)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    for split, (documents, tokens, other_tokens) in counts.items():
        print(f"{split}: {documents:,} documents, {tokens:,} tokens as stored, {other_tokens:,} with {args.tokenizer_name} "
              f"(max_vocab {args.tokenizer_max_vocab})")
    print(f"total: {sum(c[1] for c in counts.values()):,} as stored, {sum(c[2] for c in counts.values()):,} re-encoded")
    return 0


if __name__ == "__main__":
    sys.exit(main())
