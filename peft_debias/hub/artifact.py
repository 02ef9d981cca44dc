"""An artifact folder as read for publishing: its kind, its metadata, and the files that make it up."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft_debias.core.errors import DebiasError, one_line

ADAPTER_KINDS = ("adapter", "negated_adapter")
MODEL_KINDS = ("debiased_model", "merged_model")
KINDS = (*ADAPTER_KINDS, "bias_vector", *MODEL_KINDS)

# files of an earlier artifact that a new one replaces: removed in the same commit when the new folder lacks them
_STALE = (".safetensors", ".safetensors.index.json", ".bin", ".pt", ".pth")
_STALE_NAMES = ("adapter_config.json", "debias_config.json", "bias_vector.json", "config.json", "training_log.jsonl")


@dataclass
class Artifact:
    """An artifact folder as read for publishing."""

    folder: Path
    kind: str
    info: dict[str, Any]  # debias_config.json (bias_vector.json for vectors)
    files: list[str]  # relative paths to upload (README.md excluded: it is rendered)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DebiasError(
            f"{path} is not valid JSON ({one_line(err, 120)})", "restore the file or re-create it"
        ) from err
    if not isinstance(data, dict):
        raise DebiasError(f"{path} is not a JSON object", "restore the file or re-create it")
    return data


def _local_files(folder: Path) -> list[str]:
    """Files to upload: every regular file, hidden files and folders left out, README.md rendered instead."""
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts) or not path.is_file():
            continue
        if rel.as_posix() != "README.md":
            out.append(rel.as_posix())
    return out


def _require(folder: Path, files: list[str], needed: list[str], what: str) -> None:
    missing = [name for name in needed if name not in files]
    if missing:
        raise DebiasError(
            f"{folder} is an incomplete {what}: {', '.join(missing)} missing", "re-create it with peft-debias"
        )


def _model_weights(folder: Path, files: list[str]) -> None:
    index = "model.safetensors.index.json"
    if index in files:
        shards = sorted(set(_read_json(folder / index).get("weight_map", {}).values()))
        _require(folder, files, shards, "model folder (shards of its index)")
        names = shards
    elif "model.safetensors" in files:
        names = ["model.safetensors"]
    else:
        raise DebiasError(f"{folder} holds no model.safetensors", "publish a complete model folder (safetensors)")
    from safetensors import safe_open

    for name in names:
        try:
            with safe_open(str(folder / name), framework="pt") as fh:
                fh.keys()
        except Exception as err:
            raise DebiasError(f"{folder / name} is unreadable ({one_line(err, 120)})", "re-create the model") from err


def inspect_artifact(folder: str | os.PathLike) -> Artifact:
    """Read an artifact folder: which kind it is, its metadata, and that the files its kind needs are there."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DebiasError(f"{folder} is not a folder", "pass the folder written by peft-debias train, vector or merge")
    files = _local_files(folder)
    if "bias_vector.json" in files:
        info = _read_json(folder / "bias_vector.json")
        _require(folder, files, list(info.get("files") or ["vector.safetensors"]), "bias vector")
        return Artifact(folder, "bias_vector", info, files)
    if "debias_config.json" not in files:
        raise DebiasError(
            f"{folder} has no debias_config.json (nor bias_vector.json)",
            "publish a folder written by peft-debias train, vector or merge",
        )
    info = _read_json(folder / "debias_config.json")
    kind = info.get("artifact") or ("adapter" if "adapter_config.json" in files else "unknown")
    if kind in ("biased_model", "biased_adapter"):
        raise DebiasError(
            f"{folder} is a deliberately biased {kind.split('_')[1]}, made only to compute a bias vector",
            "publish the bias vector or the debiased model instead",
        )
    if kind not in KINDS:
        raise DebiasError(f"{folder} holds an artifact of unknown kind {kind!r}", f"publish one of {', '.join(KINDS)}")
    if kind in ADAPTER_KINDS:
        _require(folder, files, ["adapter_config.json", "adapter_model.safetensors"], "adapter")
        if kind == "adapter" and ("axis" not in info or "base_model" not in info):
            raise DebiasError(f"{folder / 'debias_config.json'} lacks 'axis' or 'base_model'", "restore or retrain")
    else:
        _require(folder, files, ["config.json"], "model folder")
        _model_weights(folder, files)
    return Artifact(folder, kind, info, files)


def is_stale(path: str) -> bool:
    """Whether a file in the repo belongs to an artifact (weights, shards, configs) rather than to the user."""
    return path.endswith(_STALE) or path.rsplit("/", 1)[-1] in _STALE_NAMES
