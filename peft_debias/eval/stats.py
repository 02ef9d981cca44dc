"""Statistics of the bias benchmarks: SEAT effect size and permutation test, bootstrap intervals, McNemar.

Everything is vectorised numpy in float64 and seeded; nothing here touches a model.

* SEAT (May et al. 2019, the sent-bias ``weat.py`` definitions that bias-bench reuses):
  ``s(w, A, B) = mean_a cos(w, a) - mean_b cos(w, b)``;
  ``effect size = (mean_{x in X} s(x) - mean_{y in Y} s(y)) / std_{w in X u Y} s(w)`` with ``ddof=1``;
  one-sided p-value of a permutation test over equal partitions ``(X', Y')`` of ``X u Y`` on the statistic
  ``sum_{x in X'} s(x)``: exact enumeration when ``C(2n, n) <= n_samples``, else ``n_samples - 1`` random
  partitions plus the observed one (the "+1" correction), ties counted as exceeding in both cases.
* Bootstrap: 95% percentile intervals over items (resampled with replacement), vectorised.
* McNemar: exact two-sided binomial test on the discordant pairs of two runs' per-item decisions.
"""

from __future__ import annotations

import itertools
import math
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

# Two partition statistics closer than this (relative to sum |s|) are a tie: float64 summation order differs
# between the vectorised and the observed sums, so an exact `==` would count true ties at random.
TIE_RTOL = 1e-10
_CHUNK_CELLS = 1 << 21  # random keys per chunk of the sampled permutation test (uint16: 4 MiB)


def rng_for(seed: int, *names: str) -> np.random.Generator:
    """A generator seeded by ``seed`` and names (e.g. the test file), so a result does not depend on run order."""
    return np.random.default_rng([int(seed), *(zlib.crc32(n.encode("utf-8")) for n in names)])


def unit_rows(u: np.ndarray, *, atol: float = 1e-12) -> np.ndarray:
    """``u`` as float64 with L2-normalised rows; returned as it is when every row is unit already (within ``atol``).

    Zero rows stay zero (their cosine with anything is 0, as in :func:`cosine_matrix`).
    """
    u = np.asarray(u, dtype=np.float64)
    norms = np.sqrt(np.einsum("ij,ij->i", u, u))[:, None] if u.size else np.ones((len(u), 1))
    if np.all((np.abs(norms - 1.0) <= atol) | (norms == 0.0)):
        return u
    return u / np.where(norms == 0, 1.0, norms)


def cosine_matrix(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Cosine similarity of every row of ``u`` with every row of ``v`` (float64)."""
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    un = np.linalg.norm(u, axis=1, keepdims=True)
    vn = np.linalg.norm(v, axis=1, keepdims=True)
    return (u / np.where(un == 0, 1.0, un)) @ (v / np.where(vn == 0, 1.0, vn)).T


def association(w: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``s(w, A, B)`` for every row ``w``: mean cosine with ``A`` minus mean cosine with ``B``."""
    return cosine_matrix(w, a).mean(axis=1) - cosine_matrix(w, b).mean(axis=1)


def unit_association(w: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """:func:`association` for rows that are unit vectors already: one cosine table ``w @ [A; B].T``, no norms."""
    table = w @ np.concatenate([a, b]).T
    return table[:, : len(a)].mean(axis=1) - table[:, len(a) :].mean(axis=1)


def effect_size_from_associations(s_x: np.ndarray, s_y: np.ndarray) -> float:
    """``(mean s(X) - mean s(Y)) / std(s(X u Y), ddof=1)``; NaN when the spread is zero."""
    s_all = np.concatenate([s_x, s_y])
    std = float(np.std(s_all, ddof=1)) if s_all.size > 1 else 0.0
    if std == 0.0 or not math.isfinite(std):
        return float("nan")
    return float((np.mean(s_x) - np.mean(s_y)) / std)


@dataclass(frozen=True)
class PermutationResult:
    """A permutation test: the one-sided p-value, whether it was exact, and how many partitions it used."""

    p_value: float
    exact: bool
    n_partitions: int


def _combination_chunks(total: int, k: int, chunk: int) -> Iterator[np.ndarray]:
    """All ``k``-subsets of ``range(total)`` in lexicographic order (the first is ``0..k-1``), in blocks."""
    it = itertools.combinations(range(total), k)
    while block := list(itertools.islice(it, chunk)):
        yield np.array(block, dtype=np.int64)


def permutation_p_value(
    s: np.ndarray, n: int, n_samples: int, rng: np.random.Generator | np.random.RandomState
) -> PermutationResult:
    """One-sided permutation p-value of ``sum(s[:n])`` among equal partitions of ``s`` (``len(s) == 2n``).

    Exact when ``C(2n, n) <= n_samples``: the fraction of all ``n``-subsets whose sum is at least the observed
    one. Otherwise sampled like sent-bias: the observed partition counts once as exceeding, then
    ``n_samples - 1`` uniformly random ``n``-subsets are drawn (the ``n`` smallest of random 16-bit keys, 32-bit
    above 4096 values; a row whose ``n``-th and ``(n+1)``-th keys tie, about 1 in 1000, is redrawn, which keeps
    the draw exactly uniform since the keys are exchangeable) and ``p = (1 + #{sum >= observed}) / n_samples``.
    Ties (within :data:`TIE_RTOL`) count as exceeding. A legacy ``numpy.random.RandomState`` as ``rng`` samples
    as sent-bias does instead, shuffle for shuffle (:func:`_sampled_like_sent_bias`).
    """
    s = np.asarray(s, dtype=np.float64)
    if s.ndim != 1 or s.size != 2 * n or n < 1:
        raise ValueError(f"permutation test needs 2n values, got {s.size} for n={n}")
    if n_samples < 1:
        raise ValueError("n_samples must be at least 1")
    tol = TIE_RTOL * max(float(np.abs(s).sum()), 1e-300)
    n_partitions = math.comb(2 * n, n)
    if n_partitions <= n_samples:
        observed, hits = None, 0
        for block in _combination_chunks(2 * n, n, max(1, _CHUNK_CELLS // n)):
            sums = s[block].sum(axis=1)
            if observed is None:
                observed = float(sums[0])  # the first combination is X itself, summed the same way
            hits += int((sums >= observed - tol).sum())
        return PermutationResult(hits / n_partitions, True, n_partitions)
    if isinstance(rng, np.random.RandomState):
        return _sampled_like_sent_bias(s, n, n_samples, rng)
    observed = float(s[:n].sum())
    draws = n_samples - 1
    hits = 1  # the observed partition, as in sent-bias ("hallucinate a positive observation")
    rows = max(1, _CHUNK_CELLS // (2 * n))
    dtype = np.uint16 if 2 * n <= 4096 else np.uint32  # keep boundary ties (redraws) rare
    done = 0
    while done < draws:
        m = min(rows, draws - done)
        keys = rng.integers(0, np.iinfo(dtype).max, size=(m, 2 * n), dtype=dtype, endpoint=True)
        kth = np.partition(keys, n - 1, axis=1)[:, n - 1 : n]
        chosen = keys <= kth
        ok = np.count_nonzero(chosen, axis=1) == n  # a tie at the boundary selects more than n: row redrawn
        stats = np.einsum("ij,j->i", chosen, s)
        hits += int(np.count_nonzero(stats[ok] >= observed - tol))
        done += int(np.count_nonzero(ok))
    return PermutationResult(hits / n_samples, False, n_samples)


def _sampled_like_sent_bias(s: np.ndarray, n: int, n_samples: int, state: np.random.RandomState) -> PermutationResult:
    """sent-bias's sampled test draw for draw (bias-bench ``weat.p_val_permutation_test``): the index array
    ``0..2n-1`` is shuffled in place ``n_samples - 1`` times with the legacy ``state`` (so the stream continues
    across tests), each time summing ``s`` over its first ``n`` entries; the observed partition counts once, and
    sums at least the observed one (exactly: ``>`` or ``==``) count as exceeding."""
    observed = s[np.arange(n)].sum()
    order = np.arange(2 * n)
    draws = np.empty((max(n_samples - 1, 0), n), dtype=np.int64)
    for row in draws:  # the shuffles are sequential by nature: only the sums are vectorised
        state.shuffle(order)
        row[:] = order[:n]
    sums = s[draws].sum(axis=1) if len(draws) else np.zeros(0)
    return PermutationResult((1 + int(np.count_nonzero(sums >= observed))) / n_samples, False, n_samples)


@dataclass(frozen=True)
class SeatStatistics:
    """One SEAT test's figures: effect size, association gap ``mean s(X) - mean s(Y)`` and the permutation test."""

    effect_size: float
    association_gap: float
    permutation: PermutationResult


def seat_test_statistics(
    x: np.ndarray,
    y: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    *,
    n_samples: int,
    rng: np.random.Generator | np.random.RandomState,
    unit: bool = False,
) -> SeatStatistics:
    """Effect size, association gap and permutation p-value of one SEAT test from the four sets' embeddings.

    The ``s`` values come from one cosine table of ``X u Y`` against ``A u B``; the gap is the effect size's
    numerator. ``unit=True`` promises L2-normalised rows (as :func:`~peft_debias.eval.lm_scoring.mean_pooled_embeddings`
    returns; :func:`unit_rows` makes any rows so): no norm is computed. Otherwise the rows are normalised here.
    """
    if len(x) != len(y):
        raise ValueError(f"the permutation test needs equal target sets, got {len(x)} and {len(y)}")
    targets = np.concatenate([x, y])
    if unit:
        s = unit_association(np.asarray(targets, dtype=np.float64), a, b)
    else:
        s = unit_association(unit_rows(targets), unit_rows(a), unit_rows(b))
    s_x, s_y = s[: len(x)], s[len(x) :]
    return SeatStatistics(
        effect_size_from_associations(s_x, s_y),
        float(np.mean(s_x) - np.mean(s_y)),
        permutation_p_value(s, len(x), n_samples, rng),
    )


def percentile_interval(samples: np.ndarray, level: float = 0.95) -> list[float]:
    """The ``level`` percentile interval of bootstrap ``samples`` (NaNs ignored) as ``[low, high]``."""
    samples = np.asarray(samples, dtype=np.float64)
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return [float("nan"), float("nan")]
    tail = 100.0 * (1.0 - level) / 2.0
    low, high = np.percentile(samples, [tail, 100.0 - tail])
    return [float(low), float(high)]


def bootstrap_counts(n_items: int, n_boot: int, rng: np.random.Generator) -> Iterator[np.ndarray]:
    """Blocks of bootstrap count matrices: row ``r`` says how often each item was drawn in resample ``r``."""
    rows = max(1, min(n_boot, _CHUNK_CELLS // max(n_items, 1)))
    done = 0
    while done < n_boot:
        m = min(rows, n_boot - done)
        idx = rng.integers(0, n_items, size=(m, n_items)) + (np.arange(m) * n_items)[:, None]
        yield np.bincount(idx.ravel(), minlength=m * n_items).reshape(m, n_items).astype(np.float64)
        done += m


def bootstrap_proportion(decisions: Sequence[int] | np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap replicates of ``100 * mean(decisions)`` (items resampled with replacement)."""
    d = np.asarray(decisions, dtype=np.float64)
    if d.size == 0 or n_boot < 1:
        return np.empty(0)
    return np.concatenate([100.0 * (c @ d) / d.size for c in bootstrap_counts(d.size, n_boot, rng)])


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts ``b`` (yes->no) and ``c`` (no->yes).

    Under the null each discordant item flips either way with probability 1/2:
    ``p = min(1, 2 * P(Binomial(b + c, 1/2) <= min(b, c)))``; 1 when there is no discordant item.
    """
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1))
    return float(min(Fraction(1), Fraction(2 * tail, 2**n)))
