"""The lazy parts a :class:`~peft_debias.vector.bias_vector.BiasVector` is made of.

A *term* gives the delta of each tensor it covers, in float32, a block of rows at a time, computed only when
asked: the difference of two checkpoints read from disk, of two in-memory models, a saved vector, a LoRA adapter
(:mod:`peft_debias.vector.lora`) or a TIES/DARE merge (:mod:`peft_debias.vector.combine`). A vector is a linear
combination of terms, so ``-v``, ``v * lam`` and ``v1 + v2`` only change coefficients and nothing is computed
until the vector is applied or saved.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from peft_debias.core.errors import DebiasError
from peft_debias.core.fingerprints import digests_fingerprint, tensor_bytes
from peft_debias.vector.stream import DEFAULT_CHUNK_BYTES, DTYPE_NAMES, Checkpoint, TensorInfo, row_blocks

# Exclusion presets (regexes over tensor names). The Bias Vector paper leaves LayerNorm out of the vector.
EXCLUDE_PRESETS: dict[str, str] = {
    "layernorm": r"(?i)(norm|(^|\.)ln(_\w+)?\.)",
    "embeddings": r"(?i)(embed|(^|\.)(wte|wpe|shared)\.)",
    "biases": r"\.bias$",
}
DEFAULT_EXCLUDE = ("layernorm",)


def exclusion_patterns(exclude: str | Iterable[str] | None) -> list[str]:
    """Preset names (``layernorm``, ``embeddings``, ``biases``) and regexes -> validated regexes."""
    if exclude is None:
        return []
    items = [exclude] if isinstance(exclude, str) else list(exclude)
    out = []
    for item in items:
        pattern = EXCLUDE_PRESETS.get(item, item)
        try:
            re.compile(pattern)
        except re.error as err:
            raise DebiasError(
                f"exclusion {item!r} is neither a preset nor a valid regex ({err})",
                f"use one of {', '.join(EXCLUDE_PRESETS)} or a Python regex",
            ) from None
        if pattern not in out:
            out.append(pattern)
    return out


def is_excluded(name: str, patterns: Sequence[str]) -> bool:
    return any(re.search(p, name) for p in patterns)


def check_compatible(a: dict[str, Any], b: dict[str, Any], a_label: str, b_label: str) -> None:
    """Refuse two model configs of different architectures or vocabulary sizes."""
    for key in ("model_type", "architectures"):
        if a.get(key) and b.get(key) and a[key] != b[key]:
            raise DebiasError(
                f"different architectures: {a_label} is {a[key]} but {b_label} is {b[key]}",
                "use a biased model fine-tuned from this very base",
            )
    if a.get("vocab_size") and b.get("vocab_size") and a["vocab_size"] != b["vocab_size"]:
        raise DebiasError(
            f"vocabulary size mismatch: {a_label} has {a['vocab_size']} tokens but {b_label} has {b['vocab_size']}",
            "use models with the same tokenizer (a resized vocabulary cannot be subtracted)",
        )


def check_same_tensors(pre: dict[str, TensorInfo], other: dict[str, TensorInfo], pre_label: str, label: str) -> None:
    """Same tensor names and shapes, else an error naming the first offending tensor."""
    for missing, here, there in ((set(pre) - set(other), pre_label, label), (set(other) - set(pre), label, pre_label)):
        if missing:
            first = sorted(missing)[0]
            more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
            raise DebiasError(f"missing tensors: {there} lacks {first}{more} that {here} has", "use matching models")
    for name, info in pre.items():
        if info.shape != other[name].shape:
            raise DebiasError(
                f"tensor {name} has shape {list(info.shape)} in {pre_label} but {list(other[name].shape)} in {label}",
                "use a biased model with the base's architecture and sizes",
            )
        if info.is_float != other[name].is_float:
            raise DebiasError(
                f"tensor {name} has dtype {info.dtype} in {pre_label} but {other[name].dtype} in {label}",
                "use matching models",
            )


class Term:
    """One lazily computed delta. Subclasses set ``infos`` (name -> :class:`TensorInfo` of the base tensor)."""

    infos: dict[str, TensorInfo]

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of the delta of ``name`` as a NEW float32 tensor (the caller may modify it)."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Provenance of this term, for ``bias_vector.json``."""
        raise NotImplementedError


class CheckpointDiff(Term):
    """``biased - pre`` of two checkpoints on disk, read block by block."""

    def __init__(self, pre: Checkpoint, biased: Checkpoint, names: Sequence[str], pre_name: str, biased_name: str):
        self.pre, self.biased = pre, biased
        self.infos = {n: pre.tensors[n] for n in names}
        self.pre_name, self.biased_name = pre_name, biased_name

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        biased = self.biased.read(name, start, stop).float()
        return torch.sub(biased, self.pre.read(name, start, stop, shared=True).float())

    def describe(self) -> dict[str, Any]:
        return {"type": "models", "pre": self.pre_name, "biased": self.biased_name}


class ModuleDiff(Term):
    """``biased - pre`` of two in-memory models (references to their parameters, nothing copied)."""

    def __init__(self, pre: dict[str, torch.Tensor], biased: dict[str, torch.Tensor], pre_name: str, biased_name: str):
        self.pre, self.biased = pre, biased
        self.infos = {n: TensorInfo(n, DTYPE_NAMES[t.dtype], tuple(t.shape)) for n, t in pre.items()}
        self.pre_name, self.biased_name = pre_name, biased_name

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        pre, biased = self.pre[name].detach(), self.biased[name].detach()
        if pre.dim():
            pre, biased = pre[start:stop], biased[start:stop]
        return torch.sub(biased.float(), pre.float())

    def describe(self) -> dict[str, Any]:
        return {"type": "models", "pre": self.pre_name, "biased": self.biased_name}


class StoredDelta(Term):
    """A saved bias vector's float32 tensors."""

    def __init__(self, checkpoint: Checkpoint, source: dict[str, Any] | list[Any] | None = None) -> None:
        self.checkpoint = checkpoint
        self.infos = dict(checkpoint.tensors)
        self.source = source

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        block = self.checkpoint.read(name, start, stop)
        return block if block.dtype == torch.float32 else block.float()

    def describe(self) -> dict[str, Any]:
        return {"type": "saved_vector", "path": Path(self.checkpoint.folder).name, "made_from": self.source}


class DenseDelta(Term):
    """Deltas held in memory (``{name: tensor}``), e.g. built by hand or in tests."""

    def __init__(self, tensors: dict[str, torch.Tensor], label: str = "tensors") -> None:
        self.tensors = tensors
        self.infos = {n: TensorInfo(n, "F32", tuple(t.shape)) for n, t in tensors.items()}
        self.label = label

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        tensor = self.tensors[name].detach()
        return (tensor[start:stop] if tensor.dim() else tensor).to(torch.float32, copy=True)

    def describe(self) -> dict[str, Any]:
        return {"type": "dense", "label": self.label}


def file_fingerprint(checkpoint: Checkpoint, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> str:
    """16 hex digits identifying a checkpoint's tensors (names, dtypes, shapes, bytes), read block by block.

    ``sha256`` over the sorted tensor names of ``name|dtype|shape|sha256(bytes)``; sharding does not change it.
    """
    per_tensor = {}
    for name, info in checkpoint.tensors.items():
        digest = hashlib.sha256()
        for start, stop in row_blocks(info.shape, info.torch_dtype.itemsize, chunk_bytes):
            digest.update(tensor_bytes(checkpoint.read(name, start, stop)))
        per_tensor[name] = digest.hexdigest()
    return fingerprint_from_digests(per_tensor, checkpoint.tensors)


def fingerprint_from_digests(per_tensor: dict[str, str], infos: dict[str, TensorInfo]) -> str:
    """The checkpoint fingerprint of :func:`file_fingerprint` from the sha256 hex digests of its tensors' bytes."""
    return digests_fingerprint({name: (infos[name].dtype, infos[name].shape, d) for name, d in per_tensor.items()})
