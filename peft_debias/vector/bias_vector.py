"""Bias vectors (Shirafuji et al. 2024, "Bias Vector: Mitigating Biases in Language Models with Task Arithmetic
Approach", arXiv:2412.11679): train a copy of the model on stereotyped text, take ``V = theta_biased - theta_pre``
and subtract it: ``theta_debiased = theta_pre - lam * V``.

A :class:`BiasVector` reads like the maths (``-v``, ``v * lam``, ``lam * v``, ``v1 + v2``, ``v1 - v2``) and is
lazy: it is a linear combination of *terms* (:mod:`peft_debias.vector.terms`), and tensors are computed a block of
rows at a time only when the vector is applied, saved or measured. Applying to a model on disk streams it shard by
shard (:mod:`peft_debias.vector.apply`), so memory stays at a few blocks whatever the model size.

LayerNorm tensors are left out by default, as in the paper (``exclude=``: presets ``layernorm``, ``embeddings``,
``biases``, or regexes over tensor names). Tied output embeddings follow their input embeddings.
"""

from __future__ import annotations

import copy
import math
import numbers
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

from peft_debias.core.errors import DebiasError
from peft_debias.core.provenance import FORMAT_VERSION
from peft_debias.models.loading import weights_fingerprint
from peft_debias.vector.apply import apply_to_module, merge_into_folder, save_vector, write_adapter
from peft_debias.vector.folders import resolve_folder, tied_aliases
from peft_debias.vector.lora import LoraDelta
from peft_debias.vector.meta import (
    VECTOR_JSON,
    VectorMeta,
    _check_same_base,
    base_info,
    check_scalar,
    open_checkpoint,
    read_json,
)
from peft_debias.vector.stream import DEFAULT_CHUNK_BYTES, Checkpoint, TensorInfo, row_blocks
from peft_debias.vector.terms import (
    DEFAULT_EXCLUDE,
    CheckpointDiff,
    DenseDelta,
    ModuleDiff,
    StoredDelta,
    Term,
    check_compatible,
    check_same_tensors,
    exclusion_patterns,
    is_excluded,
)

ModelLike = Any  # a folder / Hub id / bundled alias, a Checkpoint, a torch.nn.Module or a LoadedModel


class BiasVector:
    """A weight-space bias vector: a lazy linear combination ``sum_i c_i * term_i`` of tensor deltas."""

    def __init__(self, terms: Sequence[tuple[float, Term]], meta: VectorMeta | None = None) -> None:
        self.terms = [(float(c), t) for c, t in terms]
        self.meta = meta or VectorMeta()
        self.infos: dict[str, TensorInfo] = {}
        for _, term in self.terms:
            for name, info in term.infos.items():
                known = self.infos.setdefault(name, info)
                if known.shape != info.shape:
                    raise DebiasError(
                        f"tensor {name} has shape {list(known.shape)} in one vector but {list(info.shape)} in another",
                        "combine vectors made from the same base model",
                    )

    # ---- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_models(
        cls,
        pre: ModelLike,
        biased: ModelLike,
        *,
        axis: str | None = None,
        exclude: str | Iterable[str] | None = DEFAULT_EXCLUDE,
        allow_pickle: bool = False,
    ) -> BiasVector:
        """``V = biased - pre``, from two folders / Hub ids / ``bundled:`` aliases (read lazily from disk) or two
        in-memory models (the vector then references their parameters: modifying them changes it)."""
        patterns = exclusion_patterns(exclude)
        pre, biased = (getattr(m, "model", m) if type(m).__name__ == "LoadedModel" else m for m in (pre, biased))
        if isinstance(pre, torch.nn.Module) and isinstance(biased, torch.nn.Module):
            return cls._from_modules(pre, biased, axis, patterns)
        if isinstance(pre, torch.nn.Module) or isinstance(biased, torch.nn.Module):
            raise DebiasError("one model is loaded and the other is a path", "pass both as paths or both as models")
        pre_ckpt = open_checkpoint(pre, allow_pickle)
        biased_ckpt = open_checkpoint(biased, allow_pickle)
        pre_label, biased_label = f"the base {pre}", f"the biased model {biased}"
        check_compatible(pre_ckpt.config, biased_ckpt.config, pre_label, biased_label)
        check_same_tensors(pre_ckpt.tensors, biased_ckpt.tensors, pre_label, biased_label)
        tied = tied_aliases(pre_ckpt.config, list(pre_ckpt.tensors))
        floats = [n for n, info in pre_ckpt.tensors.items() if info.is_float and n not in tied]
        names = [n for n in floats if not is_excluded(n, patterns)]
        meta = VectorMeta(
            base_info(pre, pre_ckpt.folder, pre_ckpt.config, None, "safetensors"),
            axis,
            patterns,
            [n for n in floats if n not in names],
            {a: s for a, s in tied.items() if s in names},
        )
        return cls([(1.0, CheckpointDiff(pre_ckpt, biased_ckpt, names, str(pre), str(biased)))], meta)

    @classmethod
    def _from_modules(cls, pre: torch.nn.Module, biased: torch.nn.Module, axis, patterns) -> BiasVector:
        configs = [getattr(getattr(m, "config", None), "to_dict", dict)() for m in (pre, biased)]
        check_compatible(configs[0], configs[1], "the base model", "the biased model")
        pre_params, biased_params = dict(pre.named_parameters()), dict(biased.named_parameters())
        infos = [ModuleDiff(p, p, "", "").infos for p in (pre_params, biased_params)]
        check_same_tensors(infos[0], infos[1], "the base model", "the biased model")
        floats = [n for n, info in infos[0].items() if info.is_float]
        names = [n for n in floats if not is_excluded(n, patterns)]
        term = ModuleDiff(
            {n: pre_params[n] for n in names}, {n: biased_params[n] for n in names}, "base model", "biased model"
        )
        base = base_info(getattr(pre, "name_or_path", "model"), "", configs[0], weights_fingerprint(pre), "state_dict")
        return cls([(1.0, term)], VectorMeta(base, axis, patterns, [n for n in floats if n not in names]))

    @classmethod
    def from_adapter(
        cls,
        adapter: str | os.PathLike,
        *,
        axis: str | None = None,
        exclude: str | Iterable[str] | None = DEFAULT_EXCLUDE,
        allow_pickle: bool = False,
    ) -> BiasVector:
        """The delta ``scaling * B @ A`` of a LoRA adapter trained to be biased (folder or Hub id)."""
        folder = resolve_folder(adapter, patterns=["*.json", "*.safetensors", "README.md"])
        term = LoraDelta(folder, exclusion_patterns(exclude), allow_pickle)
        sidecar = read_json(folder / "debias_config.json") or {}
        base = sidecar.get("base_model") or {}
        name = base.get("name") or term.config.get("base_model_name_or_path") or "unknown"
        info = base_info(name, base.get("path", ""), base, base.get("weights_fingerprint"), "state_dict", base)
        info["model_type"] = base.get("model_type")
        meta = VectorMeta(info, axis or sidecar.get("axis"), exclusion_patterns(exclude), term.excluded)
        return cls([(1.0, term)], meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BiasVector:
        """Load a saved vector folder (``bias_vector.json`` + ``vector*.safetensors``)."""
        folder = Path(path)
        data = read_json(folder / VECTOR_JSON)
        if data is None:
            fix = "pass a folder written by BiasVector.save or peft-debias"
            raise DebiasError(f"{folder} has no {VECTOR_JSON}", fix)
        if int(data.get("format_version", 0)) > FORMAT_VERSION:
            raise DebiasError(f"{folder} has a newer format ({data.get('format_version')})", "upgrade peft-debias")
        ckpt = Checkpoint.open(folder, prefix="vector")
        fields = {k: data[k] for k in ("base", "axis", "exclude", "excluded_tensors", "tied") if k in data}
        return cls([(1.0, StoredDelta(ckpt, data.get("sources")))], VectorMeta(**fields))

    @classmethod
    def from_pretrained(cls, path_or_repo: str | os.PathLike, revision: str | None = None) -> BiasVector:
        """Load a saved vector from a local folder or a Hub repo id at ``revision`` (downloaded into the Hub cache;
        with ``HF_HUB_OFFLINE=1`` read from the cache only)."""
        patterns = [VECTOR_JSON, "vector*.safetensors", "vector.safetensors.index.json", "README.md"]
        folder = resolve_folder(path_or_repo, patterns=patterns, revision=revision)
        if not (folder / VECTOR_JSON).is_file() and not Path(path_or_repo).expanduser().is_dir():
            where = f"{path_or_repo}@{revision}" if revision else str(path_or_repo)
            raise DebiasError(
                f"the Hub repo {where} holds no {VECTOR_JSON}",
                "check the repo id and revision (the branch the vector was published to)",
            )
        return cls.load(folder)

    # ---- reading ------------------------------------------------------------------------------------------
    def keys(self) -> list[str]:
        return list(self.infos)

    def __contains__(self, name: object) -> bool:
        return name in self.infos

    def __iter__(self) -> Iterator[str]:
        return iter(self.infos)

    def __len__(self) -> int:
        return len(self.infos)

    @property
    def num_params(self) -> int:
        return sum(info.numel for info in self.infos.values())

    def rows(self, name: str, start: int, stop: int, scale: float = 1.0) -> torch.Tensor:
        """Rows ``start:stop`` of ``scale * V[name]`` in float32: ``sum_i (scale * c_i) * delta_i``, coefficients
        folded in double precision first, so one rounding per term (a single vector is bit-exact)."""
        out = None
        for coef, term in self.terms:
            if name not in term.infos:
                continue
            block = term.rows(name, start, stop)
            factor = scale * coef
            if factor != 1.0:
                block.mul_(factor)
            out = block if out is None else out.add_(block)
        if out is None:
            raise KeyError(name)
        return out

    def tensor(self, name: str, scale: float = 1.0) -> torch.Tensor:
        """The whole float32 tensor ``scale * V[name]``."""
        return self.rows(name, 0, self.infos[name].rows, scale)

    def blocks(self, name: str, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[tuple[int, int]]:
        return row_blocks(self.infos[name].shape, 4, chunk_bytes)

    def dot(self, other: BiasVector) -> float:
        """The inner product over all tensors (float64 accumulation)."""
        total = 0.0
        for name in self.keys():
            if name in other:
                for start, stop in self.blocks(name):
                    a, b = self.rows(name, start, stop), other.rows(name, start, stop)
                    total += float(torch.dot(a.reshape(-1).double(), b.reshape(-1).double()))
        return total

    def norm(self) -> float:
        return math.sqrt(max(self.dot(self), 0.0))

    def materialize(self) -> BiasVector:
        """A copy holding every tensor in memory (detaches it from the models or files it was read from)."""
        dense = DenseDelta({name: self.tensor(name) for name in self.keys()}, label="materialized")
        return BiasVector([(1.0, dense)], copy.deepcopy(self.meta))

    # ---- arithmetic ---------------------------------------------------------------------------------------
    def _scaled(self, factor: Any) -> BiasVector:
        factor = check_scalar(factor, "scale")
        return BiasVector([(c * factor, t) for c, t in self.terms], copy.deepcopy(self.meta))

    def __neg__(self) -> BiasVector:
        return self._scaled(-1.0)

    def __mul__(self, factor: Any) -> BiasVector:
        if not isinstance(factor, numbers.Real):
            return NotImplemented
        return self._scaled(factor)

    __rmul__ = __mul__

    def __truediv__(self, divisor: Any) -> BiasVector:
        if not isinstance(divisor, numbers.Real):
            return NotImplemented
        if check_scalar(divisor, "divisor") == 0:
            raise DebiasError("division of a bias vector by zero", "divide by a non-zero number")
        return self._scaled(1.0 / float(divisor))

    def __add__(self, other: Any) -> BiasVector:
        if isinstance(other, numbers.Real) and not isinstance(other, bool) and other == 0:
            return self  # so that sum(vectors) works
        if not isinstance(other, BiasVector):
            return NotImplemented
        _check_same_base(self.meta.base, other.meta.base)
        meta = copy.deepcopy(self.meta)
        axes = [a for a in (self.meta.axis, other.meta.axis) if a]
        meta.axis = "+".join(dict.fromkeys("+".join(axes).split("+"))) if axes else None
        meta.exclude = list(dict.fromkeys(self.meta.exclude + other.meta.exclude))
        meta.excluded_tensors = sorted(set(self.meta.excluded_tensors) | set(other.meta.excluded_tensors))
        meta.tied = {**other.meta.tied, **self.meta.tied}
        return BiasVector(self.terms + other.terms, meta)

    __radd__ = __add__

    def __sub__(self, other: Any) -> BiasVector:
        if not isinstance(other, BiasVector):
            return NotImplemented
        return self + (-other)

    def __repr__(self) -> str:
        parts = " + ".join(f"{c:g}*{t.describe()['type']}" for c, t in self.terms)
        return f"BiasVector(axis={self.meta.axis!r}, tensors={len(self)}, params={self.num_params}, terms={parts})"

    # ---- output -------------------------------------------------------------------------------------------
    def apply_to(
        self,
        pre: ModelLike,
        scale: float = 1.0,
        *,
        output: str | os.PathLike | None = None,
        shard_size: str | int = "2GB",
        overwrite: bool = False,
        allow_pickle: bool = False,
        progress: bool = True,
        info: dict[str, Any] | None = None,
        base_model_id: str | None = None,
    ) -> Any:
        """``theta = theta_pre + scale * V``: debias with ``scale=-lam``.

        An in-memory model (``torch.nn.Module`` / LoadedModel) is changed in place and returned. A model on disk
        (folder, Hub id, ``bundled:`` alias) is streamed into ``output``, a complete model folder, atomically;
        the :class:`~peft_debias.vector.apply.MergeResult` is returned; its ``debias_config.json`` records the
        base by ``base_model_id`` (default: from ``pre``, see :func:`~peft_debias.models.base_ids.resolve_base_id`).
        """
        scale = check_scalar(scale, "scale")
        model = getattr(pre, "model", pre) if type(pre).__name__ == "LoadedModel" else pre
        if isinstance(model, torch.nn.Module):
            if output is not None:
                raise DebiasError("output= is only for models on disk", "save the model yourself, or pass a folder")
            return apply_to_module(self, model, scale)
        if output is None:
            raise DebiasError("applying to a model on disk needs an output folder", "pass output=DIR")
        return merge_into_folder(
            self,
            pre,
            output,
            scale,
            shard_size=shard_size,
            overwrite=overwrite,
            allow_pickle=allow_pickle,
            progress=progress,
            info=info,
            base_model_id=base_model_id,
        )

    def save(
        self, path: str | os.PathLike, *, overwrite: bool = False, shard_size: str | int = "2GB", progress: bool = True
    ) -> Path:
        """Write the vector folder: ``vector.safetensors`` (sharded past ``shard_size``), ``bias_vector.json``, and
        a model card; atomically. The saved tensors are the vector's current value (coefficients applied)."""
        return save_vector(self, Path(path), overwrite=overwrite, shard_size=shard_size, progress=progress)

    save_pretrained = save

    def to_adapter(self, output: str | os.PathLike, scale: float, *, overwrite: bool = False) -> Path:
        """Write a PEFT LoRA adapter whose update is ``scale * V`` (``scale=-lam`` debiases), for a vector made by
        :meth:`from_adapter`: B is scaled, A kept (never both)."""
        return write_adapter(self, Path(output), check_scalar(scale, "scale"), overwrite=overwrite)
