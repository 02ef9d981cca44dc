"""Evaluation results on a model card: the Hub ``model-index`` entries and the markdown results table.

The results dict is the one ``peft-debias eval --output results.json`` writes (schema in :mod:`peft_debias.eval`).
Each headline figure becomes one ``model-index`` metric (SEAT mean |effect size|, CrowS-Pairs stereotype score,
StereoSet SS / LMS / ICAT per axis, perplexity); when the file holds a ``compare`` block (``eval --compare``),
the other run's figure is reported too, as a ``<metric>_before`` metric, so the Hub shows before and after.

Kept free of heavy imports (no torch): cards are rendered by the streaming vector code too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft_debias.core.hub_ids import is_hub_id
from peft_debias.core.provenance import placement_text, protocol_name

# model kind -> Hub task type
TASKS = {"causal_lm": "text-generation", "masked_lm": "fill-mask", "encoder": "feature-extraction"}
DATASETS = {
    "seat": ("seat", "SEAT (May et al. 2019)"),
    "crows": ("nyu-mll/crows_pairs", "CrowS-Pairs"),
    "stereoset": ("McGill-NLP/stereoset", "StereoSet intrasentence"),
}


def hub_base_id(base: Mapping[str, Any] | str | None) -> str | None:
    """The Hub model id of a base: a base record's ``hub_id`` (written by peft-debias, see
    :func:`peft_debias.models.base_ids.base_record`), else its name when that is a Hub id and no local folder;
    None for a local folder (the Hub rejects paths)."""
    if isinstance(base, Mapping) and "hub_id" in base:
        return str(base["hub_id"]) if is_hub_id(base["hub_id"]) else None
    text = str((base.get("name") if isinstance(base, Mapping) else base) or "")
    if not is_hub_id(text):
        return None
    return None if Path(text).expanduser().exists() else text


@dataclass
class Figure:
    """One headline number of a results file, with the compared run's number when there is one."""

    benchmark: str
    axis: str | None
    metric: str  # model-index metric type
    name: str  # human name
    value: float | None
    before: float | None = None
    interval: list[float] | None = None
    p_value: float | None = None
    ideal: str = ""
    digits: int = 2


def figures(results: Mapping[str, Any]) -> list[Figure]:
    """The headline figures of a results dict, in benchmark order."""
    compare = results.get("compare") or {}
    out: list[Figure] = []
    for axis, v in ((results.get("seat") or {}).get("axes") or {}).items():
        other = (compare.get("seat") or {}).get(axis, {})
        out.append(
            Figure(
                "seat",
                axis,
                "seat_mean_abs_effect_size",
                "SEAT mean |effect size|",
                v.get("mean_abs_effect_size"),
                before=other.get("other_mean_abs_effect_size"),
                ideal="0",
                digits=3,
            )
        )
    for axis, v in ((results.get("crows") or {}).get("axes") or {}).items():
        other = (compare.get("crows") or {}).get(axis, {})
        out.append(
            Figure(
                "crows",
                axis,
                "stereotype_score",
                "CrowS-Pairs stereotype score",
                v.get("stereotype_score"),
                before=other.get("other_stereotype_score"),
                interval=v.get("ci95"),
                p_value=other.get("mcnemar_p"),
                ideal="50",
            )
        )
    for axis, v in ((results.get("stereoset") or {}).get("axes") or {}).items():
        other = (compare.get("stereoset") or {}).get(axis, {})
        ci = v.get("ci95") or {}
        for key, ideal in (("ss", "50"), ("lms", "100"), ("icat", "100")):
            paired = {"before": other.get("other_ss"), "p_value": other.get("mcnemar_p")} if key == "ss" else {}
            name = f"StereoSet {key.upper()}"
            out.append(Figure("stereoset", axis, key, name, v.get(key), interval=ci.get(key), ideal=ideal, **paired))
    ppl = results.get("perplexity")
    if ppl:
        kind = str(ppl.get("kind") or "perplexity")
        before = (compare.get("perplexity") or {}).get("other_perplexity")
        name = kind.replace("_", "-")
        out.append(Figure("perplexity", None, kind, name, ppl.get("perplexity"), before=before, ideal="lower"))
    return out


def _number(value: Any, digits: int = 2) -> float | None:
    return None if value is None else round(float(value), digits + 2)


def eval_results(results: Mapping[str, Any]) -> list[Any]:
    """``huggingface_hub.EvalResult`` entries for the card's ``model-index`` (before values as ``*_before``)."""
    from huggingface_hub import EvalResult

    task = TASKS.get(str(results.get("model_kind")), "text-generation")
    label = (results.get("compare") or {}).get("other", {}).get("label") or "baseline"
    ppl_text = str((results.get("perplexity") or {}).get("text") or "held-out text")
    protocol = protocol_name(results)
    out = []
    for f in figures(results):
        if f.value is None:
            continue
        dataset_type, dataset_name = DATASETS.get(f.benchmark, ("text", f"{ppl_text} (perplexity)"))
        common = dict(
            task_type=task,
            task_name="Bias evaluation" if f.benchmark != "perplexity" else "Language modelling",
            dataset_type=dataset_type,
            dataset_name=dataset_name,
            dataset_config=f.axis,
        )
        where = f" ({f.axis})" if f.axis else ""
        where += "" if protocol == "default" else f" [{protocol} protocol]"
        value = _number(f.value, f.digits)
        out.append(EvalResult(metric_type=f.metric, metric_value=value, metric_name=f"{f.name}{where}", **common))
        if f.before is not None:
            before = _number(f.before, f.digits)
            name = f"{f.name}{where}, before ({label})"
            out.append(EvalResult(metric_type=f"{f.metric}_before", metric_value=before, metric_name=name, **common))
    return out


def _fmt(value: Any, digits: int) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def results_table(results: Mapping[str, Any]) -> str:
    """A markdown table of the headline figures (with the compared run and the paired test when present)."""
    rows = [f for f in figures(results) if f.value is not None]
    if not rows:
        return "The results file holds no SEAT, CrowS-Pairs, StereoSet or perplexity figures."
    compare = results.get("compare")
    label = (compare or {}).get("other", {}).get("label") or "baseline"
    header = ["benchmark", "axis", "metric", "this model"]
    header += [f"before ({label})", "change", "McNemar p"] if compare else []
    header += ["ideal"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for f in rows:
        value = _fmt(f.value, f.digits)
        if f.interval and None not in f.interval:
            value += f" [{f.interval[0]:.{f.digits}f}, {f.interval[1]:.{f.digits}f}]"
        cells = [f.benchmark, f.axis or "-", f.name, value]
        if compare:
            change = None if f.before is None else f.value - f.before
            p = "" if f.p_value is None else f"{f.p_value:.3g}"
            cells += [_fmt(f.before, f.digits), "" if change is None else f"{change:+.{f.digits}f}", p]
        lines.append("| " + " | ".join([*cells, f.ideal]) + " |")
    adapters = ", ".join(str(a.get("path")) for a in results.get("adapters") or []) or "none"
    lines += [
        "",
        f"Measured with `peft-debias eval --protocol {protocol_name(results)}` on `{results.get('model')}` "
        f"(adapters: {adapters}; {placement_text(results.get('placement'))}; "
        f"{results.get('created', 'date unknown')}). 95% bootstrap intervals in brackets; "
        "the McNemar test is paired over the items both runs scored.",
    ]
    return "\n".join(lines)


def card_results(results: Mapping[str, Any] | None) -> tuple[str | None, list[Any] | None]:
    """``(results table, model-index entries)`` for a card, or ``(None, None)`` without results."""
    if not results:
        return None, None
    return results_table(results), eval_results(results) or None
