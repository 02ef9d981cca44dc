"""Combining bias vectors of several axes (gender, race, religion, ...) before subtracting them.

* ``sum``: ``sum_i w_i V_i`` (task arithmetic).
* ``projection``: Gram-Schmidt in the given order, ``U_1 = V_1``, ``U_k = V_k - sum_{j<k} <V_k, U_j> / <U_j, U_j> U_j``,
  combined ``sum_k w_k U_k``. Directions the vectors share are counted once instead of once per axis, the Bias
  Vector paper's open question on over-debiasing when axes overlap. The inner products come from one streaming
  pass, and the result is again a lazy linear combination of the inputs (no tensor is held).
* ``ties`` / ``dare_linear`` / ``dare_ties``: per tensor with peft's merge utilities (magnitude or random pruning,
  sign election, disjoint mean). DARE is seeded per tensor, so a tensor read twice is the same.

All of these combine the *biased* directions with positive weights; the result is negated once when applied
(``apply_to(..., scale=-lam)``). Passing negative weights to TIES/DARE instead would elect signs on the negated
deltas, the cross-term and wrong-sign problem of peft's ``add_weighted_adapter`` (DESIGN.md section 3).
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import torch

from peft_debias.core.errors import DebiasError
from peft_debias.vector.bias_vector import BiasVector
from peft_debias.vector.meta import check_scalar
from peft_debias.vector.stream import TensorInfo, row_blocks
from peft_debias.vector.terms import Term

logger = logging.getLogger(__name__)

COMBINE_METHODS = ("sum", "projection", "ties", "dare_linear", "dare_ties")


def gram_matrix(vectors: Sequence[BiasVector]) -> torch.Tensor:
    """``G[i, j] = <V_i, V_j>`` over all tensors, float64, in one streaming pass over the tensors."""
    k = len(vectors)
    gram = torch.zeros(k, k, dtype=torch.float64)
    names = list(dict.fromkeys(n for v in vectors for n in v))
    for name in names:
        holders = [i for i, v in enumerate(vectors) if name in v]
        info = next(vectors[i].infos[name] for i in holders)
        for start, stop in row_blocks(info.shape, 4 * len(holders)):
            flat = torch.stack([vectors[i].rows(name, start, stop).reshape(-1).double() for i in holders])
            block = flat @ flat.T
            for a, i in enumerate(holders):
                for b, j in enumerate(holders):
                    gram[i, j] += block[a, b]
    return gram


def projection_coefficients(gram: torch.Tensor, tol: float = 1e-10) -> tuple[torch.Tensor, list[int]]:
    """Rows of ``C`` with ``U_k = sum_m C[k, m] V_m`` (Gram-Schmidt from the Gram matrix alone) and the indices of
    vectors dropped because they lie in the span of the earlier ones."""
    k = gram.shape[0]
    coef = torch.zeros(k, k, dtype=torch.float64)
    dropped = []
    for i in range(k):
        row = torch.zeros(k, dtype=torch.float64)
        row[i] = 1.0
        for j in range(i):
            u_norm = coef[j] @ gram @ coef[j]
            if u_norm <= 0:
                continue
            row -= (gram[i] @ coef[j]) / u_norm * coef[j]
        if row @ gram @ row <= tol * max(float(gram[i, i]), 1e-30):
            dropped.append(i)
            row.zero_()
        coef[i] = row
    return coef, dropped


class MergedDelta(Term):
    """A TIES / DARE merge of several vectors, computed per tensor with ``peft.utils.merge_utils``."""

    def __init__(
        self,
        vectors: Sequence[BiasVector],
        weights: Sequence[float],
        method: str,
        density: float,
        majority_sign: str,
        seed: int,
    ) -> None:
        self.vectors, self.weights = list(vectors), [float(w) for w in weights]
        self.method, self.density, self.majority_sign, self.seed = method, density, majority_sign, seed
        self.infos: dict[str, TensorInfo] = {}
        for v in self.vectors:
            for name, info in v.infos.items():
                self.infos.setdefault(name, TensorInfo(name, "F32", info.shape))
        self._cache: tuple[str, torch.Tensor] | None = None

    def _full(self, name: str) -> torch.Tensor:
        if self._cache is not None and self._cache[0] == name:
            return self._cache[1]
        from peft.utils import merge_utils

        shape = self.infos[name].shape
        tensors = [v.tensor(name) if name in v else torch.zeros(shape) for v in self.vectors]
        weights = torch.tensor(self.weights, dtype=torch.float32)
        seed = int.from_bytes(hashlib.sha256(f"{self.seed}:{name}".encode()).digest()[:7], "big")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self.method == "ties":
                merged = merge_utils.ties(tensors, weights, self.density, self.majority_sign)
            elif self.method == "dare_linear":
                merged = merge_utils.dare_linear(tensors, weights, self.density)
            else:
                merged = merge_utils.dare_ties(tensors, weights, self.density, self.majority_sign)
        self._cache = (name, merged)
        return merged

    def rows(self, name: str, start: int, stop: int) -> torch.Tensor:
        full = self._full(name)
        return (full[start:stop] if full.dim() else full).clone()

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.method,
            "density": self.density,
            "majority_sign": self.majority_sign,
            "seed": self.seed,
            "weights": self.weights,
            "axes": [v.meta.axis for v in self.vectors],
        }


def combine(
    vectors: Sequence[BiasVector],
    method: str = "sum",
    *,
    weights: Sequence[float] | None = None,
    density: float = 0.5,
    majority_sign: str = "total",
    seed: int = 0,
) -> BiasVector:
    """Combine bias vectors (see the module docstring); the result is applied like any vector."""
    vectors = list(vectors)
    if not vectors:
        raise DebiasError("no bias vectors to combine", "pass at least one vector")
    if method not in COMBINE_METHODS:
        raise DebiasError(f"unknown combination {method!r}", f"use one of {', '.join(COMBINE_METHODS)}")
    weights = [check_scalar(w, "weight") for w in (weights or [1.0] * len(vectors))]
    if len(weights) != len(vectors):
        raise DebiasError(f"{len(weights)} weights for {len(vectors)} vectors", "give one weight per vector")
    if not 0.0 < density <= 1.0:
        raise DebiasError(f"density {density} is outside (0, 1]", "pass e.g. 0.5")
    if majority_sign not in ("total", "frequency"):
        raise DebiasError(f"unknown sign election {majority_sign!r}", "use total or frequency")
    total = sum((w * v for w, v in zip(weights, vectors, strict=True)), start=0)
    if method == "sum" or len(vectors) == 1:
        return total
    meta = copy.deepcopy(total.meta)
    if method == "projection":
        scaled = [w * v for w, v in zip(weights, vectors, strict=True)]
        coef, dropped = projection_coefficients(gram_matrix(scaled))
        for i in dropped:
            logger.warning("vector %d (%s) lies in the span of the earlier ones", i, vectors[i].meta.axis)
        per_vector = coef.sum(dim=0).tolist()  # sum_k U_k = sum_m (sum_k C[k, m]) V_m
        terms = [(c * float(m), t) for m, v in zip(per_vector, scaled, strict=True) for c, t in v.terms]
        return BiasVector(terms, meta)
    term = MergedDelta(vectors, weights, method, density, majority_sign, seed)
    return BiasVector([(1.0, term)], meta)
