"""Portable records: what an artifact writes must not carry a path of the machine that wrote it.

A published artifact is read on other machines, where the writer's folders do not exist (and may name the user).
Records therefore name a base model by its Hub id, a corpus by its file name and hash, an output folder by its name.
:func:`scrub_local_paths` is the last line of defence: every metadata file peft-debias writes goes through it, so a
local path that slipped into a record is written as its last part (``/home/me/corpus.txt`` -> ``corpus.txt``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")
_PREFIXES = ("/", "~", "./", "../", ".\\", "..\\", "\\\\", "file:")


def is_local_path(text: Any) -> bool:
    """Whether ``text`` is written as a path of this machine: absolute (``/x``, ``C:\\x``), home-relative (``~``),
    explicitly relative (``./x``, ``../x``), a UNC path or a ``file:`` URL. ``org/name`` (a Hub id),
    ``bundled:minilm``, a bare name and a regex such as ``.*\\.bias`` are not."""
    if not isinstance(text, str) or not text or text in ("/", "~"):
        return False
    return text.startswith(_PREFIXES) or bool(_DRIVE.match(text))


def portable_name(text: Any) -> Any:
    """``text`` itself, or, for a local path (:func:`is_local_path`), its last part (``/data/wiki.txt`` ->
    ``wiki.txt``); other values are returned unchanged."""
    if not is_local_path(text):
        return text
    parts = [p for p in re.split(r"[\\/]+", text.removeprefix("file:")) if p not in ("", ".", "..", "~")]
    return parts[-1] if parts else ""


def scrub_local_paths(value: Any) -> Any:
    """A copy of a JSON-like ``value`` (dicts, lists, strings, numbers) with every string that is a local path,
    dict keys included, replaced by its last part (:func:`portable_name`); a key that would then repeat another
    gets a ``" (2)"``, ``" (3)"``... suffix."""
    if isinstance(value, Mapping):
        out: dict[Any, Any] = {}
        for key, item in value.items():
            name, n = portable_name(key), 1
            while name in out:
                n += 1
                name = f"{portable_name(key)} ({n})"
            out[name] = scrub_local_paths(item)
        return out
    if isinstance(value, (list, tuple)):
        return [scrub_local_paths(v) for v in value]
    return portable_name(value)


def portable_adapter_config(config: Mapping[str, Any], base_id: str | None) -> dict[str, Any]:
    """A PEFT ``adapter_config.json`` dict whose base fields name ``base_id`` (a Hub id), or ``None`` when the base
    has no Hub id: ``base_model_name_or_path`` is what ``AutoPeftModel*.from_pretrained`` loads, so it is never a
    local path. ``tokenizer_name_or_path`` (prompt tuning from text) is treated the same way."""
    out = scrub_local_paths(dict(config))
    out["base_model_name_or_path"] = base_id
    if out.get("tokenizer_name_or_path") is not None:
        out["tokenizer_name_or_path"] = base_id
    return out
