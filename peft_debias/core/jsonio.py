"""Strict JSON: the one way the package writes JSON and JSON Lines files.

Every file is valid JSON for a strict parser: NaN and infinities are written as ``null`` (never the ``NaN`` /
``Infinity`` tokens Python would emit), numpy scalars and arrays become plain numbers and lists, paths become
strings. Files are written atomically (:func:`peft_debias.core.atomic.atomic_output`): a reader sees the old file,
or the complete new one.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePath
from typing import Any

from peft_debias.core.atomic import atomic_output


def to_jsonable(value: Any) -> Any:
    """``value`` made strict-JSON ready: mappings (keys as strings), lists and tuples recursed into, numpy scalars
    and arrays as Python numbers and lists, paths as strings, NaN and infinities as None."""
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    if hasattr(value, "dtype") and callable(getattr(value, "tolist", None)):  # numpy scalar or array
        return to_jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def dumps(data: Any, *, indent: int | None = 2, sort_keys: bool = False) -> str:
    """Strict JSON text of ``data`` (see :func:`to_jsonable`); no trailing newline."""
    return json.dumps(to_jsonable(data), indent=indent, sort_keys=sort_keys, allow_nan=False)


def write_json(
    path: str | os.PathLike, data: Any, *, indent: int | None = 2, sort_keys: bool = False, overwrite: bool = True
) -> Path:
    """Write ``data`` as strict JSON plus a newline to ``path``, atomically; an existing file is replaced unless
    ``overwrite`` is false (then it is refused). Returns the path."""
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_text(dumps(data, indent=indent, sort_keys=sort_keys) + "\n", encoding="utf-8")
    return Path(path)


def write_jsonl(path: str | os.PathLike, records: Iterable[Any], *, overwrite: bool = True) -> Path:
    """Write ``records`` as JSON Lines (one strict JSON value per line), atomically. Returns the path."""
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_text("".join(dumps(r, indent=None) + "\n" for r in records), encoding="utf-8")
    return Path(path)
