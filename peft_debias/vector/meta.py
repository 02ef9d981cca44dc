"""What a bias vector is made from and saved with: ``bias_vector.json`` metadata, the format version, base
information, strengths, and opening the checkpoints a vector is taken between."""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from peft_debias.core.errors import DebiasError
from peft_debias.vector.folders import resolve_folder
from peft_debias.vector.stream import Checkpoint, TensorInfo
from peft_debias.vector.terms import Term

VECTOR_JSON = "bias_vector.json"


def check_scalar(value: Any, what: str = "lambda") -> float:
    """A finite real number, else a :class:`DebiasError` (NaN or infinite strengths would silently break a model)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise DebiasError(f"{what} {value!r} is not a number", f"pass a finite {what} such as 1.0")
    if not math.isfinite(float(value)):
        raise DebiasError(f"{what} {value} is not a finite number", f"pass a finite {what} such as 1.0")
    return float(value)


@dataclass
class VectorMeta:
    """What a vector was made from (saved as ``bias_vector.json`` along with the format version)."""

    base: dict[str, Any] = field(default_factory=dict)  # name, hub_id, model_type, vocab_size, weights_fingerprint...
    axis: str | None = None
    exclude: list[str] = field(default_factory=list)  # regexes of the tensors left out
    excluded_tensors: list[str] = field(default_factory=list)
    tied: dict[str, str] = field(default_factory=dict)  # output embedding -> input embedding it follows

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def base_info(
    name: Any,
    folder: Any,
    config: dict[str, Any],
    fingerprint: str | None,
    method: str,
    recorded: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The ``base`` record of a vector: the base's portable identity (its Hub id, never its folder; taken from
    ``recorded``, a base record read from an artifact, when that has one), its architecture and fingerprint."""
    from peft_debias.models.base_ids import base_record

    if recorded and "hub_id" in recorded:
        identity = {k: recorded.get(k) for k in ("name", "hub_id", "revision", "local_only")}
    else:
        identity = base_record(str(name), str(folder) if folder else None)
    return {
        **identity,
        "model_type": config.get("model_type"),
        "architectures": config.get("architectures"),
        "vocab_size": config.get("vocab_size"),
        "weights_fingerprint": fingerprint,
        "fingerprint_method": method,
    }


def set_base_model_id(base: dict[str, Any], base_model_id: str | None) -> dict[str, Any]:
    """``base`` (a vector's base record) with the Hub id the user passed (``--base-model-id``), checked."""
    if base_model_id is not None:
        from peft_debias.models.base_ids import check_base_model_id

        base.update(hub_id=check_base_model_id(base_model_id), local_only=False)
    return base


def open_checkpoint(model: Any, allow_pickle: bool = False) -> Checkpoint:
    """A :class:`Checkpoint` for a folder / Hub id / ``bundled:`` alias (or the checkpoint itself)."""
    if isinstance(model, Checkpoint):
        return model
    folder = resolve_folder(model)
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        raise DebiasError(f"{model} is an adapter, not a model", "use BiasVector.from_adapter for LoRA adapters")
    if not (folder / "config.json").is_file():
        raise DebiasError(f"{folder} holds no config.json", "pass a Hugging Face model folder")
    checkpoint = Checkpoint.open(folder, allow_pickle=allow_pickle)
    checkpoint.name = str(model)
    return checkpoint


def _check_same_base(a: dict[str, Any], b: dict[str, Any]) -> None:
    fa, fb = a.get("weights_fingerprint"), b.get("weights_fingerprint")
    if fa and fb and a.get("fingerprint_method") == b.get("fingerprint_method") and fa != fb:
        raise DebiasError(
            f"the vectors come from different base weights ({a.get('name')} {fa} vs {b.get('name')} {fb})",
            "combine vectors made from the same base model",
        )
    if a.get("model_type") and b.get("model_type") and a["model_type"] != b["model_type"]:
        raise DebiasError(
            f"the vectors come from different architectures ({a['model_type']} vs {b['model_type']})",
            "combine vectors made from the same base model",
        )


def read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise DebiasError(f"{path} is not valid JSON ({err})", "restore or re-create the file") from err
    return data if isinstance(data, dict) else None


class VectorLike(Protocol):
    """What applying and saving need of a bias vector (:class:`~peft_debias.vector.bias_vector.BiasVector` is one):
    its metadata, its terms, and its tensors a block of rows at a time."""

    meta: VectorMeta
    terms: list[tuple[float, Term]]
    infos: dict[str, TensorInfo]

    @property
    def num_params(self) -> int: ...

    def __contains__(self, name: object) -> bool: ...

    def __iter__(self) -> Iterator[str]: ...

    def __len__(self) -> int: ...

    def keys(self) -> list[str]: ...

    def rows(self, name: str, start: int, stop: int, scale: float = 1.0) -> Any: ...

    def tensor(self, name: str, scale: float = 1.0) -> Any: ...

    def blocks(self, name: str, chunk_bytes: int = ...) -> Iterator[tuple[int, int]]: ...
