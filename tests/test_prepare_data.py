"""scripts/prepare_data.py on local txt/jsonl/parquet files and a stubbed hub dataset (no network)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from components.config import Data, Tokenizer
from components.data import TokenDataset, ensure_dataset, read_manifest, split_of
from components.tokenizer import build_tokenizer
from init_schemes.base import truncation_shrink
from scripts.prepare_data import main
from tests.launch import REPO, python
from tests.wandb_records import offline_run

DOCUMENTS = [
    "The quick brown fox jumps over the lazy dog.\n",
    "def add(a, b):\n    return a + b\n",
    "Grüße aus Köln — naïve café, 日本語テキスト, emoji 🤖.",
    "   leading spaces and a trailing newline\n\n",
    "<|endoftext|> inside a document is plain text",
]
TOKENIZER_ARGS = ["--tokenizer.name", "cl100k_base", "--tokenizer.max_vocab", "512"]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer(Tokenizer(name="cl100k_base", max_vocab=512))


def _expected_stream(tokenizer, documents: list[str]) -> list[int]:
    return [i for doc in documents for i in tokenizer.encode(doc) + [tokenizer.eos_id]]


def _write_inputs(directory, kind: str, documents: list[str]) -> list[str]:
    directory.mkdir(parents=True, exist_ok=True)
    if kind == "txt":
        paths = [directory / f"doc_{i:02d}.txt" for i in range(len(documents))]
        for path, doc in zip(paths, documents):
            path.write_text(doc, encoding="utf-8")
        return [str(p) for p in paths]
    if kind == "jsonl":
        path = directory / "docs.jsonl"
        lines = [json.dumps({"id": i, "body": doc}) for i, doc in enumerate(documents)]
        path.write_text("\n".join(lines[:2]) + "\n\n" + "\n".join(lines[2:]) + "\n")  # a blank line is skipped
        return [str(path)]
    path = directory / "docs.parquet"
    pq.write_table(pa.table({"id": list(range(len(documents))), "body": documents}), path, row_group_size=2)
    return [str(path)]


def _last_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    errors = [line for line in err if line.startswith("error:")]
    assert len(errors) == 1 and err[-1] == errors[0]
    return errors[0]


@pytest.mark.parametrize("kind", ["txt", "jsonl", "parquet"])
def test_local_files_give_the_tokens_of_their_documents_plus_eos(tmp_path, tokenizer, kind):
    inputs = _write_inputs(tmp_path / "in", kind, DOCUMENTS)
    output = tmp_path / "out"
    assert main(["--input", *inputs, "--output", str(output), "--text-field", "body", "--val-fraction", "0",
                 "--shard-tokens", "16", *TOKENIZER_ARGS]) == 0
    expected = _expected_stream(tokenizer, DOCUMENTS)
    manifest = read_manifest(output)
    train = manifest["splits"]["train"]
    assert (train["tokens"], train["documents"]) == (len(expected), 5) and len(expected) == 160  # incl. 5 EOS
    assert len(train["shards"]) == -(-len(expected) // 16)
    assert manifest["splits"]["val"] == {"tokens": 0, "documents": 0, "shards": []}
    assert TokenDataset(output, "train").read(0, len(expected)).tolist() == expected


def test_directory_input_splits_documents_by_text_hash(tmp_path, tokenizer, capsys):
    documents = [f"document number {i}: " + "lorem ipsum " * (i % 7 + 1) for i in range(60)]
    _write_inputs(tmp_path / "in" / "a", "jsonl", documents[:30])
    _write_inputs(tmp_path / "in" / "b", "parquet", documents[30:])
    (tmp_path / "in" / "README.md").write_text("ignored: not a supported suffix inside a directory")
    output = tmp_path / "out"
    assert main(["--input", str(tmp_path / "in"), "--output", str(output), "--text-field", "body",
                 "--val-fraction", "0.25", *TOKENIZER_ARGS]) == 0
    assert "tokens/s" in capsys.readouterr().out
    by_split = {"train": [], "val": []}
    for doc in documents:
        by_split[split_of(doc, 0.25)].append(doc)
    assert 5 <= len(by_split["val"]) <= 25
    for split, docs in by_split.items():
        dataset = TokenDataset(output, split)
        assert dataset.n_documents == len(docs)
        assert dataset.read(0, dataset.n_tokens).tolist() == _expected_stream(tokenizer, docs)


def test_hub_dataset_is_streamed_through_datasets(tmp_path, tokenizer, monkeypatch):
    calls = []

    def load_dataset(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        return iter([{"text": doc, "meta": i} for i, doc in enumerate(DOCUMENTS * 3)])

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    output = tmp_path / "hub"
    assert main(["--hf-dataset", "org/corpus", "--hf-config", "en", "--hf-split", "validation", "--output",
                 str(output), "--val-fraction", "0", "--max-documents", "7", *TOKENIZER_ARGS]) == 0
    assert calls == [("org/corpus", "en", "validation", True)]
    manifest = read_manifest(output)
    expected = _expected_stream(tokenizer, (DOCUMENTS * 3)[:7])
    assert manifest["splits"]["train"]["tokens"] == len(expected) and manifest["splits"]["train"]["documents"] == 7
    assert manifest["source"] == "hub dataset org/corpus (config en, split validation)"


def test_existing_output_is_refused_and_untouched(tmp_path, capsys):
    inputs = _write_inputs(tmp_path / "in", "txt", DOCUMENTS)
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("precious")
    assert main(["--input", *inputs, "--output", str(output), *TOKENIZER_ARGS]) == 2
    assert "exists and is not empty" in _last_error_line(capsys)
    assert [p.name for p in output.iterdir()] == ["keep.txt"] and (output / "keep.txt").read_text() == "precious"


@pytest.mark.parametrize(("content", "extra", "message"), [
    ("", [], "no non-empty documents"),
    ('{"body": "x"}\n', [], "has no field 'text' (it has: body); pass --text-field NAME"),
    ('{"text": 3}\n', [], "holds int, not a string"),
    ("{not json\n", [], "docs.jsonl:1: invalid JSON"),
    ('{"text": "a"}\n', ["--val-fraction", "0.7"], "--val-fraction must be in [0, 0.5)"),
    ('{"text": "only one"}\n', ["--val-fraction", "0.49"], "fell into the"),
])
def test_bad_inputs_give_one_line_errors_and_write_nothing(tmp_path, capsys, content, extra, message):
    (tmp_path / "docs.jsonl").write_text(content)
    output = tmp_path / "out"
    assert main(["--input", str(tmp_path / "docs.jsonl"), "--output", str(output), *extra, *TOKENIZER_ARGS]) == 2
    assert message in _last_error_line(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl"]  # no output, no temp dir


def test_bad_paths_and_columns_give_one_line_errors(tmp_path, capsys):
    cases = [
        (["--input", str(tmp_path / "missing.txt")], "missing.txt does not exist"),
        (["--input", str(tmp_path / "in" / "docs.parquet"), "--text-field", "content"],
         "has no column 'content' (it has: id, body)"),
        (["--input", str(tmp_path / "table.csv")], "unsupported file type '.csv'"),
        (["--input", str(tmp_path / "in"), "--tokenizer.name", str(tmp_path / "vocab.tiktoken")],
         "vocab.tiktoken does not exist"),
    ]
    _write_inputs(tmp_path / "in", "parquet", DOCUMENTS)
    (tmp_path / "table.csv").write_text("a,b\n")
    for args, message in cases:
        assert main([*args, "--output", str(tmp_path / "out")]) == 2
        assert message in _last_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_shards_from_another_tokenizer_are_rejected_by_the_trainer_side(tmp_path, tokenizer):
    inputs = _write_inputs(tmp_path / "in", "txt", DOCUMENTS)
    output = tmp_path / "out"
    assert main(["--input", *inputs, "--output", str(output), "--val-fraction", "0", *TOKENIZER_ARGS]) == 0
    assert ensure_dataset(Data(dataset=str(output)), tokenizer) == output
    full = build_tokenizer(Tokenizer(name="cl100k_base"))
    with pytest.raises(ValueError, match=f"fingerprint {tokenizer.fingerprint}.*not the configured cl100k_base "
                                         f"\\({full.fingerprint}\\)") as caught:
        ensure_dataset(Data(dataset=str(output)), full)
    assert "\n" not in str(caught.value)


@pytest.mark.multiprocess
def test_script_runs_from_the_command_line(tmp_path):
    inputs = _write_inputs(tmp_path / "in", "jsonl", DOCUMENTS)
    ok = python(["scripts/prepare_data.py", "--input", *inputs, "--output", str(tmp_path / "out"), "--text-field",
                 "body", "--val-fraction", "0", *TOKENIZER_ARGS], env={"OMP_NUM_THREADS": "1"})
    assert "tokens/s" in ok.stdout and "from 5 documents" in ok.stdout
    assert read_manifest(tmp_path / "out")["splits"]["train"]["documents"] == 5



# --- --html-docs: real pages of Debian doc packages (tests/data/html_docs/README.md says which) ---

HTML_DOCS = REPO / "tests" / "data" / "html_docs"
# Prose blocks of the English content pages of HTML_DOCS, in sorted path order, counted by reading the
# pages; the it_IT translation (a locale directory) and the German GnuCash page (too few English
# function words) give no document.
ENGLISH_PAGE_BLOCKS = {"linux-doc-6.1/devicetree/changesets.html": 6,
                       "linux-doc-6.1/maintainer/modifying-patches.html": 5, "python3.11-doc/howto/cporting.html": 5}


@pytest.fixture(scope="module")
def full_tokenizer():
    return build_tokenizer(Tokenizer(name="cl100k_base"))


def _documents_of(output, tokenizer) -> list[str]:
    """The documents of a shard directory (train then val), decoded."""
    ids = []
    for split in ("train", "val"):
        dataset = TokenDataset(output, split)
        ids += dataset.read(0, dataset.n_tokens).tolist()
    text = tokenizer.decode(ids)
    assert text.endswith("<|endoftext|>")
    return text.split("<|endoftext|>")[:-1]


def _html_docs_to_shards(tmp_path, inputs: list[str], *extra: str) -> tuple[int, object]:
    output = tmp_path / "out"
    return main(["--html-docs", *inputs, "--output", str(output), "--val-fraction", "0", *extra]), output


def test_html_docs_keep_the_prose_of_real_pages(tmp_path, full_tokenizer):
    code, output = _html_docs_to_shards(tmp_path, [str(HTML_DOCS)])
    assert code == 0
    documents = _documents_of(output, full_tokenizer)
    assert [len(doc.split("\n\n")) for doc in documents] == list(ENGLISH_PAGE_BLOCKS.values())
    changesets, patches, porting = documents
    assert changesets.startswith("A Devicetree changeset is a method which allows one to apply changes in the "
                                 "live tree in such a way that either the full set of changes will be applied")
    assert "Special note to back-porters:" in patches and "Random J Developer" not in patches  # in its <pre>
    assert porting.startswith("Porting Extension Modules to Python 3\n\nWe recommend the following resources")
    everything = "\n".join(documents)
    for dropped in ("Previous topic", "Report a Bug", "Show Source", "Copyright", "Sphinx", "Budget", "Abschnitt"):
        assert dropped not in everything
    train = read_manifest(output)["splits"]["train"]
    assert train["documents"] == 3
    assert train["tokens"] == sum(len(full_tokenizer.encode(doc)) + 1 for doc in documents)


def test_html_docs_drop_paragraphs_seen_before_and_stop_at_max_tokens(tmp_path, full_tokenizer):
    pages = tmp_path / "pages"
    shutil.copytree(HTML_DOCS / "python3.11-doc", pages / "a")
    shutil.copytree(HTML_DOCS / "python3.11-doc", pages / "b")  # the same page again: every block is a repeat
    shutil.copytree(HTML_DOCS / "linux-doc-6.1" / "devicetree", pages / "c")
    code, output = _html_docs_to_shards(tmp_path, [str(pages)])
    assert code == 0
    documents = _documents_of(output, full_tokenizer)
    assert [len(doc.split("\n\n")) for doc in documents] == [5, 6]
    first_length = len(full_tokenizer.encode(documents[0])) + 1
    code, capped = _html_docs_to_shards(tmp_path / "capped", [str(pages)], "--max-tokens", str(first_length))
    assert code == 0 and _documents_of(capped, full_tokenizer) == documents[:1]


@pytest.mark.multiprocess
@pytest.mark.skipif(shutil.which("dpkg-deb") is None, reason="needs dpkg-deb to build the test package")
def test_html_docs_read_a_deb_like_its_directory(tmp_path, full_tokenizer, capsys):
    root = tmp_path / "root"
    shutil.copytree(HTML_DOCS, root / "usr" / "share" / "doc")
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN" / "control").write_text("Package: initlab-test-doc\nVersion: 1.0\nArchitecture: all\n"
                                             "Maintainer: initlab <initlab@example.org>\nDescription: test pages\n")
    xz_deb, zst_deb = tmp_path / "test_xz.deb", tmp_path / "test_zst.deb"
    for compression, deb in (("xz", xz_deb), ("zstd", zst_deb)):
        subprocess.run(["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build", str(root), str(deb)],
                       check=True, capture_output=True)
    code, output = _html_docs_to_shards(tmp_path / "from_dir", [str(HTML_DOCS)])
    assert code == 0
    code, from_deb = _html_docs_to_shards(tmp_path / "from_deb", [str(xz_deb)])
    assert code == 0 and _documents_of(from_deb, full_tokenizer) == _documents_of(output, full_tokenizer)
    assert main(["--html-docs", str(zst_deb), "--output", str(tmp_path / "zst")]) == 2
    assert "data.tar.zst, which Python's tarfile cannot read; extract it with 'dpkg-deb -x" in _last_error_line(capsys)
    assert not (tmp_path / "zst").exists()


def test_html_docs_bad_paths_give_one_line_errors(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("not a package")
    (tmp_path / "fake.deb").write_text("not an ar archive")
    cases = [(str(tmp_path / "missing.deb"), "missing.deb is not an existing .deb file or directory"),
             (str(tmp_path / "notes.txt"), "notes.txt is not an existing .deb file or directory"),
             (str(tmp_path / "fake.deb"), "fake.deb is not a Debian package (no ar magic)")]
    for path, message in cases:
        assert main(["--html-docs", path, "--output", str(tmp_path / "out")]) == 2
        assert message in _last_error_line(capsys)
    assert not (tmp_path / "out").exists()


def test_count_tokens_re_encodes_the_documents_with_another_vocabulary(tmp_path, full_tokenizer, capsys):
    from scripts.count_tokens import main as count_main

    code, output = _html_docs_to_shards(tmp_path, [str(HTML_DOCS)], "--tokenizer.max_vocab", "512")
    assert code == 0
    documents = _documents_of(output, build_tokenizer(Tokenizer(max_vocab=512)))
    stored = read_manifest(output)["splits"]["train"]["tokens"]
    full = sum(len(full_tokenizer.encode(doc)) + 1 for doc in documents)
    assert full < stored  # 512 ranks cut words into more pieces than the full vocabulary does
    assert count_main([str(output)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"total: {stored:,} as stored, {full:,} re-encoded"
    assert count_main([str(output), "--shards-tokenizer.max_vocab", "0"]) == 2
    assert "was tokenized with cl100k_base (first 512 ranks)" in _last_error_line(capsys)


@pytest.mark.parametrize(("path", "kept"), [
    ("usr/share/doc/python3.11/html/library/os.html", True),
    ("usr/share/doc/debian-handbook/html/en-US/sect.ldap-directory.html", True),
    ("usr/share/doc/debian-handbook/html/de-DE/sect.ldap-directory.html", False),  # another locale
    ("usr/share/doc/linux-doc-6.1/html/translations/zh_CN/index.html", False),
    ("usr/share/doc/python3.11/html/_sources/library/os.rst.txt", False),  # not a page
    ("usr/share/doc/python3.11/html/_static/basic.html", False),  # Sphinx's own files
    ("usr/share/doc/python3.11/html/genindex-A.html", False),
    ("usr/share/doc/python3.11/html/py-modindex.html", False),
    ("usr/share/doc/openjdk-17-jre-headless/api/index-files/index-1.html", False),  # javadoc listings
    ("usr/share/doc/openjdk-17-jre-headless/api/java.base/java/lang/class-use/String.html", False),
    ("usr/share/doc/openjdk-17-jre-headless/api/java.base/java/lang/String.html", True),
    ("usr/share/doc/openjdk-17-jre-headless/api/overview-tree.html", False),
])
def test_html_docs_skip_generated_and_translated_pages(path, kept):
    from components.html_docs import is_content_page

    assert is_content_page(path) is kept


# --- one's own data: a single .txt file (split by position), save_to_disk folders, the training tokenizer ---

def _book(n_words: int, seed: int = 0) -> str:
    """A deterministic English-like text of ``n_words`` words in lines and paragraphs (one book, one file)."""
    import numpy as np

    words = ("the king and queen of a far land rode out at dawn to see what the river had brought them while "
             "every bird sang of rain wind fire bread gold stone song night").split()
    picks = np.random.default_rng(seed).integers(0, len(words), n_words)
    lines = [" ".join(words[i] for i in picks[start:start + 12]) for start in range(0, n_words, 12)]
    return "\n".join(line + (".\n" if i % 5 == 4 else ",") for i, line in enumerate(lines)) + "\n"


def test_one_text_file_is_split_by_position(tmp_path, tokenizer, capsys):
    text = _book(2_000)
    (tmp_path / "book.txt").write_text(text)
    output = tmp_path / "out"
    assert main(["--input", str(tmp_path / "book.txt"), "--output", str(output), "--val-fraction", "0.1",
                 *TOKENIZER_ARGS]) == 0
    ids = tokenizer.encode(text)
    n_val = len(ids) // 10
    manifest = read_manifest(output)
    assert manifest["split_by"] == "position" and manifest["tokenizer"]["config"] == {
        "name": "cl100k_base", "max_vocab": 512, "split_pattern": "cl100k"}
    train, val = TokenDataset(output, "train"), TokenDataset(output, "val")
    assert (train.n_tokens, val.n_tokens) == (len(ids) - n_val + 1, n_val + 1) and n_val == 487
    eos = [tokenizer.eos_id]
    assert train.read(0, train.n_tokens).tolist() == ids[:-n_val] + eos  # the text's head, then its tail
    assert val.read(0, val.n_tokens).tolist() == ids[-n_val:] + eos
    out = capsys.readouterr().out
    assert "split by position) from 1 documents" in out
    assert f"train on it with: --data.dataset {output} --tokenizer.name cl100k_base --tokenizer.max_vocab 512" in out


def test_split_by_overrides_auto_and_documents_split_by_hash_say_how_to_fix_an_empty_split(tmp_path, capsys):
    inputs = _write_inputs(tmp_path / "in", "txt", DOCUMENTS[:2])
    assert main(["--input", *inputs, "--output", str(tmp_path / "doc"), "--split-by", "document",
                 *TOKENIZER_ARGS]) == 2  # 2 documents x 0.02: neither falls into validation
    assert "split by position instead (--split-by position" in _last_error_line(capsys)
    assert not (tmp_path / "doc").exists()
    jsonl = _write_inputs(tmp_path / "in", "jsonl", DOCUMENTS)
    assert main(["--input", *jsonl, "--output", str(tmp_path / "pos"), "--text-field", "body",
                 "--split-by", "position", "--val-fraction", "0.2", *TOKENIZER_ARGS]) == 0
    manifest = read_manifest(tmp_path / "pos")
    assert manifest["split_by"] == "position" and manifest["splits"]["train"]["documents"] == 5
    assert manifest["splits"]["val"]["documents"] == 5  # every document's last fifth


def test_many_text_files_are_split_by_document_hash_on_auto(tmp_path):
    documents = [f"note {i}: " + "lorem ipsum " * (i % 5 + 1) for i in range(600)]  # 600 x 0.02 = 12 expected
    inputs = _write_inputs(tmp_path / "in", "txt", documents)
    assert main(["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), *TOKENIZER_ARGS]) == 0
    manifest = read_manifest(tmp_path / "out")
    assert manifest["split_by"] == "document" and len(inputs) == 600
    n_val = sum(split_of(doc, 0.02) == "val" for doc in documents)
    assert manifest["splits"]["val"]["documents"] == n_val > 0


def test_save_to_disk_folders_are_read_row_by_row(tmp_path, tokenizer, capsys):
    import datasets

    rows = DOCUMENTS * 3
    datasets.Dataset.from_dict({"id": list(range(len(rows))), "body": rows}).save_to_disk(str(tmp_path / "ds"))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": rows[:4]}),
                          "test": datasets.Dataset.from_dict({"body": rows[4:]})}).save_to_disk(str(tmp_path / "dd"))
    common = ["--text-field", "body", "--val-fraction", "0", *TOKENIZER_ARGS]
    assert main(["--input", str(tmp_path / "ds"), "--output", str(tmp_path / "out"), *common]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("--tokenizer.max_vocab 512 --metrics.val_freq 0")
    train = read_manifest(tmp_path / "out")["splits"]["train"]
    assert train["documents"] == 15
    assert TokenDataset(tmp_path / "out", "train").read(0, train["tokens"]).tolist() == _expected_stream(tokenizer, rows)
    assert main(["--input", str(tmp_path / "dd"), "--hf-split", "test", "--output", str(tmp_path / "test"),
                 *common]) == 0
    assert read_manifest(tmp_path / "test")["splits"]["train"]["tokens"] == len(_expected_stream(tokenizer, rows[4:]))
    assert main(["--input", str(tmp_path / "dd"), "--hf-split", "validation", "--output", str(tmp_path / "x"),
                 *common]) == 2
    assert "holds splits train, test, not 'validation'; pass --hf-split NAME" in _last_error_line(capsys)
    assert main(["--input", str(tmp_path / "ds"), "--output", str(tmp_path / "x"), "--val-fraction", "0",
                 *TOKENIZER_ARGS]) == 2
    assert "has no column 'text' (it has: id, body); pass --text-field NAME" in _last_error_line(capsys)


def test_config_gives_the_training_tokenizer_and_a_mismatch_names_the_flags(tmp_path, tokenizer, capsys):
    (tmp_path / "book.txt").write_text(_book(300))
    debug = str(REPO / "train_configs" / "debug.toml")
    assert main(["--input", str(tmp_path / "book.txt"), "--output", str(tmp_path / "out"), "--config", debug]) == 0
    debug_tokenizer = build_tokenizer(Tokenizer(name="cl100k_base", max_vocab=4096))  # debug.toml's [tokenizer]
    assert ensure_dataset(Data(dataset=str(tmp_path / "out")), debug_tokenizer) == tmp_path / "out"
    with pytest.raises(ValueError) as caught:
        ensure_dataset(Data(dataset=str(tmp_path / "out")), tokenizer)
    assert "; add --tokenizer.name cl100k_base --tokenizer.max_vocab 4096 to the training command" in str(caught.value)
    assert main(["--input", str(tmp_path / "book.txt"), "--output", str(tmp_path / "flag"), "--config", debug,
                 "--tokenizer.max_vocab", "512"]) == 0  # a flag overrides the config's field
    assert read_manifest(tmp_path / "flag")["tokenizer"]["fingerprint"] == tokenizer.fingerprint
    (tmp_path / "bad.toml").write_text("[tokenizer]\nmax_vocabb = 3\n")
    assert main(["--input", str(tmp_path / "book.txt"), "--output", str(tmp_path / "x"), "--config",
                 str(tmp_path / "bad.toml")]) == 2
    line = _last_error_line(capsys)
    assert line.startswith(f"error: --config {tmp_path / 'bad.toml'}: unknown key tokenizer.max_vocabb") and \
        "did you mean 'max_vocab'" in line


@pytest.mark.multiprocess
def test_one_text_file_trains_the_debug_model_logging_to_wandb_offline(tmp_path, capsys):
    (tmp_path / "book.txt").write_text(_book(40_000))  # 220 KB
    assert main(["--input", str(tmp_path / "book.txt"), "--output", str(tmp_path / "data"), "--config",
                 str(REPO / "train_configs" / "debug.toml")]) == 0
    assert "train on it with: --data.dataset" in capsys.readouterr().out
    manifest = read_manifest(tmp_path / "data")
    assert manifest["splits"]["train"]["tokens"] > 40 * manifest["splits"]["val"]["tokens"] > 40 * 1_000
    trained = python(["train.py", "--config", "train_configs/debug.toml", "--data.dataset", str(tmp_path / "data"),
                      "--job.output_dir", str(tmp_path / "runs"), "--job.run_name", "book", "--training.steps", "2",
                      "--training.seq_len", "64", "--training.global_batch_size", "4", "--metrics.val_freq", "2",
                      "--metrics.val_tokens", "64", "--metrics.wandb", "true", "--metrics.wandb_mode", "offline",
                      "--init.scheme", "mitchell"],
                     env={"OMP_NUM_THREADS": "1", "WANDB_SILENT": "true"})
    run_dir = tmp_path / "runs" / "book"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2] and 0 < records[-1]["loss/val"] < 10
    assert "final loss train" in trained.stdout
    # HParams: the data, the tokenizer and each role's realised init std (d = 128, L = 4, +-3 sigma truncation)
    accumulator = EventAccumulator(str(run_dir))
    accumulator.Reload()
    start = plugin_data_pb2.HParamsPluginData.FromString(
        accumulator.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
    hparams = {key: getattr(value, value.WhichOneof("kind")) for key, value in start.hparams.items()}
    shrink = truncation_shrink(-3.0, 3.0)
    assert (hparams["dataset"], hparams["tokenizer"]) == (str(tmp_path / "data"), "cl100k_base (first 4096 ranks)")
    assert hparams["init_std.attn.q"] == pytest.approx(shrink / 128 ** 0.5, rel=1e-12)
    assert hparams["init_std.attn.out"] == pytest.approx(shrink / (2 * 128) ** 0.5, rel=1e-12)
    assert hparams["init_std.attn.out@last_layer"] == pytest.approx(shrink / (2 * 128 * 4) ** 0.5, rel=1e-12)
    assert "init_std.attn.q@last_layer" not in hparams and hparams["base_std"] == 0.02  # mitchell ignores it
    wandb_run = offline_run(run_dir / "wandb")  # the same values, the run's name, its resolved config and HParams
    assert wandb_run["name"] == "book" and wandb_run["config"]["data"]["dataset"] == str(tmp_path / "data")
    assert wandb_run["config"]["hparams"] == pytest.approx(hparams)
    for record in records:
        step = record.pop("step")
        assert wandb_run["history"][step] == pytest.approx(record)
