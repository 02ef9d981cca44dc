"""CDA datasets: corpus sentences -> counterfactual records (original + swapped) with stats, as a Dataset."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from peft_debias.cda.axes import get_axis
from peft_debias.cda.corpora import iter_sentences
from peft_debias.cda.swapping import CDA_MODES, counterfactuals
from peft_debias.core.atomic import scratch_folder
from peft_debias.core.bounds import check_minimums
from peft_debias.core.errors import DebiasError, one_line

logger = logging.getLogger(__name__)
CDA_SCRATCH_PREFIX = "peft-debias-cda-"


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
    seed: int = field(default=0, metadata={"help": "seed for keep_ratio sampling and the shuffle", "min": 0})
    shuffle: bool = field(default=True, metadata={"help": "shuffle the records with the seed"})
    text_format: str = field(default="auto", metadata={"help": "auto | plain | gutenberg | wikitext"})
    text_column: str = field(default="text", metadata={"help": "text field of JSONL/CSV/Hub records"})

    def validate(self) -> None:
        from peft_debias.cda.names import with_names

        check_minimums(self)
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
    training text per row. The Arrow files go to ``cache_dir`` (default: a temporary folder
    ``$TMPDIR/peft-debias-cda-<host>-<pid>-*``, removed at exit or on error; one left by a killed run is removed by
    the next run, see :func:`peft_debias.core.atomic.scratch_folder`).
    """
    config = config or CDAConfig()
    for key, value in overrides.items():
        setattr(config, key, value)
    config.validate()
    sources = [sources] if isinstance(sources, (str, Path)) else list(sources)
    scratch = cache_dir is None
    if cache_dir is None:
        cache_dir = scratch_folder(CDA_SCRATCH_PREFIX)
    try:
        return _build(sources, config, cache_dir, progress)
    except BaseException:
        if scratch:  # nothing uses the half-built table: remove it now rather than at exit
            shutil.rmtree(cache_dir, ignore_errors=True)
        raise


def _build(sources: list[str | Path], config: CDAConfig, cache_dir: str | Path, progress: bool):
    import datasets

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
