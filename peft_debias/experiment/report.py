"""The experiment's outputs: ``summary.json``, ``results.csv``, ``report.md`` and PNG charts, written atomically.

``report.md`` shows what the acceptance checks need: per configuration the report-half figures (mean +/- sd over
seeds and the 95% t-interval over seeds) of the treatment and its no-swap control, the effect beyond the control
with its paired p-values, the out-of-domain perplexity change, SEAT and the paraphrase check, the selection table
(select half) and the bias-vector lambda curve. Charts: ``bias_vs_quality.png`` (bias against perplexity change,
or against the paraphrase gap for encoders, one marker per configuration and role) and ``lambda_curves.png``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from peft_debias.core.atomic import atomic_output
from peft_debias.core.jsonio import dumps
from peft_debias.core.portable import scrub_local_paths
from peft_debias.eval.formatting import format_ci
from peft_debias.eval.formatting import format_number as _f
from peft_debias.eval.formatting import format_p as _p

CHARTS = ("bias_vs_quality.png", "lambda_curves.png")


def _pct(x: Any) -> str:
    return "n/a" if not isinstance(x, (int, float)) or not math.isfinite(x) else f"{100 * x:+.1f}%"


def _pt(point: Any) -> str:
    return f"{point:g}" if isinstance(point, float) else str(point)


def _summ(s: Mapping[str, Any] | None, digits: int = 2) -> str:
    if not s or not s.get("n"):
        return "n/a"
    return f"{_f(s['mean'], digits)} ± {_f(s['sd'], digits)}" + format_ci(s.get("ci95"), digits)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def _digits(key: str) -> int:
    return 3 if key.startswith(("seat/", "paraphrase/")) else 2


def markdown_report(summary: Mapping[str, Any]) -> str:
    """The report as markdown (see the module docstring)."""
    sel, cells = summary["selection"], summary["cells"]
    lines = [f"# Experiment: {summary['experiment']}", ""]
    if summary.get("description"):
        lines += [" ".join(str(summary["description"]).split()), ""]
    lines += [
        f"Models: {', '.join(summary['models'])}; axes: {', '.join(summary['axes'])}; seeds: {summary['seeds']} "
        f"(n = {len(summary['seeds'])}); benchmarks: {', '.join(summary['benchmarks'])}.",
        f"Cells finished: {cells['done']} of {cells['total']}"
        + (f" ({len(cells['missing'])} missing: run the experiment again)." if cells["missing"] else "."),
        "",
        "## How to read this report",
        "",
        f"- **Split**: the CrowS-Pairs and StereoSet items are split into a *select* half and a *report* half by a "
        f"seeded hash of the item id (StereoSet: of its template, so that items sharing a stereotype sentence stay in "
        f"one half; split seed {summary['split']['seed']}; the halves of `peft-debias eval --split`). Checkpoint "
        "steps, searched values, lambda and the best configuration are chosen on the select "
        "half; **every figure below is on the report half** unless marked. SEAT, perplexity and the paraphrase "
        "check have no item split (all their data).",
        f"- **Selection**: metric `{sel['metric']}`, criterion `{sel['criterion']}` (effect: most bias removed beyond "
        f"the control; bias: least bias); "
        + ("no perplexity budget" if sel["ppl_budget"] is None else
           f"eligible points within {_pct(sel['ppl_budget'])} perplexity over the base")
        + (f"; lambdas: criterion `{sel['vector_criterion']}` within {_pct(sel['vector_ppl_budget'])}."
           if sel["vector_ppl_budget"] is not None else "."),
        "- **Figures**: mean ± sd over seeds [95% t-interval over seeds], i.e. training noise.",
        "- **Effect beyond the control**: per seed, bias(control) - bias(treatment), with bias = |score - 50| for "
        "CrowS-Pairs and StereoSet SS and the mean |effect size| for SEAT; positive means the counterfactual swaps "
        "removed bias beyond what the same training without them did. The control is trained identically on the "
        "same sentences without the swaps (bias vectors: on the anti-stereotype or unrelated fillers).",
        "- **p**: combined paired p = max(paired t-test over seeds, exact McNemar test on the report-half items "
        "pooled over seeds), an intersection-union test (claim only when both reject). The sign-flip p over seeds "
        "is shown for reference; its floor is 2 / 2^n (0.25 with 3 seeds).",
        "",
    ]  # fmt: skip
    lines += _targets_section(summary)
    lines += _baselines_section(summary)
    for model in summary["models"]:
        for axis in summary["axes"]:
            configs = [c for c in summary["configs"] if c["model"] == model and c["axis"] == axis]
            if configs:
                lines += _results_section(model, axis, configs)
    lines += _lambda_section(summary)
    lines += ["## Charts", ""] + [f"![{c[:-4]}]({c})" for c in summary.get("charts", [])] + [""]
    notes = _notes(summary)
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def _targets_section(summary: Mapping[str, Any]) -> list[str]:
    rows = []
    for block in summary["targets"]:
        for check in block["checks"]:
            verdict = {True: "yes", False: "**no**", None: "-"}[check["pass"]]
            value = _pct(check["value"]) if check.get("unit") == "fraction" else _f(check["value"], 3)
            rows.append([block["where"], check["name"], value, check["threshold"], _p(check["p"]), verdict])
    head = ["## Targets (best configuration per model and axis, chosen on the select half; report half)", ""]
    return head + (_table(["configuration", "check", "value", "threshold", "p", "pass"], rows) if rows else
                   ["No finished configuration yet.", ""])  # fmt: skip


def _baselines_section(summary: Mapping[str, Any]) -> list[str]:
    rows = []
    for model, base in summary["baselines"].items():
        for key, row in base["metrics"].items():
            half = _f(row["report"], _digits(key)) if "report" in row else "-"
            rows.append([model, key, _f(row.get("all"), _digits(key)), half])
    return ["## Baselines (no adapter)", "", *_table(["model", "metric", "all items", "report half"], rows)]


def _results_section(model: str, axis: str, configs: list[dict[str, Any]]) -> list[str]:
    keys = [k for k in configs[0]["base"] if not k.startswith("paraphrase/") or k == "paraphrase/cosine"]
    lines = [f"## Results: {model}, {axis}", "", "### Figures at the chosen point (report half)", ""]
    rows = [["base model", "-", "-", *(_f(configs[0]["base"][k], _digits(k)) for k in keys), "+0.0%"]]
    for cfg in configs:
        where = f"{cfg['point_name']} {_pt(cfg['chosen'])}" + ("" if cfg["within_budget"] else " (over budget)")
        for role in ("treatment", "control"):
            figs = [_summ(cfg["metrics"].get(k, {}).get(role), _digits(k)) for k in keys]
            change = cfg["metrics"].get("perplexity", {}).get(role, {}).get("change_vs_base")
            rows.append([cfg["config"], where, role, *figs, _pct(change["mean"]) if change else "n/a"])
    lines += _table(["configuration", "point", "role", *keys, "ppl change"], rows)
    lines += ["### Effect beyond the no-swap control (report half)", ""]
    rows = []
    for cfg in configs:
        for key, entry in cfg["metrics"].items():
            eff = entry.get("effect")
            if not eff:
                continue
            mc = eff.get("mcnemar")
            mc_text = f"{mc['to_yes']}/{mc['to_no']} p {_p(mc['p'])}" if mc else "n/a"
            rows.append([cfg["config"], key, _summ(eff, _digits(key)), _p(eff["p_t"]), _p(eff["p_sign_flip"]),
                         mc_text, _p(eff["p"])])  # fmt: skip
    lines += _table(["configuration", "metric", "effect", "p (t)", "p (sign-flip)", "McNemar b/c", "combined p"], rows)
    lines += ["### Selection (select half)", ""]
    rows = []
    for cfg in configs:
        for r in cfg["points"]:
            mark = "**chosen**" if r["point"] == cfg["chosen"] else ""
            score = -r["score"] if cfg["criterion"] == "effect" else r["score"]
            point = f"{cfg['point_name']} {_pt(r['point'])}"
            rows.append([cfg["config"], point, cfg["selection_key"], cfg["criterion"], _f(score),
                         _pct(r["ppl_change"]), "yes" if r["eligible"] else "no", mark])  # fmt: skip
    header = ["configuration", "point", "metric", "criterion", "value", "ppl change", "eligible", ""]
    return lines + _table(header, rows)


def _lambda_section(summary: Mapping[str, Any]) -> list[str]:
    lines: list[str] = []
    for cfg in (c for c in summary["configs"] if c["kind"] == "vector"):
        key = cfg["selection_key"]
        lines += [f"## Bias vector: {cfg['model']}, {cfg['axis']}, {cfg['config']}", "",
                  f"lambda chosen on the select half: **{_pt(cfg['chosen'])}**"
                  + ("" if cfg["within_budget"] else " (no lambda within the perplexity budget)"), ""]  # fmt: skip
        rows = [["0 (base)", _f(cfg["base_select"].get(key)), _f(cfg["base"].get(key)), "-", "-", "+0.0%"]]
        for r in cfg["points"]:
            t, c = r["curves"]["treatment"].get(key, {}), r["curves"]["control"].get(key, {})
            rows.append([_pt(r["point"]), _f(t.get("select")), f"{_f(t.get('report'))} ± {_f(t.get('report_sd'))}",
                         _f(c.get("select")), f"{_f(c.get('report'))} ± {_f(c.get('report_sd'))}",
                         _pct(r["ppl_change"])])  # fmt: skip
        header = ["lambda", f"{key} select", f"{key} report", "control select", "control report", "ppl change"]
        lines += _table(header, rows)
    return lines


def _notes(summary: Mapping[str, Any]) -> list[str]:
    notes = []
    if len(summary["seeds"]) < 3:
        notes.append(f"only {len(summary['seeds'])} seed(s): seed-level intervals and tests are weak or undefined")
    if summary["selection"].get("vector_train_items") == "all":
        notes.append("the biased models trained on every StereoSet item: vector StereoSet figures are not held out")
    if summary["selection"]["metric"] == "seat":
        notes.append("selection on SEAT uses the reported tests (SEAT has no item split)")
    for cfg in summary["configs"]:
        seeds = cfg["seeds"]
        if cfg["has_control"] and seeds["paired"] != seeds["treatment"]:
            notes.append(f"{cfg['model']} {cfg['config']}: paired seeds {seeds['paired']} of {seeds['treatment']}")
        if not cfg["within_budget"]:
            notes.append(f"{cfg['model']} {cfg['config']}: no point within the perplexity budget")
    return notes


def results_csv(summary: Mapping[str, Any]) -> str:
    """One row per configuration, role and metric at the chosen point (report half)."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["kind", "model", "axis", "config", "point", "metric", "role", "mean", "sd", "ci_low", "ci_high",
                     "n", "base", "effect_mean", "effect_sd", "p_t", "p_mcnemar", "p_combined"])  # fmt: skip
    for cfg in summary["configs"]:
        for key, entry in cfg["metrics"].items():
            eff = entry.get("effect") or {}
            for role in ("treatment", "control"):
                s = entry.get(role) or {}
                lo, hi = s.get("ci95") or (None, None)
                mc = eff.get("mcnemar") or {}
                writer.writerow([cfg["kind"], cfg["model"], cfg["axis"], cfg["config"], cfg["chosen"], key, role,
                                 s.get("mean"), s.get("sd"), lo, hi, s.get("n"), entry.get("base"), eff.get("mean"),
                                 eff.get("sd"), eff.get("p_t"), mc.get("p"), eff.get("p")])  # fmt: skip
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_bias_vs_quality(summary: Mapping[str, Any]) -> Any:
    """Bias (report half) against quality, one panel per bias metric: a matplotlib figure, None if nothing to draw."""
    configs = [c for c in summary["configs"] if c["metrics"]]
    keys = list(dict.fromkeys(k for c in configs for k in c["metrics"] if k.startswith(("crows/", "seat/"))
                              or k.endswith("/ss")))  # fmt: skip
    if not keys:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4.4), squeeze=False)
    methods = sorted({str(c["method"]) for c in configs})
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    for ax, key in zip(axes[0], keys, strict=True):
        quality = "perplexity" if any("perplexity" in c["metrics"] for c in configs) else "paraphrase/gap"
        for cfg in (c for c in configs if key in c["metrics"]):
            entry = cfg["metrics"][key]
            for role, fill in (("treatment", True), ("control", False)):
                y = entry[role]
                q = cfg["metrics"].get(quality, {}).get(role, {})
                x = q.get("change_vs_base", {}).get("mean") if quality == "perplexity" else q.get("mean")
                x = 100 * x if quality == "perplexity" and x is not None else x
                if y.get("mean") is None or x is None:
                    continue
                ax.errorbar(x, y["mean"], yerr=y.get("sd") or 0, fmt="o" if cfg["kind"] == "adapter" else "s",
                            color=colors[str(cfg["method"])], mfc=colors[str(cfg["method"])] if fill else "white",
                            label=f"{cfg['config']} ({role})", capsize=3)  # fmt: skip
        base = next((c["base"] for c in configs if key in c["base"]), {})
        bx = 0.0 if quality == "perplexity" else base.get(quality)
        if base.get(key) is not None and bx is not None:
            ax.plot(bx, base[key], "k*", markersize=12, label="base model")
        if not key.startswith("seat/"):
            ax.axhline(50, color="grey", linestyle="--", linewidth=1)
        xlabel = "perplexity change vs base (%)" if quality == "perplexity" else "paraphrase gap (cosine)"
        ax.set(xlabel=xlabel, ylabel=f"{key} (report half)", title=key)
        ax.grid(alpha=0.3)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, max(1, len(labels))), fontsize=7)
    fig.tight_layout(rect=(0, 0.08 + 0.03 * (len(labels) // 4), 1, 1))
    return fig


def plot_lambda_curves(summary: Mapping[str, Any]) -> Any:
    """Per bias-vector setting: the selection metric (select and report halves) and perplexity against lambda."""
    configs = [c for c in summary["configs"] if c["kind"] == "vector" and c["points"]]
    if not configs:
        return None
    plt = _plt()
    fig, axes = plt.subplots(len(configs), 2, figsize=(11, 4.0 * len(configs)), squeeze=False)
    for (left, right), cfg in zip(axes, configs, strict=True):
        key = cfg["selection_key"]
        xs = [0.0] + [float(r["point"]) for r in cfg["points"]]
        for role, style in (("treatment", "-"), ("control", ":")):
            for half, marker in (("report", "o"), ("select", "x")):
                base = cfg["base"] if half == "report" else cfg["base_select"]
                ys = [base.get(key)] + [r["curves"][role].get(key, {}).get(half) for r in cfg["points"]]
                ys = [math.nan if y is None else y for y in ys]
                if any(math.isfinite(y) for y in ys[1:]):
                    left.plot(xs, ys, linestyle=style, marker=marker, label=f"{role}, {half} half")
        if not key.startswith("seat/"):
            left.axhline(50, color="grey", linestyle="--", linewidth=1)
        base_ppl = cfg["base"].get("perplexity") or math.nan
        for role, style in (("treatment", "-"), ("control", ":")):
            ppl = [r["curves"][role].get("perplexity", {}).get("report") for r in cfg["points"]]
            changes = [0.0] + [100 * (p / base_ppl - 1) if p is not None else math.nan for p in ppl]
            if any(math.isfinite(c) for c in changes[1:]):
                right.plot(xs, changes, linestyle=style, marker="o", label=role)
        right.axhline(100 * (cfg["ppl_budget"] or 0), color="red", linestyle=":", label="budget")
        for ax in (left, right):
            if cfg["chosen"] is not None:
                ax.axvline(float(cfg["chosen"]), color="green", alpha=0.4, label="chosen lambda")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        left.set(xlabel="lambda", ylabel=key, title=f"{cfg['model']} {cfg['axis']} {cfg['config']}")
        right.set(xlabel="lambda", ylabel="perplexity change vs base (%)", title="language-model quality")
    fig.tight_layout()
    return fig


def write_outputs(summary: dict[str, Any], output: Path) -> list[Path]:
    """Write the charts, ``summary.json``, ``results.csv`` and ``report.md`` into ``output``, each atomically."""
    output = Path(output)
    portable = scrub_local_paths(summary)  # models and corpora by name: no folder of this machine in the outputs
    written, charts = [], []
    for name, draw in zip(CHARTS, (plot_bias_vs_quality, plot_lambda_curves), strict=True):
        fig = draw(portable)
        if fig is None:
            (output / name).unlink(missing_ok=True)  # a stale chart from an earlier grid
            continue
        with atomic_output(output / name, overwrite=True) as tmp:
            fig.savefig(tmp, dpi=110, format="png")
        _plt().close(fig)
        charts.append(name)
        written.append(output / name)
    summary["charts"] = portable["charts"] = charts
    texts = {
        "summary.json": dumps(portable, indent=1) + "\n",
        "results.csv": results_csv(portable),
        "report.md": markdown_report(portable),
    }
    for name, text in texts.items():
        with atomic_output(output / name, overwrite=True) as tmp:
            tmp.write_text(text, encoding="utf-8")
        written.append(output / name)
    return written
