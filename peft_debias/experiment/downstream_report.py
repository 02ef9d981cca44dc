"""Statistics and report of the downstream experiment (:mod:`peft_debias.experiment.downstream`).

Per arm, over seeds: mean, sd and 95% t-interval of the WinoBias gap (accuracy pro - anti), the TPR-GAP and the
accuracies. Every other arm is compared with ``plain`` and with ``control`` on the seeds both finished (paired by
seed: same head initialisation, data order and dropout): the mean paired difference of the gap with its paired t-test
and exact sign-flip p-value, the share of plain fine-tuning's gap removed, and the accuracy and TPR-GAP
differences. The targets (:class:`~peft_debias.experiment.downstream.DownstreamTargets`) are checked for the
``adapter`` arm.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from peft_debias.core.jsonio import write_json
from peft_debias.experiment.stats import paired_t_test, sign_flip_p, summarize

METRICS = ("gap", "accuracy", "accuracy_pro", "accuracy_anti", "tpr_gap")
Runs = Mapping[str, Mapping[int, Mapping[str, Any]]]


def compare(runs: Runs, arm: str, reference: str, metric: str = "gap") -> dict[str, Any] | None:
    """``arm - reference`` of ``metric`` over the seeds both have: mean difference, its t-interval, paired t and
    sign-flip p-values; for the gap also the share of the reference's mean gap that is removed."""
    seeds = sorted(set(runs.get(arm, {})) & set(runs.get(reference, {})))
    if len(seeds) < 2:
        return None
    diffs = [runs[arm][s][metric] - runs[reference][s][metric] for s in seeds]
    summary = summarize(diffs)
    out = {
        "seeds": seeds,
        "diffs": diffs,
        "mean": summary.mean,
        "ci95": list(summary.ci95),
        "p_t": paired_t_test(diffs),
        "p_sign_flip": sign_flip_p(diffs),
    }
    if metric == "gap":
        base = sum(runs[reference][s]["gap"] for s in seeds) / len(seeds)
        out["reduction"] = -summary.mean / base if base else math.nan
    return out


def _targets(arms: dict[str, Any], targets: Any) -> list[dict[str, Any]]:
    adapter = arms.get("adapter", {})
    vs_plain, vs_control = adapter.get("vs_plain"), adapter.get("vs_control")
    accuracy = adapter.get("accuracy_vs_plain")
    rows = []
    if vs_plain:
        ok = vs_plain["reduction"] >= targets.gap_reduction and vs_plain["p_t"] < targets.p_value
        rows.append({"target": f"gap down >= {targets.gap_reduction:.0%} vs plain, p < {targets.p_value}",
                     "value": vs_plain["reduction"], "p": vs_plain["p_t"], "met": ok})  # fmt: skip
    if vs_control:
        ok = vs_control["mean"] < 0 and vs_control["p_t"] < targets.p_value
        rows.append({"target": f"gap below the no-swap control, p < {targets.p_value}",
                     "value": vs_control["mean"], "p": vs_control["p_t"], "met": ok})  # fmt: skip
    if accuracy:
        ok = abs(accuracy["mean"]) <= targets.accuracy_within
        rows.append({"target": f"accuracy within {targets.accuracy_within:g} point(s) of plain",
                     "value": accuracy["mean"], "p": accuracy["p_t"], "met": ok})  # fmt: skip
    return rows


def analyse_downstream(grid: Any, runs: Runs) -> dict[str, Any]:
    """The summary: per-arm figures, the paired comparisons and the targets (JSON-ready)."""
    arms: dict[str, Any] = {}
    for arm in grid.arms:
        done = runs.get(arm, {})
        entry: dict[str, Any] = {"seeds": sorted(done)}
        for metric in METRICS:
            values = [done[s][metric] for s in sorted(done) if metric in done[s]]
            entry[metric] = summarize(values).to_dict() if values else None
            entry[f"{metric}_by_seed"] = values
        if arm != "plain":
            entry["vs_plain"] = compare(runs, arm, "plain")
            entry["accuracy_vs_plain"] = compare(runs, arm, "plain", "accuracy")
            entry["tpr_gap_vs_plain"] = compare(runs, arm, "plain", "tpr_gap")
        if arm not in ("plain", "control") and "control" in grid.arms:
            entry["vs_control"] = compare(runs, arm, "control")
            entry["tpr_gap_vs_control"] = compare(runs, arm, "control", "tpr_gap")
        arms[arm] = entry
    return {
        "name": grid.name,
        "description": grid.description,
        "model": grid.model,
        "task": grid.task,
        "seeds": grid.seeds,
        "options": grid.options,
        "upstream": grid.upstream,
        "vector": grid.vector,
        "arms": arms,
        "targets": _targets(arms, grid.targets),
    }


def _fmt(summary: Mapping[str, Any] | None) -> str:
    if not summary:
        return "-"
    if not math.isfinite(summary["sd"]):  # one seed
        return f"{summary['mean']:.2f}"
    low, high = summary["ci95"]
    interval = f" [{low:.2f}, {high:.2f}]" if math.isfinite(low) else ""
    return f"{summary['mean']:.2f} ± {summary['sd']:.2f}{interval}"


def _diff(row: Mapping[str, Any] | None) -> str:
    if not row:
        return "-"
    share = f", {row['reduction']:.0%} of the gap removed" if "reduction" in row else ""
    return f"{row['mean']:+.2f} (p {row['p_t']:.3g}, sign-flip {row['p_sign_flip']:.3g}{share})"


def markdown(summary: Mapping[str, Any]) -> str:
    """The report: one row per arm, then the paired comparisons and the targets."""
    lines = [f"# {summary['name']}: downstream {summary['task']} on {summary['model']}", ""]
    if summary["description"]:
        lines += [summary["description"].strip(), ""]
    lines += [
        "Mean ± sd over seeds [95% t-interval], in percent; gap = accuracy pro - accuracy anti.",
        "",
        "| arm | seeds | gap | accuracy | accuracy pro | accuracy anti | TPR-GAP |",
        "|---|---|---|---|---|---|---|",
    ]
    for arm, entry in summary["arms"].items():
        cells = [_fmt(entry[m]) for m in ("gap", "accuracy", "accuracy_pro", "accuracy_anti", "tpr_gap")]
        lines.append(f"| {arm} | {len(entry['seeds'])} | " + " | ".join(cells) + " |")
    lines += ["", "Paired by seed (arm - reference):", ""]
    lines += ["| arm | gap vs plain | gap vs control | accuracy vs plain | TPR-GAP vs plain | TPR-GAP vs control |"]
    lines.append("|---|---|---|---|---|---|")
    for arm, entry in summary["arms"].items():
        if arm != "plain":
            keys = ("vs_plain", "vs_control", "accuracy_vs_plain", "tpr_gap_vs_plain", "tpr_gap_vs_control")
            cells = [_diff(entry.get(k)) for k in keys]
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    if summary["targets"]:
        lines += ["", "| target (adapter arm) | value | p | met |", "|---|---|---|---|"]
        for row in summary["targets"]:
            lines.append(f"| {row['target']} | {row['value']:.3g} | {row['p']:.3g} | {'yes' if row['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def write_downstream_report(summary: dict[str, Any], output: Path) -> list[Path]:
    """``summary.json`` and ``report.md`` in ``output``."""
    write_json(output / "summary.json", summary)
    report = output / "report.md"
    report.write_text(markdown(summary), encoding="utf-8")
    return [output / "summary.json", report]
