"""The trainer state of a checkpoint (optimizer, scheduler, RNG, step) without pickle: JSON plus safetensors.

``optimizer.state_dict()`` and ``scheduler.state_dict()`` are nested dicts, lists and tuples of numbers, strings
and tensors, with integer keys (parameter ids) in places. :func:`save_state` writes the structure to
``trainer_state.json``, each tensor replaced by a reference into ``trainer_state.safetensors``; dicts are written
as ``[key, value]`` pairs and tuples are marked, so that :func:`load_state` gives back the same types (an ``int``
key stays an ``int``, ``betas`` stays a tuple) and the same values bit for bit (Python writes floats as their
shortest exact repr; non-finite floats are spelled out). Reading never runs code: JSON and safetensors hold data
only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

STATE_JSON = "trainer_state.json"
STATE_TENSORS = "trainer_state.safetensors"
_FLOATS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def _encode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    import torch

    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().to("cpu").clone().contiguous()
        return {"tensor": key}
    if isinstance(value, dict):
        return {"dict": [[_encode(k, tensors), _encode(v, tensors)] for k, v in value.items()]}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, tensors) for v in value]}
    if isinstance(value, list):
        return [_encode(v, tensors) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": str(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store a {type(value).__name__} in a trainer state")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {"tensor"}:
        return tensors[value["tensor"]]
    if set(value) == {"dict"}:
        return {_decode(k, tensors): _decode(v, tensors) for k, v in value["dict"]}
    if set(value) == {"tuple"}:
        return tuple(_decode(v, tensors) for v in value["tuple"])
    if set(value) == {"float"}:
        return _FLOATS[value["float"]]
    raise ValueError(f"unknown entry {sorted(value)} in a trainer state")


def save_state(state: dict[str, Any], folder: Path) -> None:
    """Write ``state`` to ``folder`` as ``trainer_state.json`` and ``trainer_state.safetensors``."""
    from safetensors.torch import save_file

    tensors: dict[str, Any] = {}
    structure = _encode(state, tensors)
    save_file(tensors, str(folder / STATE_TENSORS))
    (folder / STATE_JSON).write_text(json.dumps(structure, allow_nan=False) + "\n", encoding="utf-8")


def load_state(folder: Path) -> dict[str, Any]:
    """Read what :func:`save_state` wrote. Raises ``OSError``, ``ValueError`` (bad JSON or structure, a missing
    tensor as ``KeyError``) or safetensors' error (truncated file): the caller names the damaged file."""
    from safetensors.torch import load_file

    structure = json.loads((folder / STATE_JSON).read_text(encoding="utf-8"))
    tensors = load_file(str(folder / STATE_TENSORS), device="cpu")
    state = _decode(structure, tensors)
    if not isinstance(state, dict):
        raise ValueError("the trainer state is not a dict")
    return state
