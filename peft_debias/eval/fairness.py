"""Downstream fairness metrics of PEFTDebias (DESIGN.md section 4), as plain functions.

* **TPR-GAP** (De-Arteaga et al. 2019, BiasBios; PEFTDebias code): for each class ``c`` the true-positive rate of
  each group, ``TPR_g(c) = #(pred = c, true = c, group = g) / #(true = c, group = g)``; the gap of a class is
  ``TPR_male(c) - TPR_female(c)`` and ``TPR-GAP = 100 x sqrt(mean over classes of gap^2)`` (root mean square). Classes
  with no example of one of the two groups have no gap and are left out.
* **FPRD** (false positive equality difference, Dixon et al. 2018; PEFTDebias code): with ``FPR`` the share of
  negative examples (true label != positive label) predicted positive, ``FPRD = sum over identity terms t of
  |FPR_t - FPR_overall|`` where ``FPR_t`` is measured on the examples that mention ``t``. Terms that occur in no
  negative example are left out. Not scaled by 100.

Inputs are any sequences (lists, numpy arrays, tensors moved to CPU); labels and groups are compared as given.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from peft_debias.core.errors import DebiasError

logger = logging.getLogger(__name__)


def _array(values: Iterable[Any], what: str) -> np.ndarray:
    if hasattr(values, "tolist"):  # numpy arrays and torch tensors -> plain Python values
        values = values.tolist()
    out = np.empty(len(values := list(values)), dtype=object)
    out[:] = values
    if any(isinstance(v, (list, tuple)) for v in values):
        raise DebiasError(f"{what} must be one-dimensional", "pass one value per example")
    return out


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise DebiasError(f"inputs differ in length ({lengths})", "pass one value per example in each")
    n = next(iter(lengths.values()))
    if n == 0:
        raise DebiasError("no examples to score", "pass at least one example")
    return n


def tpr_gaps(
    y_true: Sequence[Hashable],
    y_pred: Sequence[Hashable],
    groups: Sequence[Hashable],
    positive_groups: tuple[Hashable, Hashable] = ("male", "female"),
) -> dict[Hashable, float]:
    """Per class, ``TPR_a(c) - TPR_b(c)`` for ``positive_groups = (a, b)`` (classes lacking either group omitted)."""
    truth, pred, group = _array(y_true, "y_true"), _array(y_pred, "y_pred"), _array(groups, "groups")
    _same_length(y_true=truth, y_pred=pred, groups=group)
    first, second = positive_groups
    for name in positive_groups:
        if not (group == name).any():
            seen = ", ".join(sorted({str(g) for g in group})[:10])
            raise DebiasError(f"no example of group {name!r} (groups seen: {seen})", "pass matching positive_groups")
    gaps: dict[Hashable, float] = {}
    for label in sorted(set(truth.tolist()), key=str):
        rates = []
        for name in (first, second):
            rows = (truth == label) & (group == name)
            if rows.any():
                rates.append(float((pred[rows] == label).mean()))
        if len(rates) == 2:
            gaps[label] = rates[0] - rates[1]
        else:
            logger.debug("class %r lacks one of the groups %s: no TPR gap", label, positive_groups)
    if not gaps:
        raise DebiasError(f"no class has examples of both {first!r} and {second!r}", "check the group column")
    return gaps


def tpr_gap_rms(
    y_true: Sequence[Hashable],
    y_pred: Sequence[Hashable],
    groups: Sequence[Hashable],
    positive_groups: tuple[Hashable, Hashable] = ("male", "female"),
) -> float:
    """TPR-GAP: 100 x the root mean square over classes of ``TPR_male - TPR_female`` (see the module docstring).

    Example: classes 0 and 1, male TPRs 0.5 and 1.0, female TPRs 1.0 and 0.5 -> gaps -0.5, 0.5 -> 50.0.
    """
    gaps = list(tpr_gaps(y_true, y_pred, groups, positive_groups).values())
    return 100.0 * math.sqrt(sum(g * g for g in gaps) / len(gaps))


def term_masks(texts: Sequence[str], terms: Sequence[str]) -> dict[str, np.ndarray]:
    """For each term, which texts mention it: case-insensitive, whole words (``he`` does not match ``the``)."""
    masks = {}
    for term in terms:
        pattern = re.compile(r"(?<!\w)" + re.escape(term.strip()) + r"(?!\w)", re.IGNORECASE)
        masks[term] = np.array([bool(pattern.search(str(text))) for text in texts], dtype=bool)
    return masks


def false_positive_rate(y_true: Sequence[Hashable], y_pred: Sequence[Hashable], positive_label: Hashable = 1) -> float:
    """Share of negative examples (``y_true != positive_label``) predicted ``positive_label``; NaN without any."""
    truth, pred = _array(y_true, "y_true"), _array(y_pred, "y_pred")
    _same_length(y_true=truth, y_pred=pred)
    negative = truth != positive_label
    return float((pred[negative] == positive_label).mean()) if negative.any() else float("nan")


def _masks(texts_or_term_masks: Any, terms: Sequence[str] | None, n: int) -> dict[str, np.ndarray]:
    if isinstance(texts_or_term_masks, Mapping):
        masks = {t: np.asarray(m, dtype=bool) for t, m in texts_or_term_masks.items() if terms is None or t in terms}
    else:
        if terms is None:
            raise DebiasError("identity terms are missing", "pass terms=[...] with texts or a mask matrix")
        array = np.asarray(texts_or_term_masks)
        if array.ndim == 2:
            if array.shape[1] != len(terms):
                raise DebiasError(f"mask matrix has {array.shape[1]} columns for {len(terms)} terms", "match them")
            masks = {t: array[:, i].astype(bool) for i, t in enumerate(terms)}
        else:
            masks = term_masks([str(t) for t in texts_or_term_masks], terms)
    for term, mask in masks.items():
        if mask.shape != (n,):
            raise DebiasError(f"mask of term {term!r} has shape {mask.shape}, not ({n},)", "one flag per example")
    if not masks:
        raise DebiasError("no identity terms given", "pass terms=[...]")
    return masks


def fprd_per_term(
    y_true: Sequence[Hashable],
    y_pred: Sequence[Hashable],
    texts_or_term_masks: Sequence[str] | Mapping[str, Sequence[bool]] | np.ndarray,
    terms: Sequence[str] | None = None,
    positive_label: Hashable = 1,
) -> dict[str, float]:
    """Per identity term, ``FPR_term - FPR_overall`` (terms in no negative example omitted)."""
    truth, pred = _array(y_true, "y_true"), _array(y_pred, "y_pred")
    n = _same_length(y_true=truth, y_pred=pred)
    negative = truth != positive_label
    if not negative.any():
        raise DebiasError(f"no negative example (every label is {positive_label!r})", "check positive_label")
    overall = float((pred[negative] == positive_label).mean())
    out = {}
    for term, mask in _masks(texts_or_term_masks, terms, n).items():
        rows = mask & negative
        if rows.any():
            out[term] = float((pred[rows] == positive_label).mean()) - overall
    if not out:
        raise DebiasError("no identity term occurs in a negative example", "check the terms and the data")
    return out


def fprd(
    y_true: Sequence[Hashable],
    y_pred: Sequence[Hashable],
    texts_or_term_masks: Sequence[str] | Mapping[str, Sequence[bool]] | np.ndarray,
    terms: Sequence[str] | None = None,
    positive_label: Hashable = 1,
) -> float:
    """FPRD: the sum over identity terms of ``|FPR_term - FPR_overall|`` (see the module docstring).

    ``texts_or_term_masks`` is the texts (terms are matched as whole words, case-insensitively), a mapping
    term -> boolean mask, or a boolean matrix with one column per term.
    """
    return float(
        sum(abs(v) for v in fprd_per_term(y_true, y_pred, texts_or_term_masks, terms, positive_label).values())
    )


def accuracy(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> float:
    """Share of exact matches."""
    truth, pred = _array(y_true, "y_true"), _array(y_pred, "y_pred")
    _same_length(y_true=truth, y_pred=pred)
    return float((truth == pred).mean())


def macro_f1(y_true: Sequence[Hashable], y_pred: Sequence[Hashable]) -> float:
    """Unweighted mean over the classes in ``y_true`` or ``y_pred`` of F1 (0 for a class never predicted right)."""
    truth, pred = _array(y_true, "y_true"), _array(y_pred, "y_pred")
    _same_length(y_true=truth, y_pred=pred)
    scores = []
    for label in set(truth.tolist()) | set(pred.tolist()):
        tp = float(((pred == label) & (truth == label)).sum())
        fp = float(((pred == label) & (truth != label)).sum())
        fn = float(((pred != label) & (truth == label)).sum())
        scores.append(2 * tp / (2 * tp + fp + fn) if tp else 0.0)
    return float(sum(scores) / len(scores))
