"""Tensor streaming for bias vectors: read safetensors checkpoints a slice at a time (writing them is
:mod:`peft_debias.vector.shard_writer`).

Why not ``safetensors.safe_open``: it memory-maps whole files, and every page a reader touches stays resident
(and counts in the process RSS) until the file is closed, so reading a model tensor by tensor still grows the
RSS to the model's size. Here a tensor (or a block of its rows) is read with ``readinto`` into a buffer the caller
owns. With the shard writer, which appends bytes as they are computed, peak memory is a few row blocks
(``chunk_bytes``), whatever the model size; :func:`release_memory` (from :mod:`peft_debias.core.heap`) and
:func:`single_thread` keep it (and the time) predictable.

The format (https://github.com/huggingface/safetensors): an 8-byte little-endian header length, a JSON header
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}`` and the tensors' bytes,
contiguous and in offset order. Sharded models add ``<prefix>.safetensors.index.json`` with a ``weight_map``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import torch

from peft_debias.core.errors import DebiasError, one_line

logger = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U64": torch.uint64,
    "U32": torch.uint32,
    "U16": torch.uint16,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
PICKLE_NAMES = ("pytorch_model.bin", "model.bin", "pytorch_model.pt", "model.pt")
DEFAULT_CHUNK_BYTES = 16 << 20
_MAX_HEADER = 100 << 20


@dataclass(frozen=True)
class TensorInfo:
    """Where one tensor lives: file, absolute byte offset, dtype name (``F32``, ``BF16``...) and shape."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    file: Path | None = None
    offset: int = 0

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.torch_dtype.itemsize

    @property
    def rows(self) -> int:
        """Length of the leading dimension (1 for a 0-d tensor): the unit of partial reads."""
        return self.shape[0] if self.shape else 1

    @property
    def is_float(self) -> bool:
        return self.torch_dtype.is_floating_point


def row_blocks(
    shape: Sequence[int], itemsize: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES
) -> Iterator[tuple[int, int]]:
    """Half-open row ranges of at most ``chunk_bytes`` (at least one row) covering a tensor of ``shape``."""
    rows = shape[0] if len(shape) else 1
    row_bytes = max(1, math.prod(shape[1:]) * itemsize)
    step = max(1, chunk_bytes // row_bytes)
    for start in range(0, rows, step):
        yield start, min(rows, start + step)
    if rows == 0:
        yield 0, 0


def read_header(path: Path) -> dict[str, TensorInfo]:
    """The tensors of one safetensors file, in offset order; a clear error if the file is not safetensors."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            raw = fh.read(8)
            (length,) = struct.unpack("<Q", raw) if len(raw) == 8 else (-1,)
            if not 0 < length <= min(_MAX_HEADER, size - 8):
                raise ValueError(f"header length {length} does not fit a file of {size} bytes")
            header = json.loads(fh.read(length))
    except (OSError, ValueError, UnicodeDecodeError, struct.error) as err:
        problem = f"{path} is not a valid safetensors file ({one_line(err)})"
        raise DebiasError(problem, "re-save or re-download it") from err
    start = 8 + length
    out: dict[str, TensorInfo] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, end = (int(x) for x in entry["data_offsets"])
            info = TensorInfo(name, str(entry["dtype"]), tuple(int(d) for d in entry["shape"]), path, start + begin)
            valid = info.dtype in DTYPES and end - begin == info.nbytes and start + end <= size
        except (KeyError, TypeError, ValueError):
            valid = False
        if not valid:
            raise DebiasError(f"{path}: tensor {name} has a malformed or unsupported entry", "re-save the checkpoint")
        out[name] = info
    return dict(sorted(out.items(), key=lambda kv: kv[1].offset))


def _read_into(fh: BinaryIO, offset: int, out: torch.Tensor) -> None:
    view = memoryview(out.reshape(-1).view(torch.uint8).numpy())
    fh.seek(offset)
    done = 0
    while done < len(view):
        got = fh.readinto(view[done:])
        if not got:
            raise DebiasError(f"{fh.name} ends early (truncated file)", "re-save or re-download it")
        done += got


class Checkpoint:
    """The weights of a model (or bias vector) folder, read a block of rows at a time, without memory mapping.

    ``config`` is the folder's ``config.json`` (empty for folders without one). Pickle checkpoints are read only
    when ``allow_pickle`` is set (``torch.load(weights_only=True, mmap=True)``), never by default.
    """

    def __init__(self, folder: Path, tensors: dict[str, TensorInfo], config: dict[str, Any], pickled=None) -> None:
        self.folder = folder
        self.name = str(folder)  # what the user called it (a Hub id or bundled alias), for messages and provenance
        self.tensors = tensors
        self.config = config
        self._pickled: dict[str, torch.Tensor] | None = pickled
        self._handles: dict[Path, BinaryIO] = {}
        self._last: tuple[tuple[str, int, int], torch.Tensor] | None = None

    @classmethod
    def open(cls, folder: str | os.PathLike, *, prefix: str = "model", allow_pickle: bool = False) -> Checkpoint:
        """Open ``<prefix>.safetensors``, its sharded index, or any ``*.safetensors`` in ``folder``."""
        folder = Path(folder)
        config_path = folder / "config.json"
        config: dict[str, Any] = {}
        if config_path.is_file():
            try:
                config = json.loads(config_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise DebiasError(f"{config_path} is not valid JSON ({one_line(err)})", "fix or re-create it") from err
        files = _safetensors_files(folder, prefix)
        if files:
            tensors: dict[str, TensorInfo] = {}
            for path in files:
                for name, info in read_header(path).items():
                    if name in tensors:
                        raise DebiasError(f"tensor {name} appears in two shards of {folder}", "re-save the model")
                    tensors[name] = info
            return cls(folder, tensors, config)
        pickles = _pickle_files(folder)
        if not pickles:
            raise DebiasError(f"{folder} holds no weights (*.safetensors)", "pass a saved model folder")
        if not allow_pickle:
            raise DebiasError(
                f"{folder} has only pickle checkpoints (.bin/.pt), refused as unpickling can run code",
                "convert to safetensors or pass --allow-pickle / allow_pickle=True",
            )
        loaded: dict[str, torch.Tensor] = {}
        for path in pickles:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as err:
                raise DebiasError(f"cannot read {path} ({one_line(err)})", "re-save it as safetensors") from err
            loaded.update({k: v for k, v in state.items() if isinstance(v, torch.Tensor)})
        infos = {k: TensorInfo(k, DTYPE_NAMES[v.dtype], tuple(v.shape)) for k, v in loaded.items()}
        return cls(folder, infos, config, pickled=loaded)

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def __str__(self) -> str:
        return self.name

    def read(self, name: str, start: int = 0, stop: int | None = None, *, shared: bool = False) -> torch.Tensor:
        """Rows ``start:stop`` of tensor ``name`` in its stored dtype, as a new tensor the caller owns.

        With ``shared=True`` the block may be one handed out before and is kept for the next shared read of the
        same rows (so a merge reads the base once even when the vector's own base is the same checkpoint): the
        caller must not modify it.
        """
        info = self.tensors[name]
        stop = info.rows if stop is None else stop
        if shared:
            if self._last is not None and self._last[0] == (name, start, stop):
                return self._last[1]
            block = self.read(name, start, stop)
            self._last = ((name, start, stop), block)
            return block
        if self._pickled is not None:
            tensor = self._pickled[name]
            return (tensor[start:stop] if info.shape else tensor).clone()
        shape = (stop - start, *info.shape[1:]) if info.shape else ()
        out = torch.empty(shape, dtype=info.torch_dtype)
        row_bytes = math.prod(info.shape[1:]) * info.torch_dtype.itemsize if info.shape else 0
        if out.numel():
            assert info.file is not None
            handle = self._handles.get(info.file)
            if handle is None:
                handle = self._handles[info.file] = open(info.file, "rb", buffering=0)  # noqa: SIM115
            _read_into(handle, info.offset + start * row_bytes, out)
        return out

    def close(self) -> None:
        for handle in self._handles.values():
            handle.close()
        self._handles.clear()
        self._last = None

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _safetensors_files(folder: Path, prefix: str) -> list[Path]:
    index = folder / f"{prefix}.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            names = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise DebiasError(f"{index} is not a valid index ({one_line(err)})", "re-save the model") from err
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise DebiasError(f"{folder} lacks shard {missing[0]} named in {index.name}", "re-download the model")
        return [folder / n for n in names]
    single = folder / f"{prefix}.safetensors"
    if single.is_file():
        return [single]
    if prefix != "model":
        return []
    return sorted(p for p in folder.glob("*.safetensors") if not p.name.startswith("adapter_model"))


def _pickle_files(folder: Path) -> list[Path]:
    index = folder / "pytorch_model.bin.index.json"
    if index.is_file():
        try:
            return [folder / n for n in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DebiasError(f"{index} is not a valid index ({one_line(err)})", "re-save the model") from err
    return [folder / n for n in PICKLE_NAMES if (folder / n).is_file()]


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch's element-wise work on one thread, then restore the thread count.

    The merge is memory-bound: one thread streams a block in milliseconds, while an OpenMP team on a machine shared
    with other processes waits for its descheduled members (measured here: 18x slower with 2 threads under load).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
