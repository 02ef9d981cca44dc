"""Corpora for CDA: local text/JSONL/CSV files, folders of them, or Hub datasets -> sentences -> a CDA dataset.

Everything streams: files are read line by line, sentences flow through a generator into an on-disk Arrow
table (``datasets.Dataset.from_generator``), so memory does not grow with corpus size.

Text files are split into paragraphs (blank-line separated) and then sentences. Two formats are detected
from the first 64 KiB (or chosen with ``text_format``): ``gutenberg`` (Project Gutenberg header/footer
stripped, ``_italics_`` underscores removed) and ``wikitext`` (WikiText's `` @-@ `` style tokenisation undone,
`` = Heading = `` lines dropped, sentences with ``<unk>`` dropped because the model never sees that token).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import stat
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from peft_debias.core.errors import DebiasError, one_line
from peft_debias.core.fingerprints import sha256_files
from peft_debias.core.hub_ids import is_dataset_source, split_config

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".raw", ".tokens")
FILE_SUFFIXES = (*TEXT_SUFFIXES, ".jsonl", ".csv")
TEXT_FORMATS = ("auto", "plain", "gutenberg", "wikitext")
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr st jr sr prof rev gen col capt lt sgt mt vs etc no vol fig ch co inc ltd esq messrs".split()  # noqa: SIM905
)
_BOUNDARY = re.compile(r"[.!?]+[\"'”’)\]]*(?=\s+[\"'“‘(\[]?[A-Z0-9])")
_WIKI_HEADING = re.compile(r"^\s*=( =)* .* =( =)*\s*$")
_WIKI_SUBS = [
    (re.compile(r" @([-.,])@ "), r"\1"),
    (re.compile(r" (n't|'s|'re|'ve|'ll|'d|'m)\b"), r"\1"),
    (re.compile(r" ([.,;:!?)\]}])"), r"\1"),
    (re.compile(r"([(\[{]) "), r"\1"),
]


def split_sentences(paragraph: str) -> list[str]:
    """Split a paragraph into sentences at ``.``/``!``/``?`` followed by a capital, except after abbreviations
    (``Mr.``) and single initials (``J.``)."""
    out, start = [], 0
    for m in _BOUNDARY.finditer(paragraph):
        before = re.search(r"(\w+)\W*$", paragraph[start : m.start() + 1])
        word = before.group(1) if before else ""
        if paragraph[m.start()] == "." and (word.lower() in _ABBREVIATIONS or (len(word) == 1 and word.isupper())):
            continue
        out.append(paragraph[start : m.end()].strip())
        start = m.end()
    out.append(paragraph[start:].strip())
    return [s for s in out if s]


def _wikitext_clean(paragraph: str) -> str:
    for pattern, repl in _WIKI_SUBS:
        paragraph = pattern.sub(repl, paragraph)
    parts = paragraph.split(' " ')  # WikiText spaces out quotes: pair them up open/close
    if len(parts) > 1:
        paragraph = "".join(p + (' "' if i % 2 == 0 else '" ') for i, p in enumerate(parts[:-1])) + parts[-1]
    return paragraph.strip()


def sniff_text_format(head: str) -> str:
    """Guess a text file's format from its first characters."""
    if "*** START OF TH" in head and "PROJECT GUTENBERG" in head.upper():
        return "gutenberg"
    if " @-@ " in head or " @,@ " in head or " <unk> " in head or re.search(r"(?m)^ = [^=\n]+ = $", head):
        return "wikitext"
    return "plain"


def _file_kind(path: Path, missing: str | None = None) -> str:
    """``"file"``, ``"folder"`` or what else ``path`` is (a FIFO, a socket, a device), from ``os.stat`` alone:
    nothing is opened, so a FIFO with no writer cannot block the run. A path that does not resolve (a dangling
    link) is ``missing`` when given, else an error."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError as err:
        if missing is not None:
            return missing
        raise DebiasError(f"corpus {path} not found", "pass an existing file or folder") from err
    except OSError as err:
        raise DebiasError(f"cannot read corpus {path} ({err.strerror})", "check the path and permissions") from err
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    if stat.S_ISFIFO(mode):
        return "named pipe (FIFO)"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "special file"


def _refuse_special(path: Path, kind: str) -> DebiasError:
    return DebiasError(f"corpus {path} is a {kind}, not a regular file or folder", "pass text files or folders of them")


def utf8_error_at(path: Path, chunk: int = 1 << 20) -> tuple[int, int] | None:
    """``(line, byte offset)`` of the first byte of ``path`` that is not valid UTF-8 (a truncated last character
    included), or None. Reads in chunks, so memory stays flat on files without newlines."""
    carry, base, line = b"", 0, 1
    with path.open("rb") as fh:
        while True:
            block = fh.read(chunk)
            data = carry + block
            try:
                data.decode("utf-8")
                good, bad = len(data), None
            except UnicodeDecodeError as err:
                good, bad = err.start, err
            if bad is not None and (not block or bad.end < len(data) or bad.reason != "unexpected end of data"):
                return line + data.count(b"\n", 0, good), base + good
            if not block:
                return None
            line += data.count(b"\n", 0, good)
            carry, base = data[good:], base + good


def not_utf8(path: Path, what: str = "corpus file") -> DebiasError:
    """The error for a file with bytes that are not UTF-8, naming the first one's line and byte offset."""
    where = utf8_error_at(path)
    at = f" (line {where[0]}, byte {where[1]})" if where else ""
    return DebiasError(f"{what} {path} is not UTF-8 text{at}", "convert it to UTF-8 (e.g. iconv -t utf-8)")


def _open_text(path: Path):
    kind = _file_kind(path)
    if kind != "file":
        raise _refuse_special(path, kind)
    try:
        head = path.open("rb").read(65536)
    except OSError as err:
        raise DebiasError(f"cannot read corpus file {path} ({err.strerror})", "check the path and permissions") from err
    if b"\x00" in head:
        raise DebiasError(f"corpus file {path} is binary, not text", "pass UTF-8 text, JSONL or CSV files")
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as err:
        if len(head) < 65536 or err.start < len(head) - 4:  # a character cut at the 64 KiB edge is fine
            raise not_utf8(path) from err
    return path.open(encoding="utf-8-sig", errors="strict")


def _lines(path: Path, fh) -> Iterator[str]:
    """The lines of the open text file ``fh``; a byte that is not UTF-8 (found while streaming, past the checked
    head) becomes a :class:`DebiasError` naming its line and byte offset."""
    try:
        yield from fh
    except UnicodeDecodeError as err:
        raise not_utf8(path) from err


def _paragraphs(path: Path, text_format: str) -> Iterator[str]:
    fh = _open_text(path)
    with fh:
        lines: list[str] = []
        size = 0
        if text_format == "auto":
            try:
                text_format = sniff_text_format(fh.read(65536))
            except UnicodeDecodeError as err:
                raise not_utf8(path) from err
            fh.seek(0)
        started = text_format != "gutenberg"
        for line in _lines(path, fh):
            if not started:
                started = line.startswith("*** START OF")
                continue
            if text_format == "gutenberg" and line.startswith("*** END OF"):
                break
            if text_format == "wikitext" and _WIKI_HEADING.match(line):
                line = ""
            if line.strip():
                lines.append(line.strip())
                size += len(lines[-1])
                if size < 100_000:  # bound memory on files without blank lines
                    continue
            if lines:
                yield _finish_paragraph(" ".join(lines), text_format)
                lines, size = [], 0
        if lines:
            yield _finish_paragraph(" ".join(lines), text_format)


def _finish_paragraph(text: str, text_format: str) -> str:
    if text_format == "wikitext":
        return _wikitext_clean(text)
    if text_format == "gutenberg":
        return re.sub(r"(?<!\w)_|_(?!\w)", "", text)
    return text


def _records(path: Path, text_column: str) -> Iterator[str]:
    fh = _open_text(path)
    with fh:
        if path.suffix == ".csv":
            reader = csv.DictReader(_lines(path, fh))
            if text_column not in (reader.fieldnames or []):
                raise DebiasError(
                    f"{path} has no column {text_column!r} (columns: {reader.fieldnames})",
                    "pass --text-column with the right name",
                )
            for row in reader:
                yield row[text_column] or ""
            return
        for lineno, line in enumerate(_lines(path, fh), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                yield str(record[text_column])
            except (json.JSONDecodeError, KeyError, TypeError) as err:
                raise DebiasError(
                    f"{path}:{lineno} is not a JSON object with a {text_column!r} field ({one_line(err)})",
                    "fix the line or pass --text-column",
                ) from err


def _hub_offline() -> bool:
    return any(
        os.environ.get(v, "").upper() in ("1", "ON", "YES", "TRUE") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _hub_texts(dataset_id: str, text_column: str, split: str) -> Iterator[str]:
    if _hub_offline():
        raise DebiasError(
            f"corpus {dataset_id!r} is not a local file and could not be loaded from the Hub "
            "(offline mode: HF_HUB_OFFLINE is set)",
            "pass a local file or folder, or go online",
        )
    try:
        import datasets

        name, config = split_config(dataset_id)
        stream = datasets.load_dataset(name, config or None, split=split, streaming=True)
        for record in stream:
            yield str(record[text_column])
    except DebiasError:
        raise
    except KeyError as err:
        raise DebiasError(
            f"Hub dataset {dataset_id} has no column {text_column!r}", "pass --text-column with the right name"
        ) from err
    except Exception as err:
        raise DebiasError(
            f"corpus {dataset_id!r} is not a local file and could not be loaded from the Hub ({one_line(err, 160)})",
            "check the path, or the dataset id and your connection",
        ) from err


def corpus_files(source: str | Path) -> list[Path]:
    """The files a local source stands for (a file, or the corpus files in a folder, sorted)."""
    path = Path(source)
    kind = _file_kind(path)
    if kind == "folder":
        entries = sorted(p for p in path.iterdir() if p.suffix.lower() in FILE_SUFFIXES)
        special = [(p, k) for p in entries if (k := _file_kind(p, "missing")) not in ("file", "folder", "missing")]
        if special:
            raise _refuse_special(*special[0])
        files = [p for p in entries if p.is_file()]
        if not files:
            raise DebiasError(
                f"corpus folder {path} has no {'/'.join(FILE_SUFFIXES)} files", "add files or pick another"
            )
        return files
    if kind != "file":
        raise _refuse_special(path, kind)
    return [path]


def iter_sentences(
    source: str | Path, *, text_format: str = "auto", text_column: str = "text", split: str = "train"
) -> Iterator[str]:
    """Stream the sentences of a corpus: a local file or folder, or a Hub dataset id."""
    if text_format not in TEXT_FORMATS:
        raise DebiasError(f"unknown text format {text_format!r} (known: {', '.join(TEXT_FORMATS)})", "pick one")
    if not Path(source).exists():
        if isinstance(source, Path) or not is_dataset_source(str(source)):
            raise DebiasError(f"corpus {source} not found", "pass an existing file or folder, or a Hub dataset id")
        texts: Iterable[str] = _hub_texts(str(source), text_column, split)
        for text in texts:
            yield from split_sentences(" ".join(text.split()))
        return
    for path in corpus_files(source):
        if path.suffix.lower() in (".jsonl", ".csv"):
            for text in _records(path, text_column):
                yield from split_sentences(" ".join(text.split()))
        else:
            for paragraph in _paragraphs(path, text_format):
                yield from split_sentences(paragraph)


def corpus_provenance(sources: Sequence[str]) -> list[dict[str, Any]]:
    """Each corpus source by name and content, never by local path: a local file or folder as its name, the names
    of its files, their total size in bytes and a sha256 over names and bytes; a Hub dataset by its id."""
    out: list[dict[str, Any]] = []
    for source in sources:
        if Path(source).exists():
            files = corpus_files(source)
            out.append(
                {
                    "source": Path(source).resolve().name,
                    "files": len(files),
                    "file_names": [f.name for f in files],
                    "bytes": sum(f.stat().st_size for f in files),
                    "sha256": sha256_files(files),
                }
            )
        else:
            out.append({"source": str(source), "hub_dataset": str(source)})
    return out
