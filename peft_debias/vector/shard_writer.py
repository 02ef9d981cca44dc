"""Write safetensors shards a block of rows at a time: :class:`ShardWriter` (and :func:`parse_size` for its sizes).

The writer plans every shard's header from the tensors' dtypes and shapes before any data exists, then appends
bytes as they are computed, so a merge never holds a whole tensor. The format is described in
:mod:`peft_debias.vector.stream`, which reads it back.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from peft_debias.core.errors import DebiasError
from peft_debias.core.jsonio import write_json
from peft_debias.vector.stream import TensorInfo


def _write(fh: BinaryIO, data: memoryview | bytes) -> None:
    """All writes of the shard writer go through here (tests simulate a full disk by replacing it)."""
    fh.write(data)


@dataclass
class _Shard:
    path: Path
    names: list[str]
    header: bytes


class ShardWriter:
    """Write tensors into safetensors shards whose headers are planned up front, appending data as it comes.

    ``plan`` lists (name, dtype name, shape) in write order; :meth:`append` must then receive each tensor's bytes in
    that order (in as many row blocks as the caller likes). A shard closes when it has reached ``shard_bytes``; a
    single shard is named ``<prefix>.safetensors``, several ``<prefix>-00001-of-0000N.safetensors`` plus an index.

    Use it as a context manager: a failure closes the open shard before the caller removes the folder. (A writer
    thread overlapping compute and writes was tried: no measurable gain here, where writes are throttled by the
    kernel, and a less predictable peak RSS from allocator fragmentation, so writes stay on the caller's thread.)
    """

    def __init__(
        self,
        folder: Path,
        plan: Sequence[tuple[str, str, tuple[int, ...]]],
        *,
        prefix: str = "model",
        shard_bytes: int = 2 << 30,
        metadata: dict[str, str] | None = None,
    ) -> None:
        if shard_bytes < 1:
            raise DebiasError(f"shard size {shard_bytes} is not positive", "pass e.g. --shard-size 2GB")
        self.folder, self.prefix = folder, prefix
        self.infos = {name: TensorInfo(name, dtype, tuple(shape)) for name, dtype, shape in plan}
        groups: list[list[str]] = [[]]
        size = 0
        for name in self.infos:
            nbytes = self.infos[name].nbytes
            if groups[-1] and size + nbytes > shard_bytes:
                groups.append([])
                size = 0
            groups[-1].append(name)
            size += nbytes
        n = len(groups)
        meta = {"format": "pt", **(metadata or {})}
        self.shards = []
        for i, names in enumerate(groups):
            file = f"{prefix}.safetensors" if n == 1 else f"{prefix}-{i + 1:05d}-of-{n:05d}.safetensors"
            self.shards.append(_Shard(folder / file, names, self._header(names, meta)))
        self.total_size = sum(info.nbytes for info in self.infos.values())
        self._order = [name for shard in self.shards for name in shard.names]
        self._shard_of = {name: i for i, shard in enumerate(self.shards) for name in shard.names}
        self._pos = 0  # index in _order of the tensor being written
        self._written = 0  # bytes of that tensor written so far
        self._shard = -1
        self._fh: BinaryIO | None = None

    def _header(self, names: list[str], meta: dict[str, str]) -> bytes:
        entries: dict[str, Any] = {"__metadata__": meta}
        offset = 0
        for name in names:
            info = self.infos[name]
            entries[name] = {
                "dtype": info.dtype,
                "shape": list(info.shape),
                "data_offsets": [offset, offset + info.nbytes],
            }
            offset += info.nbytes
        raw = json.dumps(entries, separators=(",", ":")).encode()
        raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned
        return struct.pack("<Q", len(raw)) + raw

    def _open(self, shard: int) -> None:
        if self._fh is not None:
            self._fh.close()
        self._fh = open(self.shards[shard].path, "wb")  # noqa: SIM115
        _write(self._fh, self.shards[shard].header)

    def append(self, name: str, block: torch.Tensor) -> None:
        """Append a row block of tensor ``name`` (already in its planned dtype)."""
        if self._pos >= len(self._order) or self._order[self._pos] != name:
            expected = self._order[self._pos] if self._pos < len(self._order) else "nothing"
            raise RuntimeError(f"shard writer got {name}, expected {expected}")
        info = self.infos[name]
        if block.dtype != info.torch_dtype:
            raise RuntimeError(f"{name}: got {block.dtype}, planned {info.torch_dtype}")
        if self._written == 0 and self._shard_of[name] != self._shard:
            self._shard = self._shard_of[name]
            self._open(self._shard)
        data = memoryview(block.contiguous().reshape(-1).view(torch.uint8).numpy())
        self._written += len(data)
        if self._written > info.nbytes:
            raise RuntimeError(f"{name}: got {self._written} bytes, planned {info.nbytes}")
        assert self._fh is not None
        _write(self._fh, data)
        if self._written == info.nbytes:
            self._pos, self._written = self._pos + 1, 0

    def close(self) -> list[Path]:
        """Finish: check that everything planned was written, write the index of a sharded output."""
        if self._pos != len(self._order):
            raise RuntimeError(f"shard writer closed before {self._order[self._pos]}")
        if not self._order:  # nothing planned: still write one valid (empty) file
            self._open(0)
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if len(self.shards) > 1:
            index = {
                "metadata": {"total_size": self.total_size},
                "weight_map": {name: shard.path.name for shard in self.shards for name in shard.names},
            }
            write_json(self.folder / f"{self.prefix}.safetensors.index.json", index)
        return [shard.path for shard in self.shards]

    def abort(self) -> None:
        """Close the open file without checks (after a failure)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        if exc_type is not None:
            self.abort()


def parse_size(text: str | int) -> int:
    """``"2GB"``, ``"500MB"``, ``"64KiB"`` or a number of bytes -> bytes."""
    if isinstance(text, int):
        return text
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 1 << 10, "MIB": 1 << 20, "GIB": 1 << 30}
    value = text.strip().upper().replace(" ", "")
    number = value.rstrip("KMGIB")
    unit = value[len(number) :]
    try:
        size = int(float(number) * units[unit])
    except (KeyError, ValueError):
        raise DebiasError(f"cannot read size {text!r}", "write e.g. 2GB, 500MB or 1GiB") from None
    if size < 1:
        raise DebiasError(f"size {text!r} is not positive", "write e.g. 2GB")
    return size
