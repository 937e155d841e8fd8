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

from components.config import Data, Tokenizer
from components.data import TokenDataset, ensure_dataset, read_manifest, split_of
from components.tokenizer import build_tokenizer
from scripts.prepare_data import main
from tests.launch import REPO, python

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
    from scripts.html_docs import is_content_page

    assert is_content_page(path) is kept
