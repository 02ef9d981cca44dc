"""``report.md`` and the charts of :mod:`peft_debias.demo.run`: one table per model, intervals and paired tests."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from peft_debias.core.provenance import placement_text
from peft_debias.eval.formatting import format_ci, format_p
from peft_debias.eval.formatting import format_number as _num

DAMAGED = 1.25  # a perplexity this many times the base's is flagged in the table


def _load(out: Path, relative: str) -> dict[str, Any]:
    return json.loads((out / relative).read_text(encoding="utf-8"))


def _ci(block: Mapping[str, Any] | None, key: str | None = None) -> str:
    interval = (block or {}).get("ci95")
    if isinstance(interval, Mapping):
        interval = interval.get(key or "")
    return format_ci(interval, 1)


def _p(value: Any) -> str:
    return "" if value is None else f"p={format_p(value)}"


def causal_rows(runs: Sequence[Mapping[str, Any]], out: Path, axis: str) -> list[list[str]]:
    """Table rows: model | CrowS | StereoSet SS | LMS | ICAT | perplexity (change)."""
    base_ppl = None
    rows = []
    for run in runs:
        results = _load(out, run["results"])
        crows = results.get("crows", {}).get("axes", {}).get(axis, {})
        stereo = results.get("stereoset", {}).get("axes", {}).get(axis, {})
        ppl = results.get("perplexity", {}).get("perplexity")
        base_ppl = ppl if base_ppl is None else base_ppl
        change = "" if run["name"] == "base" or not ppl or not base_ppl else f" ({100 * (ppl / base_ppl - 1):+.1f}%)"
        if ppl and base_ppl and ppl > DAMAGED * base_ppl:
            change += " **LM damaged**"
        compare = results.get("compare", {})
        crows_p = _p(compare.get("crows", {}).get(axis, {}).get("mcnemar_p"))
        ss_p = _p(compare.get("stereoset", {}).get(axis, {}).get("mcnemar_p"))
        label = run["label"] + (" (chosen)" if run.get("chosen") else "")
        rows.append(
            [
                label,
                f"{_num(crows.get('stereotype_score'))}{_ci(crows)}" + (f" {crows_p}" if crows_p else ""),
                f"{_num(stereo.get('ss'))}{_ci(stereo, 'ss')}" + (f" {ss_p}" if ss_p else ""),
                _num(stereo.get("lms")),
                _num(stereo.get("icat")),
                f"{_num(ppl)}{change}",
            ]
        )
    return rows


def _cell(text: str) -> str:
    """A markdown table cell: a literal ``|`` would end the cell."""
    return text.replace("\\|", "|").replace("|", "\\|")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(map(_cell, header)) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(map(_cell, row)) + " |" for row in rows]


def _objective_text(encoder: Mapping[str, Any], axis: str) -> str:
    """How the demo's encoder adapter was trained (the token-level invariance), in words, from the settings the run
    recorded."""
    names = f", {encoder['names']} first-name pairs swapped too" if encoder["names"] else ""
    return (
        f"token-level invariance: each token's last hidden state pulled towards its counterpart in the {axis} swap, "
        f"the original's other tokens anchored to the base; beta {encoder['beta']:g}{names}"
    )


def _seat_cell(test: Mapping[str, Any]) -> list[str]:
    """Effect size (p) and association gap of one SEAT test; blanks for a test the other run lacks."""
    nan = float("nan")
    return [
        f"{test.get('effect_size', nan):.3f} (p={format_p(test.get('p_value'))})",
        f"{test.get('association_gap', nan):+.4f}",
    ]


def _seat_lines(encoder: Mapping[str, Any], out: Path, axis: str) -> list[str]:
    if not encoder:
        return []
    before, after = _load(out, encoder["base"]), _load(out, encoder["adapter_results"])
    rows = []
    for name, test in before["seat"]["tests"].items():
        rows.append([name, *_seat_cell(test), *_seat_cell(after["seat"]["tests"].get(name, {}))])
    axes_before, axes_after = before["seat"]["axes"][axis], after["seat"]["axes"][axis]
    rows.append(
        [
            f"**mean |effect size|, mean |gap| ({axis})**",
            f"**{axes_before['mean_abs_effect_size']:.3f}**",
            f"**{axes_before.get('mean_abs_association_gap', float('nan')):.4f}**",
            f"**{axes_after['mean_abs_effect_size']:.3f}**",
            f"**{axes_after.get('mean_abs_association_gap', float('nan')):.4f}**",
        ]
    )
    header = ["test", "base: effect size", "base: gap", "with adapter: effect size", "with adapter: gap"]
    return [
        f"## SEAT on the sentence encoder ({encoder['model']})",
        "",
        f"A LoRA trained {encoder['steps']} steps with the counterfactual objective ({_objective_text(encoder, axis)};"
        f" adapter `{encoder['adapter']}`). The gap is the association before SEAT divides it by its spread"
        " (mean s(X) - mean s(Y), cosine units): the effect size is scale-free, so a gap that shrinks a lot can leave"
        " it high.",
        "",
        *_table(header, rows),
        "",
    ]


def write_report(summary: Mapping[str, Any], out: Path) -> Path:
    """Write ``report.md`` and ``charts/bias.png`` into ``out`` (the demo's output folder, still temporary)."""
    from peft_debias.eval.report import plot_results

    cfg = summary["config"]
    axis = cfg["axis"]
    runs = summary["runs"]
    (out / "charts").mkdir(exist_ok=True)
    plot_results(
        [_load(out, run["results"]) for run in runs],
        out / "charts" / "bias.png",
        labels=[run["name"] for run in runs],
        title=f"{cfg['causal_model']}: {axis} bias and perplexity",
    )
    lora = next((run for run in runs if run["name"] == "lora"), None)
    lines = [
        f"# peft-debias demo: {axis} bias in {cfg['causal_model']}",
        "",
        f"{'Quick run' if cfg['quick'] else 'Full run'}, seed {cfg['seed']}, {summary['seconds']:.0f} s. "
        "**One seed**: these figures show the workflow and carry their own 95% bootstrap intervals over items; a "
        "run-to-run change of 2-4 CrowS points is training noise. The multi-seed result with a no-swap control is "
        "the experiment harness's (`peft-debias experiment --config recipes/experiments/smollm2-gender-cpu.yaml`; "
        "see the README).",
        "",
        f"- Placement: {placement_text(runs[0].get('placement'))} (device and dtype the models were loaded on).",
        f"- Training text (CDA, {axis}): {len(summary['training_text'])} Project Gutenberg novel(s). Perplexity: "
        f"{cfg['ppl_tokens']} tokens of `{Path(summary['perplexity_text']).name}` (WikiText-2, another source).",
        "- CrowS-Pairs and StereoSet are scored on the **report** half of their items (`--split report`); the biased "
        "model of the bias vector was trained on StereoSet stereotypes of the **select** half only.",
        "- p-values: exact McNemar test on the per-item decisions against the base model. **LM damaged**: perplexity "
        f"above {DAMAGED:g}x the base's; its bias scores say little (a broken model is not a fair one).",
        "",
        f"## Bias and quality ({cfg['causal_model']})",
        "",
        *_table(
            ["model", f"CrowS-Pairs {axis} (50 ideal)", f"StereoSet {axis} SS (50 ideal)", "LMS", "ICAT", "perplexity"],
            causal_rows(runs, out, axis),
        ),
        "",
        "![bias and perplexity](charts/bias.png)",
        "",
        "Bias-vector lambda sweep (chosen: the largest lambda whose perplexity increase stays under "
        f"{100 * cfg['ppl_threshold']:.0f}%): [sweep/sweep.md](sweep/sweep.md)",
        "",
        "![lambda sweep](sweep/sweep.png)",
        "",
        *_seat_lines(summary.get("encoder") or {}, out, axis),
        "## Artifacts",
        "",
    ]
    for run in runs:
        if run.get("adapter"):
            lines.append(
                f"- `{run['adapter']}`: {run['label']} adapter with its model card; "
                f"`peft-debias publish {run['adapter']} <org>/<name>` shares it."
            )
    encoder = summary.get("encoder") or {}
    if encoder.get("adapter"):
        lines.append(f"- `{encoder['adapter']}`: the counterfactual-objective LoRA of {encoder['model']} (card).")
    if lora and lora.get("merged"):
        merged = lora["merged"]
        lines.append(
            f"- `{merged['folder']}`: the LoRA merged into a plain model (max |logit difference| vs the "
            f"adapter {merged['max_abs_logit_difference']:.1e})."
        )
    lines += [
        "- `results/*.json`: full eval results (schema in `peft_debias/eval/__init__.py`).",
        "",
        "## Stages",
        "",
        *_table(
            ["stage", "elapsed (s)", "summary"],
            [[s["stage"], f"{s['seconds']:.0f}", s["summary"]] for s in summary["stages"]],
        ),
    ]
    path = out / "report.md"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
