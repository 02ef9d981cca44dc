"""An artifact folder as read for publishing: its kind, its metadata, and the files that make it up.

Only the artifact's own files are uploaded: regular files whose names are on the allowlist of its kind
(:data:`ALLOWED`). Everything else in the folder is left out (and listed), and a symbolic link, device, FIFO or
socket anywhere in it is refused, so nothing outside the folder can be uploaded through it.
"""

from __future__ import annotations

import fnmatch
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from peft_debias.core.errors import DebiasError, one_line
from peft_debias.core.model_files import SIDE_FILE_PATTERNS

ADAPTER_KINDS = ("adapter", "negated_adapter")
MODEL_KINDS = ("debiased_model", "merged_model")
KINDS = (*ADAPTER_KINDS, "bias_vector", *MODEL_KINDS)

# files of an earlier artifact that a new one replaces: removed in the same commit when the new folder lacks them
_STALE = (".safetensors", ".safetensors.index.json", ".bin", ".pt", ".pth")
_STALE_NAMES = ("adapter_config.json", "debias_config.json", "bias_vector.json", "config.json", "training_log.jsonl")

_ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "debias_config.json", "training_log.jsonl")
_MODEL_FILES = (
    *SIDE_FILE_PATTERNS, "model.safetensors", "model-*-of-*.safetensors", "model.safetensors.index.json",
    "debias_config.json",
)  # fmt: skip
_VECTOR_FILES = ("bias_vector.json", "vector.safetensors", "vector-*-of-*.safetensors", "vector.safetensors.index.json")
#: What ``publish`` uploads of each kind of artifact: file names (``fnmatch`` patterns) relative to the folder.
ALLOWED: dict[str, tuple[str, ...]] = {
    "adapter": _ADAPTER_FILES,
    "negated_adapter": _ADAPTER_FILES,
    "bias_vector": _VECTOR_FILES,
    "debiased_model": _MODEL_FILES,
    "merged_model": _MODEL_FILES,
}
_SPECIAL = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device", stat.S_IFBLK: "a device"}


@dataclass
class Artifact:
    """An artifact folder as read for publishing."""

    folder: Path
    kind: str
    info: dict[str, Any]  # debias_config.json (bias_vector.json for vectors)
    files: list[str]  # relative paths to upload (README.md excluded: it is rendered)
    left_out: list[str] = field(default_factory=list)  # files in the folder that are not the artifact's own
    identity: dict[str, tuple[int, int]] = field(default_factory=dict, repr=False)  # path -> (device, inode)

    def open(self, name: str) -> BinaryIO:
        """Open one of :attr:`files` for upload, refusing it if it was replaced (by a link or another file)
        since the folder was inspected."""
        path = self.folder / name
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
        try:
            fd = os.open(path, flags)
        except OSError as err:
            raise DebiasError(
                f"{path} cannot be opened for upload ({err.strerror}; is it a symbolic link?)",
                "leave the artifact folder alone while it is published, then run the command again",
            ) from err
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or (info.st_dev, info.st_ino) != self.identity.get(name):
            os.close(fd)
            raise DebiasError(
                f"{path} changed while it was being published",
                "leave the artifact folder alone while it is published, then run the command again",
            )
        return os.fdopen(fd, "rb")


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


def _scan(folder: Path) -> dict[str, tuple[int, int]]:
    """Every regular file under ``folder`` (relative path -> device and inode), links never followed; a symbolic
    link, device, FIFO or socket anywhere in it is refused."""
    found: dict[str, tuple[int, int]] = {}
    for root, dirs, names in os.walk(folder, followlinks=False):
        for name in sorted([*dirs, *names]):
            path = Path(root) / name
            info = path.lstat()
            if stat.S_ISLNK(info.st_mode):
                raise DebiasError(
                    f"{path} is a symbolic link (to {os.readlink(path)}); publish uploads only the artifact's own "
                    "regular files",
                    "replace the link by the file itself, or remove it from the folder",
                )
            what = _SPECIAL.get(stat.S_IFMT(info.st_mode))
            if what is not None:
                raise DebiasError(f"{path} is {what}, not a regular file", "remove it from the artifact folder")
            if stat.S_ISREG(info.st_mode):
                found[path.relative_to(folder).as_posix()] = (info.st_dev, info.st_ino)
    return found


def _own_files(kind: str, found: dict[str, tuple[int, int]], extra: tuple[str, ...] = ()) -> tuple[list, list]:
    """(files of the artifact, files left out) for an artifact of ``kind``; README.md is rendered, never uploaded."""
    patterns = (*ALLOWED[kind], *extra)
    own, left_out = [], []
    for name in sorted(found):
        if name == "README.md":
            continue
        (own if any(fnmatch.fnmatchcase(name, p) for p in patterns) else left_out).append(name)
    return own, left_out


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
    found = _scan(folder)
    if "bias_vector.json" in found:
        info = _read_json(folder / "bias_vector.json")
        needed = [str(name) for name in info.get("files") or ["vector.safetensors"]]
        files, left_out = _own_files("bias_vector", found, tuple(n for n in needed if n.endswith(".safetensors")))
        _require(folder, files, needed, "bias vector")
        return Artifact(folder, "bias_vector", info, files, left_out, found)
    if "debias_config.json" not in found:
        raise DebiasError(
            f"{folder} has no debias_config.json (nor bias_vector.json)",
            "publish a folder written by peft-debias train, vector or merge",
        )
    info = _read_json(folder / "debias_config.json")
    kind = info.get("artifact") or ("adapter" if "adapter_config.json" in found else "unknown")
    if kind in ("biased_model", "biased_adapter"):
        raise DebiasError(
            f"{folder} is a deliberately biased {kind.split('_')[1]}, made only to compute a bias vector",
            "publish the bias vector or the debiased model instead",
        )
    if kind not in KINDS:
        raise DebiasError(f"{folder} holds an artifact of unknown kind {kind!r}", f"publish one of {', '.join(KINDS)}")
    files, left_out = _own_files(kind, found)
    if kind in ADAPTER_KINDS:
        _require(folder, files, ["adapter_config.json", "adapter_model.safetensors"], "adapter")
        if kind == "adapter" and ("axis" not in info or "base_model" not in info):
            raise DebiasError(f"{folder / 'debias_config.json'} lacks 'axis' or 'base_model'", "restore or retrain")
    else:
        _require(folder, files, ["config.json"], "model folder")
        _model_weights(folder, files)
    return Artifact(folder, kind, info, files, left_out, found)


def is_stale(path: str) -> bool:
    """Whether a file in the repo belongs to an artifact (weights, shards, configs) rather than to the user."""
    return path.endswith(_STALE) or path.rsplit("/", 1)[-1] in _STALE_NAMES
