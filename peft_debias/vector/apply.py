"""Applying, saving and loading bias vectors.

:func:`merge_into_folder` streams a model on disk through ``theta = theta_pre + scale * V``: every tensor of the
base is read a block of rows at a time, the arithmetic runs in float32, the result is cast back to the tensor's own
dtype and appended to an output shard whose header was planned in advance. Tensors the vector does not touch
(excluded LayerNorms, integer buffers) are copied byte for byte; a tied output embedding stored next to its input
embedding receives exactly the input embedding's result. Config, tokenizer and generation files are copied and the
folder appears at the destination only when complete (:func:`peft_debias.core.atomic.atomic_output`).
"""

from __future__ import annotations

import copy
import hashlib
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from peft_debias.cards.vector import render_debiased_card, render_vector_card
from peft_debias.core.atomic import atomic_output, check_destination
from peft_debias.core.errors import DebiasError
from peft_debias.core.fingerprints import tensor_bytes
from peft_debias.core.heap import release_memory
from peft_debias.core.provenance import DEBIAS_CONFIG, sidecar, write_sidecar
from peft_debias.models.loading import weights_fingerprint
from peft_debias.vector.folders import copy_side_files, tied_aliases
from peft_debias.vector.lora import LoraDelta, write_negated_adapter
from peft_debias.vector.meta import VECTOR_JSON, VectorLike, VectorMeta, open_checkpoint
from peft_debias.vector.shard_writer import ShardWriter, parse_size
from peft_debias.vector.stream import DEFAULT_CHUNK_BYTES, Checkpoint, row_blocks, single_thread
from peft_debias.vector.terms import (
    CheckpointDiff,
    check_compatible,
    file_fingerprint,
    fingerprint_from_digests,
)

logger = logging.getLogger(__name__)


@dataclass
class MergeResult:
    """What :func:`merge_into_folder` wrote."""

    output: Path
    tensors: int
    changed: int
    params_changed: int
    files: list[str]
    seconds: float
    base_matches_vector: bool | None  # None when the vector records no comparable base fingerprint


def _check_base(vector: VectorLike, ckpt: Checkpoint, label: str) -> None:
    base = vector.meta.base
    known = {k: base.get(k) for k in ("model_type", "architectures", "vocab_size") if base.get(k)}
    check_compatible(known, ckpt.config, "the bias vector's base", label)
    for name, info in vector.infos.items():
        have = ckpt.tensors.get(name)
        if have is None:
            raise DebiasError(
                f"missing tensors: {label} lacks {name}, which the bias vector changes",
                "apply the vector to the model it was made from",
            )
        if have.shape != info.shape:
            raise DebiasError(
                f"tensor {name} has shape {list(info.shape)} in the bias vector but {list(have.shape)} in {label}",
                "apply the vector to the model it was made from",
            )
        if not have.is_float:
            raise DebiasError(f"tensor {name} is {have.dtype} in {label}, not floating point", "check the models")


def merge_into_folder(
    vector: VectorLike,
    base: Any,
    output: str | Path,
    scale: float,
    *,
    shard_size: str | int = "2GB",
    overwrite: bool = False,
    allow_pickle: bool = False,
    progress: bool = True,
    info: dict[str, Any] | None = None,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    base_model_id: str | None = None,
) -> MergeResult:
    """Write the model ``base + scale * vector`` to the folder ``output`` (see the module docstring)."""
    from tqdm.auto import tqdm

    started = time.perf_counter()
    output = check_destination(output, overwrite=overwrite)
    shard_bytes = parse_size(shard_size)
    ckpt = open_checkpoint(base, allow_pickle)
    label = f"the base {base}"
    _check_base(vector, ckpt, label)
    aliases = tied_aliases(ckpt.config, list(ckpt.tensors))
    vbase = vector.meta.base
    verify = vbase.get("fingerprint_method") == "safetensors" and bool(vbase.get("weights_fingerprint"))
    digests: dict[str, str] = {}
    changed = params = 0
    plan = [(n, i.dtype, i.shape) for n, i in ckpt.tensors.items()]
    with (
        single_thread(),
        atomic_output(output, overwrite=overwrite, directory=True) as tmp,
        ShardWriter(tmp, plan, shard_bytes=shard_bytes) as writer,
    ):
        total = sum(i.nbytes for i in ckpt.tensors.values())
        bar = tqdm(total=total, unit="B", unit_scale=True, desc="merge", disable=None if progress else True)
        for name, binfo in ckpt.tensors.items():
            source = name if name in vector else aliases.get(name)
            source = source if source in vector else None
            hexdigest = _merge_tensor(ckpt, vector, name, source, scale, writer, verify, chunk_bytes)
            if source is not None:
                changed, params = changed + 1, params + binfo.numel
            if hexdigest is not None:
                digests[name] = hexdigest
            bar.update(binfo.nbytes)
        bar.close()
        files = [p.name for p in writer.close()]
        files += copy_side_files(ckpt.folder, tmp)
        data = debiased_info(vector, base, ckpt, scale, info, changed, params, base_model_id)
        write_sidecar(tmp, data)
        (tmp / "README.md").write_text(render_debiased_card(data), encoding="utf-8")
        files += [DEBIAS_CONFIG, "README.md"]
    ckpt.close()
    matches = _base_matches(vbase, digests, ckpt) if verify else None
    result = MergeResult(Path(output), len(plan), changed, params, files, time.perf_counter() - started, matches)
    logger.info("wrote %s: %d of %d tensors changed, %.1f s", output, changed, len(plan), result.seconds)
    return result


def _merge_tensor(ckpt, vector, name: str, source: str | None, scale: float, writer, verify: bool, chunk_bytes: int):
    """Stream one tensor of ``base + scale * vector`` into ``writer``, a block of rows at a time; the sha256 of the
    base tensor's bytes when ``verify`` (else None)."""
    binfo = ckpt.tensors[name]
    digest = hashlib.sha256() if verify else None
    for start, stop in row_blocks(binfo.shape, max(binfo.torch_dtype.itemsize, 4), chunk_bytes):
        release_memory()
        if source is None:
            block = ckpt.read(name, start, stop)
            if digest is not None:
                digest.update(tensor_bytes(block))
            writer.append(name, block)
            continue
        pre = ckpt.read(source, start, stop, shared=True)
        if digest is not None:
            own = pre if source == name else ckpt.read(name, start, stop)
            digest.update(tensor_bytes(own))
        out = vector.rows(source, start, stop, scale).add_(pre.float()).to(binfo.torch_dtype)
        if not bool(torch.isfinite(out).all()) and bool(torch.isfinite(pre).all()):
            raise DebiasError(
                f"base + {scale:g} * vector gives non-finite values in tensor {name} ({binfo.dtype} overflow, "
                "or NaN/inf in the vector or the biased model)",
                "use a smaller --lambda, or check the biased model's weights",
            )
        writer.append(name, out)
    return digest.hexdigest() if digest is not None else None


def _base_matches(vbase: dict[str, Any], digests: dict[str, str], ckpt) -> bool:
    """Whether the streamed base weights are the ones the vector was made from (a warning when not)."""
    matches = fingerprint_from_digests(digests, ckpt.tensors) == vbase["weights_fingerprint"]
    if not matches:
        logger.warning(
            "the bias vector was made from %s (weights %s), not from these base weights: the result is "
            "base + scale * vector all the same; check that this is what you want",
            vbase.get("name"),
            vbase.get("weights_fingerprint"),
        )
    return matches


def debiased_info(vector, base, ckpt, scale, info, changed, params, base_model_id=None) -> dict[str, Any]:
    """The ``debias_config.json`` of a debiased model folder (the base by Hub id, never by its folder)."""
    from peft_debias.models.base_ids import base_record

    fields = {
        "paper": "bias_vector",
        "axis": vector.meta.axis,
        "lambda": -scale,
        "scale": scale,
        "base_model": {
            **base_record(str(base), str(ckpt.folder), base_model_id),
            "model_type": ckpt.config.get("model_type"),
            "architectures": ckpt.config.get("architectures"),
        },
        "vector": {
            "sources": [{"coefficient": c, **t.describe()} for c, t in vector.terms],
            "base_model": vector.meta.base,
            "exclude": vector.meta.exclude,
            "excluded_tensors": len(vector.meta.excluded_tensors),
            "tensors_changed": changed,
            "params_changed": params,
        },
        **(info or {}),
    }
    return sidecar("debiased_model", fields)


def apply_to_module(vector: VectorLike, model: torch.nn.Module, scale: float, check_base: bool = True):
    """``theta = theta + scale * V`` in place on an in-memory model (float32 arithmetic, parameter dtype kept)."""
    params = dict(model.named_parameters())
    for name, info in vector.infos.items():
        if name not in params:
            tied_to = vector.meta.tied.get(name)
            if tied_to in params:
                continue
            raise DebiasError(f"the model has no parameter {name}, which the bias vector changes", "use the base model")
        if tuple(params[name].shape) != info.shape:
            raise DebiasError(
                f"tensor {name} has shape {list(info.shape)} in the bias vector but {list(params[name].shape)} in "
                "the model",
                "apply the vector to the model it was made from",
            )
    base = vector.meta.base
    known = check_base and base.get("fingerprint_method") == "state_dict" and base.get("weights_fingerprint")
    if known and weights_fingerprint(model) != base["weights_fingerprint"]:
        logger.warning("the bias vector was made from other base weights (%s)", base.get("name"))
    with torch.no_grad():
        for name in vector:
            param = params.get(name)
            if param is not None:
                param.copy_(vector.tensor(name, scale).to(param.device).add_(param.detach().float()))
    return model


def save_vector(vector: VectorLike, path: Path, *, overwrite: bool, shard_size: str | int, progress: bool) -> Path:
    """Write a vector folder (see :meth:`BiasVector.save`)."""
    from tqdm.auto import tqdm

    check_destination(path, overwrite=overwrite)
    meta: VectorMeta = copy.deepcopy(vector.meta)
    if not meta.base.get("weights_fingerprint") and len(vector.terms) == 1:
        term = vector.terms[0][1]
        if isinstance(term, CheckpointDiff):
            meta.base["weights_fingerprint"] = file_fingerprint(term.pre)
            meta.base["fingerprint_method"] = "safetensors"
    plan = [(name, "F32", info.shape) for name, info in vector.infos.items()]
    sum_sq = 0.0
    with (
        single_thread(),
        atomic_output(path, overwrite=overwrite, directory=True) as tmp,
        ShardWriter(tmp, plan, prefix="vector", shard_bytes=parse_size(shard_size)) as writer,
    ):
        for name in tqdm(vector.keys(), desc="save vector", unit="tensor", disable=None if progress else True):
            for start, stop in vector.blocks(name):
                release_memory()
                block = vector.rows(name, start, stop)
                sum_sq += float(torch.linalg.vector_norm(block, dtype=torch.float64)) ** 2
                writer.append(name, block)
        files = [p.name for p in writer.close()]
        data = sidecar(
            "bias_vector",
            {"paper": "bias_vector", **meta.to_dict()},
            sources=[{"coefficient": c, **t.describe()} for c, t in vector.terms],
            tensors=len(vector),
            params=vector.num_params,
            norm=math.sqrt(sum_sq),
            dtype="float32",
            files=files,
        )
        write_sidecar(tmp, data, VECTOR_JSON)
        (tmp / "README.md").write_text(render_vector_card(data), encoding="utf-8")
    return path


def write_adapter(vector: VectorLike, output: Path, scale: float, *, overwrite: bool) -> Path:
    """Write the PEFT adapter ``scale * V`` of a one-LoRA vector (see :meth:`BiasVector.to_adapter`)."""
    if len(vector.terms) != 1 or not isinstance(vector.terms[0][1], LoraDelta):
        raise DebiasError(
            "only a vector made from one LoRA adapter can be written as an adapter",
            "merge it into the model instead (drop --as-adapter)",
        )
    coef, term = vector.terms[0]
    with atomic_output(output, overwrite=overwrite, directory=True) as tmp:
        modules = write_negated_adapter(term, scale * coef, tmp, vector.meta.base.get("hub_id"))
        fields = {"paper": "bias_vector", "axis": vector.meta.axis, "lambda": -scale * coef, "scale": scale * coef}
        data = sidecar(
            "negated_adapter",
            fields,
            base_model=vector.meta.base,
            vector={"sources": [term.describe()], "exclude": vector.meta.exclude, "modules": len(modules)},
        )
        write_sidecar(tmp, data)
        (tmp / "README.md").write_text(render_debiased_card(data, adapter=True), encoding="utf-8")
    return output
