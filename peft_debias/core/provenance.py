"""Provenance of artifacts: the ``debias_config.json`` sidecar, library versions, fingerprints, timestamps.

A trained folder holds plain PEFT files (``adapter_config.json``, ``adapter_model.safetensors``) that
``PeftModel.from_pretrained`` loads unchanged, plus ``debias_config.json`` (our metadata; extra keys in
``adapter_config.json`` would only cause a misleading peft warning), ``training_log.jsonl`` and ``README.md``.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from peft_debias.core.errors import DebiasError, one_line
from peft_debias.core.jsonio import write_json
from peft_debias.core.portable import scrub_local_paths
from peft_debias.core.version import __version__

DEBIAS_CONFIG = "debias_config.json"
FORMAT_VERSION = 1
# The libraries whose versions shape an artifact (recorded in its sidecar).
VERSIONED = ("torch", "transformers", "peft", "accelerate", "numpy", "safetensors", "huggingface_hub")
PAPERS = {
    "peftdebias": "https://arxiv.org/abs/2312.00434",
    "bias_vector": "https://arxiv.org/abs/2412.11679",
}


def versions(packages: Sequence[str] = VERSIONED) -> dict[str, str]:
    """Versions of peft_debias, Python and the installed ``packages`` (default :data:`VERSIONED`), read from
    package metadata: nothing is imported, so recording them is cheap (``torch`` gives e.g. ``2.13.0+cpu``,
    the same string as ``torch.__version__``). A package that is not installed is left out."""
    out = {"peft_debias": __version__, "python": platform.python_version()}
    for package in packages:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[package] = metadata.version(package)
    return out


def sidecar(artifact: str, fields: Mapping[str, Any] | None = None, /, **more: Any) -> dict[str, Any]:
    """The metadata dict of an artifact (its ``debias_config.json``): ``format_version`` and ``artifact`` first,
    then ``fields`` and ``more`` in their order, then ``versions`` (:func:`versions`) and ``created``
    (:func:`timestamp`). Keys that are not Python names (``lambda``) go in ``fields``. Local paths in the values
    are written as their last part (:func:`~peft_debias.core.portable.scrub_local_paths`)."""
    return scrub_local_paths(
        {
            "format_version": FORMAT_VERSION,
            "artifact": artifact,
            **(fields or {}),
            **more,
            "versions": versions(),
            "created": timestamp(),
        }
    )


def write_sidecar(folder: str | os.PathLike, data: Mapping[str, Any], name: str = DEBIAS_CONFIG) -> Path:
    """Write an artifact's metadata (``debias_config.json`` unless ``name`` says otherwise) into ``folder`` as
    strict JSON, atomically, with no local path in it (:func:`~peft_debias.core.portable.scrub_local_paths`);
    returns the file's path."""
    return write_json(Path(folder) / name, scrub_local_paths(data))


def read_debias_config(folder: str | Path) -> dict[str, Any]:
    """Read an artifact's ``debias_config.json`` with clear errors."""
    path = Path(folder) / DEBIAS_CONFIG
    if not path.is_file():
        raise DebiasError(f"{path} is missing", "pass a folder written by peft-debias (train, vector or merge)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DebiasError(f"{path} is not valid JSON ({one_line(err)})", "restore the file or retrain") from err
    if not isinstance(data, dict) or "axis" not in data:
        raise DebiasError(f"{path} lacks the 'axis' field", "restore the file or retrain")
    return data


def timestamp() -> str:
    """The current UTC time to the second, e.g. ``2025-01-31T09:05:00Z`` (the ``created`` field of artifacts)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def protocol_name(results: Mapping[str, Any]) -> str:
    """The scoring protocol of a results dict (:mod:`peft_debias.eval.protocols`); files written before protocols
    existed used the default one."""
    record = results.get("protocol")
    return str(record.get("name", "default")) if isinstance(record, Mapping) else str(record or "default")


def placement_text(record: dict[str, Any] | None) -> str:
    """A placement record (:meth:`peft_debias.models.placement.Resolved.record`) in words: ``cpu, float32`` or
    ``device map auto (cpu 15, disk 19), bfloat16``."""
    if not record:
        return "placement not recorded"
    if record.get("device_map"):
        spread = ", ".join(f"{k} {v}" for k, v in record.get("map", {}).items())
        return f"device map {record['device_map']}{f' ({spread})' if spread else ''}, {record.get('dtype')}"
    return f"{record.get('device')}, {record.get('dtype')}"
