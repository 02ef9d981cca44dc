"""Figures on the select / report halves of the benchmark items, computed from per-item results.

Hyper-parameters (checkpoint step, lambda, searched training values, the best configuration) are chosen on the
**select** half; the reported figures come from the disjoint **report** half, so the choice does not inflate
them. The halves are those of :mod:`peft_debias.eval.splits` (``peft-debias eval --split select|report`` scores
the same items): an item's half is a pure function of ``(split seed, benchmark, item id)`` via SHA-256, so it does
not depend on run order, on the model or on which other items are present. Ids are CrowS-Pairs row indices and
StereoSet item ids (see :mod:`peft_debias.eval`).

Figures per half are recomputed from the per-item data an evaluation already returned (no model is re-run):
CrowS-Pairs from the per-pair decisions, StereoSet SS / LMS / ICAT from the per-item ``target``, ``pro`` and
``related`` values (macro-averaged over target terms exactly as :mod:`peft_debias.eval.stereoset` does). SEAT
(a handful of fixed tests), perplexity and the paraphrase check have no items to split: only their figure on all
of the data exists (scope ``all``).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from peft_debias.eval.splits import split_of

SELECT, REPORT = "select", "report"
SCOPES = ("all", SELECT, REPORT)


def split_ids(
    ids: Iterable[str], *, benchmark: str, seed: int = 0, groups: Mapping[str, str] | None = None
) -> dict[str, list[str]]:
    """The ids of each half, in the given order: ``{"select": [...], "report": [...]}``. ``groups`` maps an id to
    its split key (StereoSet: the item's template group); ids without one are their own key."""
    out: dict[str, list[str]] = {SELECT: [], REPORT: []}
    for item in ids:
        key = (groups or {}).get(str(item), str(item))
        out[split_of(benchmark, key, seed)].append(str(item))
    return out


def item_groups(results: Mapping[str, Any], axis: str) -> dict[str, str]:
    """StereoSet id -> split group of one evaluation's items (empty when the results carry none)."""
    items = (((results.get("stereoset") or {}).get("items") or {}).get(axis)) or {}
    return {str(i): str(row["group"]) for i, row in items.items() if isinstance(row, Mapping) and "group" in row}


def fill_item_groups(results: Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """``results`` (run id -> cell result) where StereoSet items without a split group get the group that another
    result gives the same item id. Results written before items were grouped by template carry none, and would
    otherwise be split by item id, i.e. into other halves than the rest of the experiment. Ids name the same items in
    every cell of an experiment (one StereoSet file). The given results are not modified."""
    known: dict[str, dict[str, str]] = defaultdict(dict)
    for result in results.values():
        for point in result.get("points", []):
            for axis in _stereoset_items(point.get("eval") or {}):
                known[axis].update(item_groups(point["eval"], axis))

    def fill(axis: str, item: str, row: Mapping[str, Any]) -> Mapping[str, Any]:
        return row if "group" in row or item not in known[axis] else {**row, "group": known[axis][item]}

    out: dict[str, Mapping[str, Any]] = {}
    for run_id, result in results.items():
        points = []
        for point in result.get("points", []):
            evaluation = point.get("eval") or {}
            items = _stereoset_items(evaluation)
            filled = {axis: {i: fill(axis, i, row) for i, row in rows.items()} for axis, rows in items.items()}
            if filled != items:
                stereo = {**evaluation["stereoset"], "items": filled}
                point = {**point, "eval": {**evaluation, "stereoset": stereo}}
            points.append(point)
        out[run_id] = {**result, "points": points}
    return out


def _stereoset_items(results: Mapping[str, Any]) -> dict[str, dict[str, Mapping[str, Any]]]:
    items = ((results.get("stereoset") or {}).get("items")) or {}
    return {axis: {str(i): row for i, row in rows.items() if isinstance(row, Mapping)} for axis, rows in items.items()}


def crows_score(decisions: Mapping[str, int], ids: Iterable[str] | None = None) -> float:
    """Stereotype score (100 x fraction of pairs preferring ``sent_more``) over ``ids`` (default: all)."""
    values = [decisions[i] for i in (decisions if ids is None else ids) if i in decisions]
    return 100.0 * float(np.mean(values)) if values else float("nan")


def stereoset_scores(items: Mapping[str, Mapping[str, Any]], ids: Iterable[str] | None = None) -> dict[str, float]:
    """SS, LMS, ICAT over ``ids`` from per-item ``{"target", "pro", "related"}`` (macro over target terms)."""
    from peft_debias.eval.stereoset import macro_scores

    chosen = [items[i] for i in (items if ids is None else ids) if i in items]
    if not chosen:
        return {"ss": float("nan"), "lms": float("nan"), "icat": float("nan")}
    targets = list(dict.fromkeys(str(row["target"]) for row in chosen))
    index = np.array([targets.index(str(row["target"])) for row in chosen])
    pro = np.array([float(row["pro"]) for row in chosen])
    related = np.array([float(row["related"]) for row in chosen])
    ss, lms, icat = macro_scores(np.ones((1, len(chosen))), index, len(targets), pro, related)
    return {"ss": float(ss[0]), "lms": float(lms[0]), "icat": float(icat[0])}


def _num(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(float(value)) else float("nan")


def point_metrics(results: Mapping[str, Any], axes: Iterable[str], seed: int = 0) -> dict[str, Any]:
    """Flat figures of one evaluation: ``{metric: {"all": x[, "selection": y, "report": z]}}``.

    Metrics: ``crows/<axis>``, ``stereoset/<axis>/{ss,lms,icat}`` (all three scopes), ``seat/<axis>`` (mean
    |effect size|), ``seat/<axis>/gap`` (mean |association gap|), ``perplexity``,
    ``paraphrase/{cosine,unrelated,gap,accuracy}`` (scope ``all`` only).
    """
    out: dict[str, dict[str, float]] = {}
    crows = results.get("crows") or {}
    stereo = results.get("stereoset") or {}
    for axis in axes:
        decisions = (crows.get("decisions") or {}).get(axis)
        if decisions is not None:
            halves = split_ids(decisions, benchmark="crows", seed=seed)
            out[f"crows/{axis}"] = {
                "all": _num((crows.get("axes") or {}).get(axis, {}).get("stereotype_score")),
                **{scope: crows_score(decisions, ids) for scope, ids in halves.items()},
            }
        figures = (stereo.get("axes") or {}).get(axis)
        if figures is not None:
            items = (stereo.get("items") or {}).get(axis) or {}
            halves = split_ids(items, benchmark="stereoset", seed=seed, groups=item_groups(results, axis))
            parts = {scope: stereoset_scores(items, ids) for scope, ids in halves.items()}
            for key in ("ss", "lms", "icat"):
                row = {"all": _num(figures.get(key))}
                row.update({scope: parts[scope][key] for scope in halves})
                out[f"stereoset/{axis}/{key}"] = row
        seat = ((results.get("seat") or {}).get("axes") or {}).get(axis)
        if seat is not None:
            out[f"seat/{axis}"] = {"all": _num(seat.get("mean_abs_effect_size"))}
            out[f"seat/{axis}/gap"] = {"all": _num(seat.get("mean_abs_association_gap"))}
    ppl = results.get("perplexity")
    if isinstance(ppl, Mapping):
        out["perplexity"] = {"all": _num(ppl.get("perplexity"))}
    para = results.get("paraphrase")
    if isinstance(para, Mapping):
        for key in ("cosine", "unrelated", "gap", "accuracy"):
            out[f"paraphrase/{key}"] = {"all": _num(para.get(key))}
    return out


def point_decisions(results: Mapping[str, Any], axes: Iterable[str]) -> dict[str, dict[str, int]]:
    """Per-item 0/1 decisions for the paired item-level test: ``crows/<axis>`` (sent_more preferred) and
    ``stereoset/<axis>/ss`` (stereotype preferred), keyed by item id."""
    out: dict[str, dict[str, int]] = {}
    for axis in axes:
        crows = ((results.get("crows") or {}).get("decisions") or {}).get(axis)
        if crows is not None:
            out[f"crows/{axis}"] = {str(k): int(v) for k, v in crows.items()}
        stereo = ((results.get("stereoset") or {}).get("decisions") or {}).get(axis)
        if stereo is not None:
            out[f"stereoset/{axis}/ss"] = {str(k): int(v) for k, v in stereo.items()}
    return out


def report_ids(
    metric: str, decisions: Mapping[str, int], seed: int = 0, groups: Mapping[str, str] | None = None
) -> list[str]:
    """The report-half ids of a decision metric (``crows/<axis>`` or ``stereoset/<axis>/ss``)."""
    return split_ids(decisions, benchmark=metric.split("/")[0], seed=seed, groups=groups)[REPORT]


def value(metrics: Mapping[str, Mapping[str, float]], key: str, scope: str) -> float:
    """A figure in a scope, falling back to ``all`` for metrics that have no halves; NaN when absent."""
    row = metrics.get(key)
    if not row:
        return float("nan")
    return _num(row.get(scope, row.get("all")))
