"""Where a model is loaded and in what precision: ``--device``, ``--dtype``, ``--device-map``.

:class:`Placement` is what the user asked for; :func:`resolve_placement` turns it into a :class:`Resolved` one
(a concrete device and torch dtype) and refuses, in one line, what this machine cannot do ("cuda requested, none
present"). Every command that loads a model records :meth:`Resolved.record` in its output.

* ``device``: ``auto`` (the accelerator if there is one: CUDA, then MPS, else the CPU), ``cpu``, ``cuda``,
  ``cuda:N`` or ``mps``.
* ``dtype``: ``auto`` (the checkpoint's own dtype on an accelerator, float32 on the CPU), ``float32``,
  ``bfloat16`` or ``float16`` (``fp32`` / ``bf16`` / ``fp16`` are accepted too).
* ``device_map="auto"``: accelerate's big-model inference spreads the layers over the accelerators, the CPU and,
  when ``max_memory`` leaves no room, disk (``offload_folder``). It replaces ``device``.

The weights are never materialised twice: transformers 5 builds the model on the meta device and loads each
tensor straight into its place (``low_cpu_mem_usage`` is always on there), onto the accelerator when one is
chosen.
"""

from __future__ import annotations

import logging
import re
import shutil
import tempfile
import weakref
from collections import Counter
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from peft_debias.core.errors import DebiasError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")  # the torch dtypes of those names (torch is imported when used)
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DTYPE_CHOICES = ("auto", *DTYPES, *DTYPE_ALIASES)
DEVICE_MAPS = ("auto",)
DEVICE_HELP = "auto (the accelerator if present), cpu, cuda, cuda:N or mps (default auto)"
DTYPE_HELP = "auto (the checkpoint's dtype on an accelerator, float32 on the CPU), float32, bfloat16 or float16"
DEVICE_MAP_HELP = "'auto': spread the model over the accelerators, the CPU and disk (accelerate), for big models"
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")
_SIZE = re.compile(r"^(\d+|\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB))$", re.IGNORECASE)  # bare digits: bytes


@dataclass(frozen=True)
class Placement:
    """Where and in what precision to load a model (the ``--device``, ``--dtype``, ``--device-map`` options).

    Attributes:
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        dtype: ``auto``, ``float32``, ``bfloat16`` or ``float16`` (or ``fp32`` / ``bf16`` / ``fp16``).
        device_map: ``"auto"`` for accelerate's big-model placement, or None (the whole model on ``device``).
        max_memory: with ``device_map``, the most each device may hold, e.g. ``{"cpu": "2GiB", "0": "20GiB"}``.
        offload_folder: with ``device_map``, where weights that fit nowhere go (default: a temporary folder).
    """

    device: str = "auto"
    dtype: str = "auto"
    device_map: str | None = None
    max_memory: dict[str, str] | None = None
    offload_folder: str | None = None

    def check(self) -> Placement:
        """Refuse malformed values (without looking at the hardware); returns self."""
        if not isinstance(self.device, str) or not _DEVICE.match(self.device):
            raise DebiasError(f"device {self.device!r} is unknown", f"use {DEVICE_HELP}")
        dtype_name(self.dtype)
        if self.device_map is not None and self.device_map not in DEVICE_MAPS:
            raise DebiasError(f"device map {self.device_map!r} is unknown", "use --device-map auto, or leave it out")
        if self.device_map is not None and self.device != "auto":
            raise DebiasError(
                f"--device {self.device} and --device-map {self.device_map} were both given",
                "pass one: --device-map auto places the model itself (cap a device with --max-memory)",
            )
        if (self.max_memory or self.offload_folder) and self.device_map is None:
            raise DebiasError(
                "--max-memory / --offload-folder were given without --device-map", "add --device-map auto"
            )
        for key, size in (self.max_memory or {}).items():
            _memory_key(key)
            if not isinstance(size, (str, int)) or (isinstance(size, str) and not _SIZE.match(size.strip())):
                raise DebiasError(
                    f"memory size {size!r} for {key} is not a size", "write it like 2GiB, 500MB or a byte count"
                )
        return self


def dtype_name(spec: str | torch.dtype) -> str:
    """``"auto"`` or the canonical name (``float32``...) of a dtype spec; an unknown one is a one-line error."""
    if not isinstance(spec, str):  # a torch.dtype
        name = str(spec).removeprefix("torch.")
        if name not in DTYPES:
            raise DebiasError(f"dtype {spec} is not supported", f"use one of {', '.join(DTYPES)}")
        return name
    name = DTYPE_ALIASES.get(spec, spec)
    if name != "auto" and name not in DTYPES:
        raise DebiasError(f"dtype {spec!r} is unknown", f"use one of {', '.join(DTYPE_CHOICES)}")
    return name


def _memory_key(key: str) -> str | int:
    """A max_memory key as accelerate wants it: ``cpu``, ``disk``, ``mps`` or a CUDA index (``0`` / ``cuda:0``)."""
    text = str(key).strip()
    if text in ("cpu", "disk", "mps"):
        return text
    match = re.fullmatch(r"(?:cuda:)?(\d+)", text)
    if not match:
        raise DebiasError(f"--max-memory device {key!r} is unknown", "use cpu, mps, disk, N or cuda:N")
    return int(match.group(1))


def torch_dtype(spec: str | torch.dtype) -> torch.dtype:
    """The torch dtype of a spec other than ``auto`` (``bf16`` -> ``torch.bfloat16``)."""
    import torch

    return getattr(torch, dtype_name(spec))


def _size(value: str | int) -> str | int:
    """A memory size as accelerate reads it: bare digits are bytes (an int), else the text (``2GiB``)."""
    return int(value) if isinstance(value, int) or value.strip().isdigit() else value.strip()


def accelerator() -> str | None:
    """The accelerator torch can use here: ``cuda``, ``mps`` or None."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    mps = getattr(torch.backends, "mps", None)
    return "mps" if mps is not None and mps.is_available() else None


def resolve_device(spec: str) -> str:
    """``auto`` -> the accelerator if present (``cuda:0``, ``mps``), else ``cpu``; an explicit device is checked
    against the hardware: asking for one that is not there is a one-line error naming the fix."""
    import torch

    Placement(device=spec).check()
    if spec == "auto":
        found = accelerator()
        return {"cuda": "cuda:0", "mps": "mps", None: "cpu"}[found]
    if spec == "cpu":
        return "cpu"
    if spec == "mps":
        if accelerator() != "mps":
            raise DebiasError("--device mps was asked for, but no MPS device is present", "pass --device cpu or auto")
        return "mps"
    index = int(spec.split(":")[1]) if ":" in spec else 0
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise DebiasError(
            f"--device {spec} was asked for, but no CUDA device is present (torch {torch.__version__}, {build})",
            "pass --device cpu, or --device auto to use an accelerator only when there is one",
        )
    if index >= torch.cuda.device_count():
        raise DebiasError(
            f"--device {spec} was asked for, but there are {torch.cuda.device_count()} CUDA device(s)",
            f"pass cuda:0 to cuda:{torch.cuda.device_count() - 1}",
        )
    return f"cuda:{index}"


def accelerate_on_cpu(device: str) -> bool:
    """For ``Accelerator(cpu=...)``: whether ``device`` puts this process on the CPU. An absent accelerator asked
    for is a one-line error; ``cuda:N`` becomes the current CUDA device, which a single accelerate process uses."""
    resolved = resolve_device(device)
    if resolved.startswith("cuda:") and resolved != "cuda:0":
        import torch

        torch.cuda.set_device(int(resolved.split(":")[1]))
    return resolved == "cpu"


def check_training_placement(device: str, dtype: str) -> None:
    """Refuse a malformed training device, and ``dtype="auto"``: a run's weights dtype is always explicit."""
    Placement(device=device).check()
    if dtype_name(dtype) == "auto":
        raise DebiasError("dtype auto is not for training", "pass float32, bfloat16 or float16")


def checkpoint_dtype(config: Any) -> torch.dtype | None:
    """The dtype a transformers config says its weights are stored in (``dtype`` / ``torch_dtype``), or None."""
    for attr in ("dtype", "torch_dtype"):
        value = getattr(config, attr, None)
        name = DTYPE_ALIASES.get(value, value) if isinstance(value, str) else str(value).removeprefix("torch.")
        if value is not None and name in DTYPES:
            return torch_dtype(name)
    return None


def resolve_dtype(spec: str | torch.dtype, device: str, config: Any = None) -> torch.dtype:
    """``auto`` -> float32 on the CPU, the checkpoint's own dtype (float32 if it names none) on an accelerator."""
    name = dtype_name(spec)
    if name != "auto":
        return torch_dtype(name)
    stored = checkpoint_dtype(config) if config is not None else None
    return torch_dtype("float32") if device == "cpu" or stored is None else stored


@dataclass(frozen=True)
class Resolved:
    """A placement made concrete: ``device`` (``cpu``, ``cuda:0``...; ``mapped`` with a device map) and
    ``dtype``, plus the device-map settings."""

    device: str
    dtype: torch.dtype
    device_map: str | None = None
    max_memory: dict[str, str] | None = None
    offload_folder: str | None = None

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.dtype)

    def load_kwargs(self) -> dict[str, Any]:
        """The ``from_pretrained`` keyword arguments: dtype, and where the weights go as they load."""
        kwargs: dict[str, Any] = {"dtype": self.dtype}
        if self.device_map is not None:
            kwargs["device_map"] = self.device_map
            if self.max_memory:
                kwargs["max_memory"] = {_memory_key(k): _size(v) for k, v in self.max_memory.items()}
            kwargs["offload_folder"] = self.offload_folder
        elif self.device != "cpu":
            kwargs["device_map"] = self.device  # straight onto the accelerator, no CPU copy first
        return kwargs

    def record(self, model: Any = None) -> dict[str, Any]:
        """What an output file records: device, dtype, device map (with how many modules each device holds)."""
        out: dict[str, Any] = {"device": self.device, "dtype": self.dtype_name, "device_map": self.device_map}
        mapping = getattr(model, "hf_device_map", None) if self.device_map else None
        if mapping:
            out["map"] = dict(sorted(Counter(str(v) for v in mapping.values()).items()))
        return out


def resolve_placement(placement: Placement, config: Any = None) -> Resolved:
    """The concrete device and dtype for ``placement`` on this machine (``config``: the checkpoint's config,
    for ``dtype="auto"``)."""
    placement.check()
    if placement.device_map is not None:
        dtype = resolve_dtype(placement.dtype, accelerator() or "cpu", config)
        return Resolved("mapped", dtype, placement.device_map, placement.max_memory, placement.offload_folder)
    device = resolve_device(placement.device)
    return Resolved(device, resolve_dtype(placement.dtype, device, config))


def temporary_offload(resolved: Resolved) -> tuple[Resolved, str | None]:
    """``resolved`` with a new temporary offload folder when it has a device map and no folder, and that folder
    (None when none was made): the caller removes it with the model (:func:`remove_with`)."""
    if resolved.device_map is None or resolved.offload_folder is not None:
        return resolved, None
    folder = tempfile.mkdtemp(prefix="peft-debias-offload-")
    return replace(resolved, offload_folder=folder), folder


def remove_with(model: Any, folder: str | None) -> None:
    """Remove ``folder`` (if any) once ``model`` is garbage-collected or the process exits."""
    if folder is not None:
        weakref.finalize(model, shutil.rmtree, folder, True)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device a model's inputs go to: the first device of its device map (accelerate moves them on from
    there), else the device of its first parameter."""
    import torch

    mapping = getattr(model, "hf_device_map", None)
    if mapping:
        for value in mapping.values():
            if value not in ("disk", "meta"):
                return torch.device(f"cuda:{value}" if isinstance(value, int) else value)
        return torch.device("cpu")
    return next(model.parameters()).device


def same_device(first: str, second: str) -> bool:
    """Whether two device names are one device (``cuda`` is ``cuda:0``)."""
    import torch

    a, b = torch.device(first), torch.device(second)
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def check_mapped(model: Any, name: str) -> None:
    """Refuse a device map that put every module on disk: there is then no device to compute on."""
    mapping = getattr(model, "hf_device_map", None)
    if mapping and all(value == "disk" for value in mapping.values()):
        raise DebiasError(
            f"--max-memory leaves no room for {name} on any device: every layer went to disk",
            "raise the cap so that at least the first layer (the embeddings) fits",
        )


def parse_max_memory(items: list[str] | None) -> dict[str, str] | None:
    """``["cpu=2GiB", "0=20GiB"]`` (the repeatable ``--max-memory`` option) -> ``{"cpu": "2GiB", "0": "20GiB"}``."""
    if not items:
        return None
    out = {}
    for item in items:
        key, sep, size = item.partition("=")
        if not sep or not key.strip() or not size.strip():
            raise DebiasError(f"--max-memory {item!r} is not DEVICE=SIZE", "write it like --max-memory cpu=2GiB")
        out[key.strip()] = size.strip()
    return out
