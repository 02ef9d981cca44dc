"""Statistics over seeds and items for the experiment harness: summaries, intervals and paired tests.

Everything here is plain numpy / math (no scipy) and deterministic.

* **Summary over seeds**: mean and sample standard deviation (``ddof=1``) of one figure over the seeds of a
  configuration, with a **95% Student t-interval over seeds**: ``mean +/- t_{0.975, n-1} * sd / sqrt(n)``. The
  interval describes training noise (seed to seed); the item sampling of the benchmark is tested separately by
  McNemar (below). With one seed the sd, interval and seed-level p-values are undefined (NaN).
* **Effect beyond the control**: per seed ``d_s = bias(control_s) - bias(treatment_s)``, the treatment trained
  identically on the same sentences with the counterfactual swaps and the control without them, same seed, same
  step. ``bias`` is the distance to the ideal (``|score - 50|`` for CrowS-Pairs and StereoSet SS; the mean
  ``|effect size|`` for SEAT), so ``d > 0`` means the treatment is less biased than its control.
* **Paired tests**, both two-sided:

  - seed level: the paired t-test on ``d_s`` (``t = mean / (sd / sqrt(n))``, ``n - 1`` degrees of freedom), and,
    for reference, the exact sign-flip permutation test over the ``2^n`` sign patterns of ``d_s`` (its smallest
    possible p-value is ``2 / 2^n``: 0.25 with 3 seeds, so it cannot reach 0.05 below 6 seeds);
  - item level: an exact McNemar test on the per-item decisions pooled over seeds (each item x seed pair,
    treatment vs its own control: ``b`` items flipped one way, ``c`` the other;
    ``p = min(1, 2 P(Bin(b + c, 1/2) <= min(b, c)))``).

  The seed-level test accounts for training noise but not for the finite benchmark; the item-level test the
  reverse. The **combined paired p** is the larger of the paired-t and McNemar p-values: an intersection-union
  test (the effect is claimed only when both reject), which is valid at level alpha without any correction.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from peft_debias.eval.stats import mcnemar_exact

_NAN = float("nan")


def _finite(values: Iterable[float | None]) -> np.ndarray:
    arr = np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)
    return arr[np.isfinite(arr)]


@dataclass(frozen=True)
class Summary:
    """Mean, sample sd (ddof 1), the 95% t-interval over seeds, and how many finite values there were."""

    mean: float
    sd: float
    ci95: tuple[float, float]
    n: int

    def to_dict(self) -> dict[str, object]:
        return {"mean": self.mean, "sd": self.sd, "ci95": list(self.ci95), "n": self.n}


def mean_sd(values: Iterable[float | None]) -> tuple[float, float, int]:
    """Mean and sample standard deviation (``ddof=1``) of the finite values; NaN where undefined."""
    arr = _finite(values)
    if arr.size == 0:
        return _NAN, _NAN, 0
    sd = float(np.std(arr, ddof=1)) if arr.size > 1 else _NAN
    return float(np.mean(arr)), sd, int(arr.size)


def summarize(values: Iterable[float | None], level: float = 0.95) -> Summary:
    """:func:`mean_sd` plus the Student t-interval over the values (seeds)."""
    mean, sd, n = mean_sd(values)
    if n < 2 or not math.isfinite(sd):
        return Summary(mean, sd, (_NAN, _NAN), n)
    half = t_quantile(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n)
    return Summary(mean, sd, (mean - half, mean + half), n)


# ------------------------------------------------------------------------------------------ Student t


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        for num in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < eps:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)`` for ``a, b > 0`` and ``0 <= x <= 1``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t: float, df: float) -> float:
    """Two-sided p-value ``P(|T| >= |t|)`` of Student's t with ``df`` degrees of freedom."""
    if not math.isfinite(t):
        return 0.0 if math.isinf(t) else _NAN
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def t_cdf(t: float, df: float) -> float:
    """``P(T <= t)`` for Student's t with ``df`` degrees of freedom."""
    tail = 0.5 * t_two_sided_p(t, df)
    return 1.0 - tail if t >= 0 else tail


def t_quantile(q: float, df: float) -> float:
    """The ``q`` quantile of Student's t (bisection on :func:`t_cdf`, to about 1e-12)."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile level {q} outside (0, 1)")
    if q < 0.5:
        return -t_quantile(1.0 - q, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < q:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# ------------------------------------------------------------------------------------------ paired tests


def paired_t_test(diffs: Sequence[float | None]) -> float:
    """Two-sided p-value of the one-sample t-test of ``mean(diffs) == 0`` (NaN with fewer than 2 values).

    All differences equal and non-zero give p = 0 (no spread: an infinite t); all zero give p = 1.
    """
    d = _finite(diffs)
    if d.size < 2:
        return _NAN
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd == 0.0:
        return 1.0 if mean == 0.0 else 0.0
    return t_two_sided_p(mean / (sd / math.sqrt(d.size)), d.size - 1)


def sign_flip_p(diffs: Sequence[float | None], max_exact: int = 16, n_samples: int = 100_000, seed: int = 0) -> float:
    """Two-sided paired permutation (sign-flip) test of ``mean(diffs) == 0``.

    Exact over all ``2^n`` sign patterns when ``n <= max_exact``: ``p = #{|mean(s * d)| >= |mean(d)|} / 2^n``
    (ties within 1e-12 count as exceeding). Above that, ``n_samples`` random patterns with the +1 correction.
    """
    d = _finite(diffs)
    if d.size == 0:
        return _NAN
    observed = abs(float(d.mean())) - 1e-12 * max(1.0, float(np.abs(d).max()))
    if d.size <= max_exact:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
        return float(np.mean(np.abs(signs @ d) / d.size >= observed))
    rng = np.random.default_rng(seed)
    signs = rng.choice((1.0, -1.0), size=(n_samples - 1, d.size))
    return float((1 + np.count_nonzero(np.abs(signs @ d) / d.size >= observed)) / n_samples)


@dataclass(frozen=True)
class McNemar:
    """Pooled discordant counts: ``to_yes`` (treatment 1, control 0) and ``to_no`` (treatment 0, control 1)."""

    to_yes: int
    to_no: int
    n_pairs: int
    p_value: float

    def to_dict(self) -> dict[str, object]:
        return {"to_yes": self.to_yes, "to_no": self.to_no, "n_pairs": self.n_pairs, "p": self.p_value}


def pooled_mcnemar(
    pairs: Iterable[tuple[Mapping[str, int], Mapping[str, int]]], items: Iterable[str] | None = None
) -> McNemar:
    """Exact McNemar test on per-item 0/1 decisions pooled over seeds.

    ``pairs`` holds one ``(treatment decisions, control decisions)`` per seed, each ``{item id: 0/1}``; only items
    present in both (and in ``items``, when given, e.g. the report split) count.
    """
    keep = None if items is None else set(items)
    to_yes = to_no = n = 0
    for treated, control in pairs:
        for item in treated.keys() & control.keys():
            if keep is not None and item not in keep:
                continue
            n += 1
            a, b = int(treated[item]), int(control[item])
            to_yes += a and not b
            to_no += b and not a
    return McNemar(to_yes, to_no, n, mcnemar_exact(to_yes, to_no) if n else _NAN)


def combined_p(p_seed: float | None, p_item: float | None) -> float:
    """The intersection-union p-value: the larger of the available ones (NaN when neither is available)."""
    values = [p for p in (p_seed, p_item) if p is not None and math.isfinite(p)]
    return max(values) if values else _NAN


def bias_distance(metric: str, value: float | None) -> float:
    """Distance of a figure to its ideal: ``|x - 50|`` for stereotype scores (CrowS, StereoSet SS), the value
    itself for SEAT mean |effect size| and mean |association gap|; NaN for anything else (quality figures have no
    ideal)."""
    if value is None or not math.isfinite(value):
        return _NAN
    if metric.startswith("crows/") or metric.endswith("/ss"):
        return abs(value - 50.0)
    if metric.startswith("seat/"):
        return abs(value)
    return _NAN
