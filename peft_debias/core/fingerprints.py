"""Fingerprints: short sha256 digests that identify files, tensors and weights in artifacts and results.

Every fingerprint recorded by peft-debias is computed here, so that the same bytes always give the same value
(artifacts record them and later checks compare them). A fingerprint is the first ``length`` hex digits (16 unless
told) of a sha256. ``torch`` is imported only by the tensor helpers, when called.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

SHORT = 16  # hex digits kept of a sha256
_CHUNK = 1 << 20  # files are read a MiB at a time


def sha256_text(text: str, length: int = SHORT) -> str:
    """The first ``length`` hex digits of the sha256 of ``text`` (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:length]


def _update_with_file(digest: Any, path: str | os.PathLike) -> None:
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(chunk)


def sha256_file(path: str | os.PathLike, length: int = SHORT) -> str:
    """The first ``length`` hex digits of the sha256 of a file's bytes (streamed: memory stays flat)."""
    digest = hashlib.sha256()
    _update_with_file(digest, path)
    return digest.hexdigest()[:length]


def sha256_files(paths: Sequence[Any], length: int = SHORT) -> str:
    """A sha256 over the names (not the folders) and bytes of files, in the given order (streamed)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(os.path.basename(path).encode())
        _update_with_file(digest, path)
    return digest.hexdigest()[:length]


def file_ends_fingerprint(path: str | os.PathLike, span: int = _CHUNK, length: int = 12) -> str:
    """A cheap id of a large file: the sha256 of its size (as decimal text), its first and its last ``span``
    bytes (the two may overlap in a small file)."""
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        digest.update(fh.read(span))
        fh.seek(max(size - span, 0))
        digest.update(fh.read(span))
    return digest.hexdigest()[:length]


def tensor_bytes(tensor: Any) -> Any:
    """The raw bytes of a tensor (on the CPU, row-major) as a numpy ``uint8`` array, for a digest's ``update``."""
    import torch

    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def tensors_fingerprint(named: Iterable[tuple[str, Any]], length: int = SHORT) -> str:
    """A sha256 over tensors sorted by name: for each ``name|dtype|shape|`` then its raw bytes.

    The dtype is part of the hash: the same values in float32 and bfloat16 differ.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(named, key=lambda item: item[0]):
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor_bytes(tensor))
    return digest.hexdigest()[:length]


def digests_fingerprint(entries: Mapping[str, tuple[str, Sequence[int], str]], length: int = SHORT) -> str:
    """A sha256 over per-tensor digests, for tensors hashed piecewise (streamed from files): ``entries`` maps a
    name to ``(dtype, shape, hex digest of its bytes)``; one line ``name|dtype|[shape]|digest`` per name, sorted."""
    total = hashlib.sha256()
    for name in sorted(entries):
        dtype, shape, hexdigest = entries[name]
        total.update(f"{name}|{dtype}|{list(shape)}|{hexdigest}\n".encode())
    return total.hexdigest()[:length]


def float_params_digest(named: Iterable[tuple[str, Any]], length: int = SHORT) -> str:
    """A sha256 over parameters sorted by name: for each its name, then its values as float32 bytes (dtype and
    shape left out: for comparing the same model's trained parameters across processes)."""
    digest = hashlib.sha256()
    for name, param in sorted(named, key=lambda item: item[0]):
        digest.update(name.encode())
        digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:length]
