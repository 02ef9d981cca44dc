"""From finished cells to the summary: selection on the select half, figures on the report half, paired effects.

For every configuration (kind, model, axis, method/objective and searched values; or a bias-vector setting):

1. **Selection** (select half): each evaluated point (checkpoint step, or lambda) gets a score from the selection
   metric (``selection.metric`` of the axis): with criterion ``effect`` (``selection.criterion``, default for
   adapters; ``vector.criterion`` for lambdas, default ``bias``) and a control, the mean over seeds of
   ``bias(control) - bias(treatment)``, larger is better; with criterion ``bias`` (or no control) the mean
   treatment ``bias``, smaller is better (``bias`` = distance to the ideal, :func:`.stats.bias_distance`). Points
   whose mean perplexity increase over the base model exceeds the budget (``selection.ppl_budget``;
   ``vector.ppl_budget`` for lambdas) are not eligible; if none is, the one with the smallest increase is taken
   and flagged. The treatment's point is used for its control too (trained identically, same step or lambda).
2. **Figures** (report half) at the chosen point: per metric the mean, sd and 95% t-interval over seeds for the
   treatment and the control, the paired treatment - control difference, and for bias metrics the effect beyond
   the control with its paired tests (:mod:`.stats`: paired t over seeds, sign-flip, pooled McNemar on report-half
   items, combined p = the larger of paired t and McNemar).
3. **Best configuration** per (kind, model, axis): the best selection score (select half again), then the target
   checks of the report are made on it.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from peft_debias.experiment.config import ExperimentConfig
from peft_debias.experiment.grid import Cell
from peft_debias.experiment.splits import (
    SELECT,
    fill_item_groups,
    item_groups,
    point_decisions,
    point_metrics,
    report_ids,
    value,
)
from peft_debias.experiment.stats import (
    bias_distance,
    combined_p,
    paired_t_test,
    pooled_mcnemar,
    sign_flip_p,
    summarize,
)

_NAN = float("nan")
DECISION_METRICS = ("crows/", "stereoset/")


def metric_keys(benchmarks: Sequence[str], axis: str, paraphrase: bool) -> list[str]:
    """The figures of a configuration on ``axis``, bias metrics first."""
    keys = [f"crows/{axis}"] if "crows" in benchmarks else []
    keys += [f"stereoset/{axis}/{k}" for k in ("ss", "lms", "icat")] if "stereoset" in benchmarks else []
    keys += [f"seat/{axis}", f"seat/{axis}/gap"] if "seat" in benchmarks else []
    keys += ["perplexity"] if "perplexity" in benchmarks else []
    keys += [f"paraphrase/{k}" for k in ("cosine", "unrelated", "gap", "accuracy")] if paraphrase else []
    return keys


def selection_key(metric: str, axis: str) -> str:
    return {"crows": f"crows/{axis}", "stereoset": f"stereoset/{axis}/ss", "seat": f"seat/{axis}"}[metric]


def is_bias_metric(key: str) -> bool:
    """CrowS-Pairs, StereoSet SS and SEAT figures have an ideal; quality figures do not."""
    return math.isfinite(bias_distance(key, 1.0))


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else _NAN


class _Parsed:
    """A finished cell's figures and decisions per point."""

    def __init__(self, result: Mapping[str, Any], axes: Sequence[str], split_seed: int) -> None:
        self.metrics: dict[Any, dict[str, dict[str, float]]] = {}
        self.decisions: dict[Any, dict[str, dict[str, int]]] = {}
        self.groups: dict[Any, dict[str, dict[str, str]]] = {}
        for point in result.get("points", []):
            key = point["point"]
            self.metrics[key] = point_metrics(point["eval"], axes, split_seed)
            self.decisions[key] = point_decisions(point["eval"], axes)
            self.groups[key] = {f"stereoset/{axis}/ss": item_groups(point["eval"], axis) for axis in axes}


def analyse(config: ExperimentConfig, cells: Sequence[Cell], results: Mapping[str, Mapping[str, Any]]) -> dict:
    """The experiment summary (see the module docstring) from the cells' results (``run_id -> result``)."""
    results = fill_item_groups(results)
    parsed = {
        c.run_id: _Parsed(results[c.run_id], [c.axis] if c.axis else config.axes, config.split_seed)
        for c in cells
        if c.run_id in results
    }
    baselines = {
        c.model: {"run_id": c.run_id, "metrics": parsed[c.run_id].metrics.get("base", {})}
        for c in cells
        if c.kind == "baseline" and c.run_id in parsed
    }
    groups: dict[tuple, list[Cell]] = defaultdict(list)
    for cell in cells:
        if cell.kind != "baseline":
            groups[cell.group].append(cell)
    configs = [_analyse_group(group, members, parsed, baselines, config) for group, members in groups.items()]
    best = _best(configs)
    missing = [c.run_id for c in cells if c.run_id not in results]
    return {
        "experiment": config.name,
        "description": config.description,
        "models": list(dict.fromkeys(c.model for c in cells)),
        "axes": config.axes,
        "seeds": config.seeds,
        "benchmarks": config.benchmarks,
        "split": {"seed": config.split_seed, "halves": "select (choices) / report (figures)", "of": "eval.splits"},
        "selection": {"metric": config.selection.metric, "criterion": config.selection.criterion,
                      "ppl_budget": config.selection.ppl_budget,
                      "vector_ppl_budget": config.vector.ppl_budget if config.vector else None,
                      "vector_criterion": config.vector.criterion if config.vector else None,
                      "vector_train_items": config.vector.train_items if config.vector else None},
        "cells": {"total": len(cells), "done": len(cells) - len(missing), "missing": missing},
        "baselines": baselines,
        "configs": configs,
        "best": best,
        "targets": _targets(configs, best, baselines, config),
    }  # fmt: skip


def _ppl_change(metrics: Mapping[str, Any], base: Mapping[str, Any]) -> float:
    ppl, ref = value(metrics, "perplexity", "all"), value(base, "perplexity", "all")
    return ppl / ref - 1.0 if math.isfinite(ppl) and math.isfinite(ref) and ref > 0 else _NAN


def _analyse_group(group: tuple, members: list[Cell], parsed: dict, baselines: dict, config: ExperimentConfig) -> dict:
    kind, model, axis, label = group
    first = members[0]
    treat = {c.seed: parsed[c.run_id] for c in members if c.role == "treatment" and c.run_id in parsed}
    ctrl = {c.seed: parsed[c.run_id] for c in members if c.role == "control" and c.run_id in parsed}
    has_control = any(c.role == "control" for c in members)
    paired = sorted(set(treat) & set(ctrl))
    base = baselines.get(model, {}).get("metrics", {})
    sel_key = selection_key(str(config.selection.metric), axis)
    keys = metric_keys(config.benchmarks, axis, config.paraphrase)
    vector = config.vector if kind == "vector" else None
    budget = vector.ppl_budget if vector else config.selection.ppl_budget
    by_effect = has_control and (vector.criterion if vector else config.selection.criterion) == "effect"
    points = sorted({p for run in treat.values() for p in run.metrics})
    rows = []
    for p in points:
        dist = {role: {s: bias_distance(sel_key, value(r.metrics.get(p, {}), sel_key, SELECT)) for s, r in runs.items()}
                for role, runs in (("treatment", treat), ("control", ctrl))}  # fmt: skip
        if by_effect:
            score = -_mean([dist["control"][s] - dist["treatment"][s] for s in paired])
        else:
            score = _mean(list(dist["treatment"].values()))
        change = _mean([_ppl_change(r.metrics.get(p, {}), base) for r in treat.values()])
        rows.append({
            "point": p, "score": score, "ppl_change": change,
            "eligible": budget is None or not math.isfinite(change) or change <= budget,
            "curves": {role: _curve(runs, p, keys) for role, runs in (("treatment", treat), ("control", ctrl))},
        })  # fmt: skip
    chosen, within = _choose(rows)
    out = {
        "kind": kind, "model": model, "axis": axis, "config": label,
        "method": first.spec.get("method") or first.spec.get("biased", {}).get("method"),
        "objective": first.spec.get("objective"), "variant": first.spec.get("variant", {}),
        "point_name": "lambda" if kind == "vector" else "step",
        "seeds": {"treatment": sorted(treat), "control": sorted(ctrl), "paired": paired},
        "has_control": has_control, "selection_key": sel_key, "criterion": "effect" if by_effect else "bias",
        "points": rows, "chosen": chosen, "within_budget": within, "ppl_budget": budget,
        "base": {k: value(base, k, "report") for k in keys},
        "base_select": {k: value(base, k, SELECT) for k in keys},
        "metrics": {} if chosen is None else _figures(chosen, keys, treat, ctrl, paired, base, config.split_seed),
    }  # fmt: skip
    return out


def _curve(runs: Mapping[int, _Parsed], point: Any, keys: Sequence[str]) -> dict[str, dict[str, float]]:
    out = {}
    for key in keys:
        sel = summarize([value(r.metrics.get(point, {}), key, SELECT) for r in runs.values()])
        rep = summarize([value(r.metrics.get(point, {}), key, "report") for r in runs.values()])
        out[key] = {"select": sel.mean, "report": rep.mean, "report_sd": rep.sd}
    return out


def _choose(rows: list[dict[str, Any]]) -> tuple[Any, bool]:
    scored = [r for r in rows if math.isfinite(r["score"])]
    eligible = [r for r in scored if r["eligible"]]
    if eligible:
        return min(eligible, key=lambda r: r["score"])["point"], True
    if scored:  # nothing within the perplexity budget: the least damaging point, flagged
        return min(scored, key=lambda r: r["ppl_change"])["point"], False
    return (rows[-1]["point"], True) if rows else (None, True)


def _figures(point, keys, treat, ctrl, paired, base, split_seed) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    for key in keys:
        t_vals = {s: value(r.metrics.get(point, {}), key, "report") for s, r in treat.items()}
        c_vals = {s: value(r.metrics.get(point, {}), key, "report") for s, r in ctrl.items()}
        entry: dict[str, Any] = {
            "base": value(base, key, "report"),
            "treatment": {**summarize(t_vals.values()).to_dict(), "values": t_vals},
            "control": {**summarize(c_vals.values()).to_dict(), "values": c_vals},
        }
        if paired:
            entry["diff"] = summarize([t_vals[s] - c_vals[s] for s in paired]).to_dict()
        if key == "perplexity":
            for role, vals in (("treatment", t_vals), ("control", c_vals)):
                ref = entry["base"]
                entry[role]["change_vs_base"] = summarize([v / ref - 1.0 for v in vals.values()]).to_dict()
        if paired and is_bias_metric(key):
            entry["effect"] = _effect(key, point, treat, ctrl, paired, t_vals, c_vals, split_seed)
        figures[key] = entry
    return figures


def _effect(key, point, treat, ctrl, paired, t_vals, c_vals, split_seed) -> dict[str, Any]:
    d = {s: bias_distance(key, c_vals[s]) - bias_distance(key, t_vals[s]) for s in paired}
    eff = summarize(d.values()).to_dict()
    p_t, p_sf = paired_t_test(list(d.values())), sign_flip_p(list(d.values()))
    out: dict[str, Any] = {**eff, "values": d, "p_t": p_t, "p_sign_flip": p_sf, "mcnemar": None, "p": p_t}
    decision_key = key if key.startswith("crows/") or key.endswith("/ss") else None
    if decision_key:
        pairs = [
            (runs[s].decisions.get(point, {}).get(decision_key, {}) for runs in (treat, ctrl)) for s in paired
        ]
        pairs = [tuple(pair) for pair in pairs]
        groups = {k: v for s in paired for k, v in treat[s].groups.get(point, {}).get(decision_key, {}).items()}
        items = {i for t, _ in pairs for i in report_ids(decision_key, t, split_seed, groups)}
        test = pooled_mcnemar(pairs, items)
        out["mcnemar"] = test.to_dict()
        out["p"] = combined_p(p_t, test.p_value)
    return out


def _best(configs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (kind, model, axis): the configuration with the best select-half score at its chosen point."""
    best: dict[tuple, dict[str, Any]] = {}
    for cfg in configs:
        row = next((r for r in cfg["points"] if r["point"] == cfg["chosen"]), None)
        if row is None or not math.isfinite(row["score"]):
            continue
        rank = (not cfg["within_budget"], row["score"])
        key = (cfg["kind"], cfg["model"], cfg["axis"])
        if key not in best or rank < best[key]["rank"]:
            best[key] = {"rank": rank, "config": cfg["config"]}
    return [{"kind": k[0], "model": k[1], "axis": k[2], "config": v["config"]} for k, v in best.items()]


def _find(configs, kind, model, axis, label) -> dict[str, Any]:
    return next(c for c in configs if (c["kind"], c["model"], c["axis"], c["config"]) == (kind, model, axis, label))


def _check(name: str, value_: float, threshold: float, op: str, p: float | None = None, alpha: float = 0.05,
           unit: str = "") -> dict:  # fmt: skip
    ok: bool | None = None
    if math.isfinite(value_):
        ok = value_ >= threshold if op == ">=" else value_ <= threshold
        if p is not None:
            ok = ok and math.isfinite(p) and p < alpha
    shown = f"{100 * threshold:+g}%" if unit == "fraction" else f"{threshold:g}"
    if p is not None:
        shown += f", p < {alpha:g}"
    return {"name": name, "value": value_, "unit": unit, "threshold": f"{op} {shown}", "p": p, "pass": ok}


def _targets(configs, best, baselines, config: ExperimentConfig) -> list[dict[str, Any]]:
    """The acceptance checks on each best configuration (report half)."""
    tg, out = config.targets, []
    for b in best:
        cfg = _find(configs, b["kind"], b["model"], b["axis"], b["config"])
        m, axis = cfg["metrics"], cfg["axis"]
        chosen = f"{cfg['chosen']:g}" if isinstance(cfg["chosen"], float) else cfg["chosen"]
        where = f"{b['model']} {cfg['config']} @ {cfg['point_name']} {chosen}"
        checks = []
        for key, thr in ((f"crows/{axis}", tg.crows_effect), (f"stereoset/{axis}/ss", tg.ss_effect)):
            eff = m.get(key, {}).get("effect")
            if eff:
                name = f"{key} toward 50 beyond the control (points)"
                checks.append(_check(name, eff["mean"], thr, ">=", eff["p"], tg.p_value))
        if "perplexity" in m:
            budget = tg.ppl_increase if cfg["kind"] == "adapter" else cfg["ppl_budget"]
            change = m["perplexity"]["treatment"]["change_vs_base"]["mean"]
            checks.append(_check("perplexity change vs base (out of domain)", change, budget, "<=", unit="fraction"))
        if f"seat/{axis}" in m:
            checks.append(_check(f"seat/{axis} mean |effect size|", m[f"seat/{axis}"]["treatment"]["mean"],
                                 tg.seat_abs_es, "<="))  # fmt: skip
            eff = m[f"seat/{axis}"].get("effect")
            if eff:
                checks.append(_check(f"seat/{axis} |ES| reduction beyond the control", eff["mean"], 0.0, ">=",
                                     eff["p"], tg.p_value))  # fmt: skip
        if "paraphrase/cosine" in m:
            para = m["paraphrase/cosine"]
            checks.append({"name": "paraphrase cosine (base -> treatment; control)", "value": para["treatment"]["mean"],
                           "unit": "", "threshold": f"base {para['base']:.3f}; control {para['control']['mean']:.3f}",
                           "p": None, "pass": None})  # fmt: skip
        out.append({"kind": cfg["kind"], "model": cfg["model"], "axis": axis, "config": cfg["config"],
                    "where": where, "checks": checks})  # fmt: skip
    return out
