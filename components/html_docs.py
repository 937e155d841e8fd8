"""English prose from HTML documentation: Debian doc packages (``.deb``) or directories of ``.html``.

``scripts/prepare_data.py --html-docs PATH ...`` trains on this. Each HTML page becomes one
document made of its prose blocks (``<p>``, ``<li>``, ``<dt>``, ``<dd>``, ``<blockquote>``,
``<h1>``-``<h6>``, and elements of class ``para`` or ``block``), blank-line separated, with whitespace collapsed. Dropped, because they are
not natural-language text:

* everything inside ``<pre>`` (code and console blocks), ``<table>``, ``<script>``, ``<style>``,
  ``<head>``, ``<nav>``, ``<math>``/``<svg>``, and inside elements whose class marks navigation
  (Sphinx sidebars/related bars/footers, DocBook navheader/navfooter/toc);
* blocks of fewer than ``MIN_WORDS`` words (headings, index and TOC entries) or with less than
  ``MIN_LETTER_FRACTION`` letters among their non-space characters (signatures, tables in prose);
* every block whose text appeared before in the corpus (boilerplate, copyright lines, repeated
  notes: exact match after whitespace collapsing), and pages left with no block;
* pages that are not English: fewer than ``MIN_ENGLISH_FRACTION`` of their words are among 25
  English function words (translations that no directory name gives away, e.g. ``guide-de/``).

Pages are visited in sorted path order, so the same inputs give the same documents. Skipped
pages: those under a locale directory other than English (``de-DE``, ``zh_CN``, ...), Sphinx's
generated pages (path components starting with ``_``, ``genindex``, ``search``, ``*modindex``),
DocBook's ``bookindex`` and javadoc's index, tree, ``class-use`` and summary listings.

A ``.deb`` is read in Python (ar archive, then its ``data.tar.{xz,gz,bz2}``), so no ``dpkg`` is
needed; a ``data.tar.zst`` (Ubuntu) is refused with the fix (extract with ``dpkg-deb -x``).
"""

from __future__ import annotations

import hashlib
import html.parser
import io
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

MIN_WORDS = 6  # shorter blocks are headings, TOC/index entries or labels, not sentences
MIN_LETTER_FRACTION = 0.6  # of non-space characters; prose is ~0.8, option lists and numbers far less
# A page is English when at least this fraction of its words are the commonest English function
# words (English prose: 0.25-0.35; German, French, Italian prose and code: under 0.1).
MIN_ENGLISH_FRACTION = 0.15
ENGLISH_FUNCTION_WORDS = frozenset(
    "the of and to a in is that for it as with be on are this by or an from at which not can if you".split())
PROSE_TAGS = frozenset({"p", "li", "dt", "dd", "blockquote", "h1", "h2", "h3", "h4", "h5", "h6"})
PROSE_CLASSES = frozenset({"para", "block"})  # DocBook/Publican paragraphs, javadoc descriptions (<div>s)
SKIP_TAGS = frozenset({"pre", "table", "script", "style", "head", "nav", "footer", "math", "svg", "title", "button"})
SKIP_CLASSES = frozenset({
    "sphinxsidebar", "related", "footer", "headerlink", "wy-nav-side", "rst-footer-buttons", "breadcrumbs",
    "navheader", "navfooter", "toc", "toctree-wrapper", "highlight", "doctest", "mobile-nav", "copyright", "sig",
})
# Tags that never have an end tag: they must not open a skip/prose scope.
VOID_TAGS = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
                       "track", "wbr"})
_LOCALE_DIR = re.compile(r"^[a-z]{2}[-_][A-Z]{2}$")
# Generated listings: Sphinx indexes, DocBook's book index, javadoc's indexes/trees/summaries.
_GENERATED_PAGE = re.compile(r"^(genindex.*|search|.*modindex|bookindex|index-all|index-\d+|allclasses.*|"
                             r"allpackages.*|.*-tree|serialized-form|deprecated-list|constant-values)\.html$")
_GENERATED_DIRS = frozenset({"class-use", "index-files"})  # javadoc: "Uses of Class X" pages, split index
_SPACE = re.compile(r"\s+")


def is_content_page(relative: str) -> bool:
    """False for pages that are not English prose documentation (see the module docstring)."""
    parts = relative.split("/")
    if not parts[-1].endswith(".html") or _GENERATED_PAGE.match(parts[-1]):
        return False
    for part in parts[:-1]:
        if part.startswith("_") or part in _GENERATED_DIRS or (_LOCALE_DIR.match(part) and not part.startswith("en")):
            return False
    return True


class _ProseParser(html.parser.HTMLParser):
    """Collects the text of prose blocks outside skipped elements; ``blocks`` is the result."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[str] = []
        self._stack: list[tuple[str, bool, bool]] = []  # (tag, opens a skip scope, opens a prose block)
        self._skip_depth = 0
        self._prose_depth = 0
        self._parts: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in VOID_TAGS:
            if tag == "br":
                self._parts.append(" ")
            return
        classes = set((dict(attrs).get("class") or "").split())
        skip = tag in SKIP_TAGS or bool(classes & SKIP_CLASSES)
        prose = (tag in PROSE_TAGS or bool(classes & PROSE_CLASSES)) and not self._skip_depth
        if prose and self._prose_depth:  # a nested block (a <p> in an <li>) ends the text before it
            self._flush()
        self._stack.append((tag, skip, prose))
        self._skip_depth += skip
        self._prose_depth += prose

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID_TAGS or all(open_tag != tag for open_tag, _, _ in self._stack):
            return  # a stray end tag: HTML in the wild has them
        while self._stack:  # close unclosed children too (<li> and <p> need no end tag)
            open_tag, skip, prose = self._stack.pop()
            self._skip_depth -= skip
            self._prose_depth -= prose
            if prose:
                self._flush()
            if open_tag == tag:
                return

    def handle_data(self, data: str) -> None:
        if self._prose_depth and not self._skip_depth:
            self._parts.append(data)

    def _flush(self) -> None:
        text = _SPACE.sub(" ", "".join(self._parts)).strip()
        self._parts = []
        if text:
            self.blocks.append(text)


def is_prose(block: str) -> bool:
    """A block long enough and lettered enough to be a sentence rather than a label or a formula."""
    if len(block.split()) < MIN_WORDS:
        return False
    visible = [char for char in block if not char.isspace()]
    return sum(char.isalpha() for char in visible) >= MIN_LETTER_FRACTION * len(visible)


def is_english(blocks: list[str]) -> bool:
    """Whether the words of ``blocks`` are English by the share of English function words in them."""
    words = [word.lower() for block in blocks for word in block.split()]
    return sum(word in ENGLISH_FUNCTION_WORDS for word in words) >= MIN_ENGLISH_FRACTION * len(words)


def prose_blocks(page: str) -> list[str]:
    """The prose blocks of one HTML page, in document order (no cross-page deduplication)."""
    parser = _ProseParser()
    parser.feed(page)
    parser.close()
    return [block for block in parser.blocks if is_prose(block)]


class Deduplicator:
    """Drops blocks seen before (by a 16-byte digest of their text) and pages left empty."""

    def __init__(self) -> None:
        self._seen: set[bytes] = set()

    def document(self, blocks: list[str]) -> str:
        """The page's unseen blocks joined by blank lines ('' when none is left)."""
        kept = []
        for block in blocks:
            digest = hashlib.blake2b(block.encode("utf-8", "surrogatepass"), digest_size=16).digest()
            if digest not in self._seen:
                self._seen.add(digest)
                kept.append(block)
        return "\n\n".join(kept)


def html_pages(path: Path) -> Iterator[tuple[str, str]]:
    """(relative path, HTML text) of the content pages of a .deb or a directory, in sorted path order."""
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*.html") if p.is_file()):
            relative = file.relative_to(path).as_posix()
            if is_content_page(relative):
                yield relative, file.read_text(encoding="utf-8", errors="replace")
    elif path.suffix == ".deb":
        with _deb_data(path) as archive:
            members = sorted((m for m in archive.getmembers() if m.isfile() and is_content_page(m.name.lstrip("./"))),
                             key=lambda member: member.name)
            for member in members:
                yield member.name.lstrip("./"), archive.extractfile(member).read().decode("utf-8", "replace")
    else:
        raise ValueError(f"--html-docs {path}: not a .deb file or a directory; pass a Debian doc package (apt-get "
                         f"download python3.11-doc) or a directory of .html files")


def _deb_data(path: Path) -> tarfile.TarFile:
    """The data.tar.* member of a .deb (an ar archive: 8-byte magic, then 60-byte headers + even-padded data)."""
    raw = path.read_bytes()
    if not raw.startswith(b"!<arch>\n"):
        raise ValueError(f"{path} is not a Debian package (no ar magic); pass a .deb from apt-get download")
    offset = 8
    while offset + 60 <= len(raw):
        name = raw[offset:offset + 16].decode("ascii").strip().rstrip("/")
        size = int(raw[offset + 48:offset + 58].decode("ascii"))
        start = offset + 60
        if name.startswith("data.tar"):
            if name.endswith(".zst"):
                raise ValueError(f"{path} holds {name}, which Python's tarfile cannot read; extract it with "
                                 f"'dpkg-deb -x {path} DIR' and pass DIR to --html-docs")
            return tarfile.open(fileobj=io.BytesIO(raw[start:start + size]), mode="r:*")
        offset = start + size + (size % 2)
    raise ValueError(f"{path} has no data.tar member; it is not a complete Debian package")


def documents(paths: list[Path], max_chars: int = 0) -> Iterator[str]:
    """Deduplicated prose documents of the pages of ``paths`` (in the given order), at most ``max_chars``
    characters in all (0 = no limit; the page that would pass the limit is the first left out)."""
    dedupe, total = Deduplicator(), 0
    for path in paths:
        for _, page in html_pages(path):
            blocks = prose_blocks(page)
            text = dedupe.document(blocks) if is_english(blocks) else ""
            if not text:
                continue
            total += len(text)
            if max_chars and total > max_chars:
                return
            yield text
