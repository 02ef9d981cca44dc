"""Where benchmark data comes from: a data folder laid out like the project's ``shared/data``, or the Hub.

Folder layout (the defaults; each benchmark also takes an explicit file)::

    <data>/seat/*.jsonl                            SEAT tests (one JSON object per file)
    <data>/crows_pairs/crows_pairs_anonymized.csv  CrowS-Pairs
    <data>/stereoset/dev.json                      StereoSet, original format (``data.intrasentence``), or
    <data>/stereoset/stereoset_dev_flat.jsonl      the flattened one-line-per-item copy
    <data>/wikitext2/wiki.test.raw                 text for perplexity

Without a folder (no ``data_dir`` and no ``$PEFT_DEBIAS_DATA``) CrowS-Pairs, StereoSet and WikiText-2 are read
from the Hugging Face Hub when it is reachable (:data:`HUB_DATASETS`); SEAT has no Hub copy.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft_debias.core.data_dir import DATA_ENV, resolve_data_dir
from peft_debias.core.errors import DebiasError, one_line
from peft_debias.core.fingerprints import sha256_file

logger = logging.getLogger(__name__)

AXES = ("gender", "race", "religion")
DEFAULT_FILES = {
    "seat": "seat",
    "crows": "crows_pairs/crows_pairs_anonymized.csv",
    "stereoset": ("stereoset/dev.json", "stereoset/test.json", "stereoset/stereoset_dev_flat.jsonl"),
    "perplexity": "wikitext2/wiki.test.raw",
}
# Hub fallbacks: (dataset id, config, split)
HUB_DATASETS = {
    "crows": ("nyu-mll/crows_pairs", None, "test"),
    "stereoset": ("McGill-NLP/stereoset", "intrasentence", "validation"),
    "perplexity": ("Salesforce/wikitext", "wikitext-2-raw-v1", "test"),
}


def parse_names(value: str | Iterable[str] | None) -> list[str] | None:
    """``"a,b"`` or ``["a", "b"]`` -> ``["a", "b"]`` (stripped, order kept, duplicates dropped); None stays None."""
    if value is None:
        return None
    items = value.split(",") if isinstance(value, str) else [str(v) for v in value]
    out: list[str] = []
    for item in (i.strip() for i in items):
        if item and item not in out:
            out.append(item)
    return out


def check_axes(axes: str | Iterable[str] | None) -> list[str]:
    """The requested axes (default: all of :data:`AXES`); an unknown one is an error listing the known ones."""
    names = parse_names(axes)
    if names is None:
        return list(AXES)
    if not names:
        raise DebiasError("no axis given", f"pass one or more of {', '.join(AXES)}")
    for name in names:
        if name not in AXES:
            raise DebiasError(f"unknown axis {name!r} (known: {', '.join(AXES)})", "choose one of the known axes")
    return names


def sha256_of(path: Path) -> str:
    """First 16 hex digits of a file's sha256, recorded with results so a run names its exact data."""
    return sha256_file(path)


@dataclass(frozen=True)
class DataSource:
    """A data folder, or ``None`` for the Hub. Build it with :meth:`resolve`."""

    folder: Path | None

    @classmethod
    def resolve(cls, data_dir: str | os.PathLike | None) -> DataSource:
        """``data_dir`` if given, else ``$PEFT_DEBIAS_DATA``, else the Hub (``folder=None``)."""
        if data_dir or os.environ.get(DATA_ENV):
            return cls(resolve_data_dir(data_dir))
        return cls(None)

    def file(self, benchmark: str, explicit: str | os.PathLike | None = None) -> Path | None:
        """The benchmark's file (or folder for SEAT): ``explicit``, else the default under the folder.

        Returns None when there is no folder and nothing explicit (then the Hub is used). A missing file is an
        error that names exactly what is expected where.
        """
        if explicit is not None:
            path = Path(explicit).expanduser()
            if not path.exists():
                raise DebiasError(f"{benchmark} data {path} not found", "pass an existing file")
            return path
        if self.folder is None:
            return None
        candidates = DEFAULT_FILES[benchmark]
        candidates = (candidates,) if isinstance(candidates, str) else candidates
        for relative in candidates:
            if (self.folder / relative).exists():
                return self.folder / relative
        expected = " or ".join(candidates)
        raise DebiasError(
            f"{benchmark} data is missing: expected {expected} under the data folder {self.folder}",
            f"put the file there, pass its path explicitly, or pass another --data-dir / {DATA_ENV}",
        )


def hub_rows(benchmark: str) -> tuple[list[dict[str, Any]], Any, str]:
    """Rows, features and a description of the benchmark's Hub dataset; a clear error when it cannot be read."""
    import huggingface_hub.constants

    repo, config, split = HUB_DATASETS[benchmark]
    where = f"{repo}{f' ({config})' if config else ''} [{split}]"
    fix = f"pass --data-dir DIR (a folder laid out like shared/data) or set {DATA_ENV}"
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        raise DebiasError(f"no data folder given and the Hub is offline, so {where} cannot be read", fix)
    try:
        import datasets

        ds = datasets.load_dataset(repo, config, split=split)
    except Exception as err:
        raise DebiasError(
            f"no data folder given and reading {where} from the Hub failed: {one_line(err)}", fix
        ) from err
    logger.info("read %d rows of %s from the Hub", len(ds), where)
    return [dict(r) for r in ds], ds.features, where


def label_name(features: Any, column: str, value: Any) -> Any:
    """The string of a ``ClassLabel`` value (Hub datasets store labels as ints); other values unchanged."""
    feature = features.get(column) if hasattr(features, "get") else None
    inner = getattr(feature, "feature", feature)  # a Sequence(ClassLabel) keeps the label in .feature
    if isinstance(value, int) and hasattr(inner, "int2str"):
        return inner.int2str(value)
    return value
