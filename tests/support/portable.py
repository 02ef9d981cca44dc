"""A checker for machine-local paths in the files of an artifact folder (or any file we write).

Every file is scanned as text (UTF-8, undecodable bytes dropped) for the places of this machine: the test's own
temporary folder, ``$HOME``, ``site-packages``, the Hugging Face cache and the system temp folder. A safetensors file
is scanned by its JSON header only (metadata and tensor names; the tensor bytes are random). A JSON or JSON Lines
file is also parsed and every string value that is an absolute path (``/x``, ``~/x``, ``C:\\x``) is a leak, whatever
folder it names. The check is independent of the package's own path rule on purpose.
"""

from __future__ import annotations

import json
import os
import re
import struct
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

_ABSOLUTE = re.compile(r"^(?:/[^/\s]|~/|~$|[A-Za-z]:[\\/]|\\\\|file:)")
# Files whose JSON values are token strings, not records (a BPE merge such as "/ /" starts with a slash).
_TOKEN_FILES = {"tokenizer.json", "vocab.json", "merges.txt", "vocab.txt", "special_tokens_map.json"}


def _needles(extra: Iterable[str | os.PathLike]) -> list[str]:
    from huggingface_hub import constants

    places = [*extra, Path.home(), "site-packages", constants.HF_HUB_CACHE, tempfile.gettempdir()]
    out: set[str] = set()
    for place in places:
        text = str(place)
        if not text or text in ("/", "."):
            continue
        out.add(text)
        if os.path.isabs(text):
            out.add(str(Path(text).resolve()))
    return sorted(out, key=len, reverse=True)


def _safetensors_header(path: Path) -> str:
    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        return fh.read(size).decode("utf-8", errors="ignore")


def _strings(value: Any, where: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _strings(item, f"{where}[{i}]")
    elif isinstance(value, str):
        yield where or ".", value


def _json_values(path: Path, text: str) -> list[Any]:
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if path.suffix == ".json":
        return [json.loads(text)]
    return []


def local_path_leaks(folder: str | os.PathLike, extra: Iterable[str | os.PathLike] = ()) -> list[str]:
    """Every machine-local path found in the files under ``folder`` (or the file ``folder``), as
    ``"<file>: <what>"``; ``extra`` adds places to look for (the test's ``tmp_path``)."""
    root = Path(folder)
    files = [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file())
    needles = _needles(extra)
    leaks: list[str] = []
    for path in files:
        name = path.name if root.is_file() else path.relative_to(root).as_posix()
        if path.suffix == ".safetensors":
            text = _safetensors_header(path)
        else:
            text = path.read_bytes().decode("utf-8", errors="ignore")
        leaks += [f"{name}: contains {needle!r}" for needle in needles if needle in text]
        if path.name in _TOKEN_FILES:
            continue
        for value in _json_values(path, text):
            leaks += [f"{name}: {where} = {s!r}" for where, s in _strings(value) if _ABSOLUTE.match(s)]
    return leaks


def assert_portable(folder: str | os.PathLike, extra: Iterable[str | os.PathLike] = ()) -> None:
    """Fail with the list of leaks when any file under ``folder`` carries a machine-local path."""
    leaks = local_path_leaks(folder, extra)
    assert not leaks, "machine-local paths written:\n" + "\n".join(leaks[:40])
