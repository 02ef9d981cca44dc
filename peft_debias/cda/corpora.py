"""Corpora for CDA: local text/JSONL/CSV files, folders of them, or Hub datasets -> sentences -> a CDA dataset.

Everything streams: files are read line by line, sentences flow through a generator into an on-disk Arrow
table (``datasets.Dataset.from_generator``), so memory does not grow with corpus size.

Text files are split into paragraphs (blank-line separated) and then sentences. Two formats are detected
from the first 64 KiB (or chosen with ``text_format``): ``gutenberg`` (Project Gutenberg header/footer
stripped, ``_italics_`` underscores removed) and ``wikitext`` (WikiText's `` @-@ `` style tokenisation undone,
`` = Heading = `` lines dropped, sentences with ``<unk>`` dropped because the model never sees that token).
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from peft_debias.cda.axes import get_axis
from peft_debias.cda.swapping import CDA_MODES, counterfactuals
from peft_debias.core.errors import DebiasError, one_line

logger = logging.getLogger(__name__)

TEXT_SUFFIXES = (".txt", ".raw", ".tokens")
FILE_SUFFIXES = (*TEXT_SUFFIXES, ".jsonl", ".csv")
TEXT_FORMATS = ("auto", "plain", "gutenberg", "wikitext")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?(:[\w.-]+)?$")  # id[:config]
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


def _open_text(path: Path):
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
            raise DebiasError(
                f"corpus file {path} is not UTF-8 text (byte {err.start})", "convert it to UTF-8 (e.g. iconv -t utf-8)"
            ) from err
    return path.open(encoding="utf-8-sig", errors="strict")


def _paragraphs(path: Path, text_format: str) -> Iterator[str]:
    fh = _open_text(path)
    with fh:
        lines: list[str] = []
        size = 0
        try:
            if text_format == "auto":
                text_format = sniff_text_format(fh.read(65536))
                fh.seek(0)
            started = text_format != "gutenberg"
            for line in fh:
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
        except UnicodeDecodeError as err:
            raise DebiasError(f"corpus file {path} is not UTF-8 text", "convert it to UTF-8") from err
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
            reader = csv.DictReader(fh)
            if text_column not in (reader.fieldnames or []):
                raise DebiasError(
                    f"{path} has no column {text_column!r} (columns: {reader.fieldnames})",
                    "pass --text-column with the right name",
                )
            for row in reader:
                yield row[text_column] or ""
            return
        for lineno, line in enumerate(fh, 1):
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

        name, _, config = dataset_id.partition(":")
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
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in FILE_SUFFIXES)
        if not files:
            raise DebiasError(
                f"corpus folder {path} has no {'/'.join(FILE_SUFFIXES)} files", "add files or pick another"
            )
        return files
    return [path]


def iter_sentences(
    source: str | Path, *, text_format: str = "auto", text_column: str = "text", split: str = "train"
) -> Iterator[str]:
    """Stream the sentences of a corpus: a local file or folder, or a Hub dataset id."""
    if text_format not in TEXT_FORMATS:
        raise DebiasError(f"unknown text format {text_format!r} (known: {', '.join(TEXT_FORMATS)})", "pick one")
    if not Path(source).exists():
        if isinstance(source, Path) or not _HUB_ID.match(str(source)):
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


@dataclass
class CDAConfig:
    """How a corpus becomes CDA training data."""

    axis: str = field(default="gender", metadata={"help": "bias axis name or axis file"})
    mode: str = field(default="all", metadata={"help": "'all': one counterfactual per alternative class; 'one'"})
    keep_ratio: float = field(default=0.0, metadata={"help": "fraction of sentences without axis terms to keep"})
    names: int = field(default=0, metadata={"help": "first-name pairs added to a gender axis (names.with_names)"})
    min_words: int = field(default=4, metadata={"help": "drop shorter sentences"})
    max_words: int = field(default=128, metadata={"help": "drop longer sentences"})
    max_sentences: int | None = field(default=None, metadata={"help": "stop after this many axis sentences"})
    seed: int = field(default=0, metadata={"help": "seed for keep_ratio sampling and the shuffle"})
    shuffle: bool = field(default=True, metadata={"help": "shuffle the records with the seed"})
    text_format: str = field(default="auto", metadata={"help": "auto | plain | gutenberg | wikitext"})
    text_column: str = field(default="text", metadata={"help": "text field of JSONL/CSV/Hub records"})

    def validate(self) -> None:
        from peft_debias.cda.names import with_names

        with_names(get_axis(self.axis), self.names)
        if self.mode not in CDA_MODES:
            raise DebiasError(f"unknown CDA mode {self.mode!r} (known: {', '.join(CDA_MODES)})", "pick a known mode")
        if not 0.0 <= self.keep_ratio <= 1.0:
            raise DebiasError(f"keep ratio {self.keep_ratio} is outside [0, 1]", "pass a fraction such as 0.1")
        if self.min_words < 1 or self.max_words < self.min_words:
            raise DebiasError(f"word limits {self.min_words}..{self.max_words} are empty", "use 1 <= min <= max")
        if self.max_sentences is not None and self.max_sentences < 1:
            raise DebiasError(f"max sentences {self.max_sentences} is not positive", "pass a positive number")


@dataclass
class CDAStats:
    """What a CDA run read and produced."""

    sentences_in: int = 0
    sentences_kept: int = 0
    others_kept: int = 0
    pairs_produced: int = 0
    dropped: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _keep_other(seed: int, index: int, ratio: float) -> bool:
    if ratio <= 0.0:
        return False
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < ratio


def iter_cda_records(sources: Sequence[str | Path], config: CDAConfig, stats: CDAStats) -> Iterator[dict[str, Any]]:
    """Yield ``{"id", "text", "counterfactuals"}`` records in corpus order, updating ``stats`` as it goes."""
    from peft_debias.cda.names import with_names

    config.validate()
    axis = with_names(get_axis(config.axis), config.names)
    start, next_id = time.perf_counter(), 0
    for source in sources:
        for sentence in iter_sentences(source, text_format=config.text_format, text_column=config.text_column):
            stats.sentences_in += 1
            n_words = len(sentence.split())
            if "<unk>" in sentence or not config.min_words <= n_words <= config.max_words:
                stats.dropped += 1
                continue
            cfs = counterfactuals(sentence, axis, config.mode)
            if cfs:
                stats.sentences_kept += 1
                stats.pairs_produced += len(cfs)
            elif _keep_other(config.seed, stats.sentences_in, config.keep_ratio):
                stats.others_kept += 1
            else:
                continue
            yield {"id": next_id, "text": sentence, "counterfactuals": cfs}
            next_id += 1
            stats.seconds = time.perf_counter() - start
            if config.max_sentences is not None and stats.sentences_kept >= config.max_sentences:
                return
    stats.seconds = time.perf_counter() - start


def _check_result(sources: Sequence[str | Path], config: CDAConfig, stats: CDAStats) -> None:
    names = ", ".join(map(str, sources))
    if stats.sentences_in == 0:
        raise DebiasError(f"corpus {names} is empty (no sentences)", "pass a corpus with text in it")
    if stats.sentences_kept == 0:
        raise DebiasError(
            f"corpus {names} has no sentence mentioning axis {config.axis!r} ({stats.sentences_in} sentences read)",
            "use a corpus with such sentences, or another axis",
        )


@contextlib.contextmanager
def quiet_datasets() -> Iterator[None]:
    """Silence the ``datasets`` library's own progress bars for a block (we show our own)."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def build_cda_dataset(
    sources: str | Path | Sequence[str | Path],
    config: CDAConfig | None = None,
    cache_dir: str | Path | None = None,
    progress: bool = False,
    **overrides: Any,
):
    """Build the CDA dataset of ``sources``: returns ``(datasets.Dataset, CDAStats)``.

    Columns: ``id`` (position in the corpus), ``text`` (the original sentence), ``counterfactuals`` (its
    counterfactual versions; empty for sentences kept by ``keep_ratio``). Use :func:`flatten_for_lm` to get one
    training text per row. The Arrow files go to ``cache_dir`` (default: a temporary folder removed at exit).
    """
    import datasets

    config = config or CDAConfig()
    for key, value in overrides.items():
        setattr(config, key, value)
    config.validate()
    sources = [sources] if isinstance(sources, (str, Path)) else list(sources)
    if cache_dir is None:
        cache_dir = tempfile.mkdtemp(prefix="peft-debias-cda-")
        atexit.register(shutil.rmtree, cache_dir, True)
    stats = CDAStats()

    def generate():
        bar = tqdm(desc=f"cda {config.axis}", unit=" sent", disable=None if progress else True)
        with bar:
            for record in iter_cda_records(sources, config, stats):
                bar.update(1)
                bar.set_postfix(read=stats.sentences_in, refresh=False)
                yield record

    features = datasets.Features(
        {
            "id": datasets.Value("int64"),
            "text": datasets.Value("string"),
            "counterfactuals": datasets.Sequence(datasets.Value("string")),
        }
    )
    with quiet_datasets():
        try:
            ds = datasets.Dataset.from_generator(generate, features=features, cache_dir=str(cache_dir))
        except datasets.exceptions.DatasetGenerationError as err:
            cause: BaseException | None = err
            os_error: OSError | None = None
            while cause is not None and not isinstance(cause, DebiasError):
                os_error = os_error or (cause if isinstance(cause, OSError) else None)
                cause = cause.__cause__ or cause.__context__
            if cause is not None:
                raise cause from None
            if os_error is not None:  # e.g. the disk of the cache folder is full
                raise DebiasError(
                    f"writing the CDA table under {cache_dir} failed ({os_error.strerror or one_line(os_error)})",
                    "free disk space there or point TMPDIR at a folder with room",
                ) from err
            raise
        except ValueError:  # datasets refuses an empty table: say why it is empty
            _check_result(sources, config, stats)
            raise
        _check_result(sources, config, stats)
        if config.shuffle:
            ds = ds.shuffle(seed=config.seed).flatten_indices()
    return ds, stats


def flatten_for_lm(ds) -> Any:
    """One row per training text: each original sentence followed by its counterfactuals (column ``text``)."""

    def expand(batch: dict[str, list]) -> dict[str, list[str]]:
        pairs = zip(batch["text"], batch["counterfactuals"], strict=True)
        return {"text": [t for text, cfs in pairs for t in (text, *cfs)]}

    return ds.map(
        expand,
        batched=True,
        remove_columns=ds.column_names,
    )
