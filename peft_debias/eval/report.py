"""Human-readable views of results: a markdown report and a PNG chart comparing several result files.

:func:`markdown_report` takes one results dict (full tables: every SEAT test, intervals, the comparison if
present) or several (one column per run: a before/after or a lambda sweep). :func:`plot_results` draws one
panel per benchmark with one bar per run and axis, the CrowS / StereoSet bars with their 95% intervals and a
dashed line at the ideal (50). It draws on a bare matplotlib ``Figure`` with the Agg canvas (no display, no pyplot).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft_debias.core.atomic import atomic_output
from peft_debias.core.errors import DebiasError
from peft_debias.core.portable import scrub_local_paths
from peft_debias.core.provenance import placement_text, protocol_name
from peft_debias.eval.formatting import format_ci as _ci
from peft_debias.eval.formatting import format_number as _num
from peft_debias.eval.formatting import format_p as _p
from peft_debias.eval.results import PAIRED
from peft_debias.eval.sources import AXES


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A markdown table followed by a blank line."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return [*lines, *("| " + " | ".join(r) + " |" for r in rows), ""]


def _protocol_details(results: Mapping[str, Any]) -> str:
    """The protocol's summary and how causal sentences were scored, as a suffix of the report's protocol line."""
    record = results.get("protocol")
    summary = record.get("summary") if isinstance(record, Mapping) else None
    blocks = (results.get("crows"), results.get("stereoset"))
    causal = next((b["causal"] for b in blocks if b and b.get("causal")), None)
    parts = [summary] if summary else []
    if causal:
        parts.append(f"causal: {causal.get('score')}, first token after {causal.get('start_token')} "
                     f"({causal.get('first_token')})")  # fmt: skip
    return f" ({'; '.join(parts)})" if parts else ""


def _single(results: Mapping[str, Any]) -> list[str]:
    adapters = ", ".join(
        f"{a['path']} ({a['peft_type']}{', merged' if a.get('merged') else ''})" for a in results.get("adapters", [])
    )
    versions = ", ".join(f"{k} {v}" for k, v in results.get("versions", {}).items())
    out = [
        f"# Bias evaluation: {results.get('label', results.get('model'))}",
        "",
        f"- model: `{results.get('model')}` ({results.get('model_kind')}; {placement_text(results.get('placement'))})",
        f"- adapters: {adapters or 'none'}",
        f"- protocol: `{protocol_name(results)}`{_protocol_details(results)}",
        f"- created: {results.get('created', '')}; {versions}",
        "",
    ]
    seat = results.get("seat")
    if seat:
        out += [f"## SEAT ({seat.get('n_samples')} permutation samples; ideal effect size 0)", ""]
        axis_rows = [[a, _num(v["mean_abs_effect_size"], 3), str(v["n_tests"])] for a, v in seat["axes"].items()]
        out += _table(["axis", "mean abs effect size", "tests"], axis_rows)
        test_rows = [
            [n, t.get("axis") or "", _num(t["effect_size"], 3), _p(t["p_value"])] for n, t in seat["tests"].items()
        ]
        out += _table(["test", "axis", "effect size", "p-value"], test_rows)
    crows = results.get("crows")
    if crows:
        out += [f"## CrowS-Pairs ({crows.get('scoring')} scoring; stereotype score, ideal 50)", ""]
        lm_eval = any("likelihood_diff" in v for v in crows["axes"].values())
        rows = [
            [
                a,
                _num(v["stereotype_score"]) + _ci(v.get("ci95")),
                str(v["n"]),
                _num(v["stereo"]["stereotype_score"]),
                _num(v["antistereo"]["stereotype_score"]),
                *([_num(v.get("likelihood_diff"), 3)] if lm_eval else []),
            ]
            for a, v in crows["axes"].items()
        ]
        header = ["axis", "stereotype score [95% CI]", "n", "stereo pairs", "antistereo pairs"]
        out += _table(header + (["likelihood diff"] if lm_eval else []), rows)
    stereo = results.get("stereoset")
    if stereo:
        out += [f"## StereoSet intrasentence ({stereo.get('scoring')} scoring; ideal SS 50, LMS 100, ICAT 100)", ""]
        rows = [
            [
                a,
                *(_num(v[k]) + _ci(v.get("ci95", {}).get(k)) for k in ("ss", "lms", "icat")),
                str(v["n"]),
                str(v["n_targets"]),
            ]
            for a, v in stereo["axes"].items()
        ]
        out += _table(["axis", "SS [95% CI]", "LMS [95% CI]", "ICAT [95% CI]", "n", "targets"], rows)
    ppl = results.get("perplexity")
    if ppl:
        out += ["## Language-model quality", ""]
        row = [
            ppl["kind"].replace("_", "-"),
            _num(ppl["perplexity"]),
            str(ppl["n_tokens"]),
            f"{ppl['window']} / {ppl['stride'] or '-'}",
            str(ppl.get("text", "")),
        ]
        out += _table(["measure", "value", "tokens", "window / stride", "text"], [row])
    if results.get("seconds"):
        out += ["Seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in results["seconds"].items()), ""]
    if results.get("compare"):
        out += _compare_section(results["compare"])
    return out


def _compare_section(compare: Mapping[str, Any]) -> list[str]:
    other = compare.get("other", {})
    out = [f"## Compared with {other.get('label') or other.get('model')}", ""]
    rows = []
    for bench, (fig, yes, no) in {
        "crows": ("stereotype_score", "flipped_to_more", "flipped_to_less"),
        "stereoset": ("ss", "flipped_to_stereotype", "flipped_to_anti_stereotype"),
    }.items():
        for axis, c in compare.get(bench, {}).items():
            rows.append(
                [
                    f"{bench} {axis}",
                    f"{_num(c[fig])} vs {_num(c[f'other_{fig}'])}",
                    _num(c["delta"]),
                    f"{len(c[yes])} / {len(c[no])}",
                    str(c["n_common"]),
                    _p(c["mcnemar_p"]),
                ]
            )
    if rows:
        out += _table(["figure", "this vs other", "delta", "flips up / down", "paired items", "McNemar p"], rows)
    for axis, c in compare.get("seat", {}).items():
        out.append(
            f"- SEAT {axis} mean abs effect size: {_num(c['mean_abs_effect_size'], 3)} vs "
            f"{_num(c['other_mean_abs_effect_size'], 3)}"
        )
    if compare.get("perplexity"):
        c = compare["perplexity"]
        out.append(f"- perplexity: {_num(c['perplexity'])} vs {_num(c['other_perplexity'])} (x{_num(c['ratio'], 3)})")
    return [*out, ""]


def _multi(runs: Sequence[Mapping[str, Any]]) -> list[str]:
    labels = [str(r.get("label") or r.get("model")) for r in runs]
    rows = []
    specs = [
        ("seat", "SEAT mean abs ES", lambda b, a: (b["axes"].get(a, {}).get("mean_abs_effect_size"), None, 3)),
        (
            "crows",
            "CrowS score",
            lambda b, a: (b["axes"].get(a, {}).get("stereotype_score"), b["axes"].get(a, {}).get("ci95"), 2),
        ),
        (
            "stereoset",
            "StereoSet SS",
            lambda b, a: (b["axes"].get(a, {}).get("ss"), b["axes"].get(a, {}).get("ci95", {}).get("ss"), 2),
        ),
        ("stereoset", "StereoSet LMS", lambda b, a: (b["axes"].get(a, {}).get("lms"), None, 2)),
        ("stereoset", "StereoSet ICAT", lambda b, a: (b["axes"].get(a, {}).get("icat"), None, 2)),
    ]
    for bench, title, get in specs:
        for axis in AXES:
            cells = []
            for run in runs:
                block = run.get(bench)
                value, ci, digits = get(block, axis) if block else (None, None, 2)
                cells.append(_num(value, digits) + _ci(ci, digits) if value is not None else "")
            if any(cells):
                rows.append([f"{title} {axis}", *cells])
    ppl = [r.get("perplexity") for r in runs]
    if any(ppl):
        rows.append(["perplexity", *[_num(p["perplexity"]) if p else "" for p in ppl]])
    rows.insert(0, ["protocol", *[protocol_name(r) for r in runs]])
    return ["# Bias evaluation: comparison", "", *_table(["figure", *labels], rows)]


def markdown_report(results: Mapping[str, Any] | Sequence[Mapping[str, Any]]) -> str:
    """Markdown for one results dict (full tables) or several (one column each); a model, adapter or data file
    given as a local path is shown by its last part, as in the results file."""
    runs = [scrub_local_paths(results)] if isinstance(results, Mapping) else [scrub_local_paths(r) for r in results]
    if not runs:
        raise DebiasError("no results to report", "pass at least one results file")
    return "\n".join(_single(runs[0]) if len(runs) == 1 else _multi(runs))


def write_text(text: str, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a text file atomically (the report)."""
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


_PANELS = [  # (benchmark, figure, title, ideal line, interval key)
    ("seat", "mean_abs_effect_size", "SEAT mean |effect size| (ideal 0)", None, None),
    ("crows", "stereotype_score", "CrowS-Pairs stereotype score (ideal 50)", 50.0, "ci95"),
    ("stereoset", "ss", "StereoSet SS (ideal 50)", 50.0, "ss"),
    ("stereoset", "icat", "StereoSet ICAT (ideal 100)", None, "icat"),
]


def _error_bars(block: Mapping[str, Any], axes: Sequence[str], heights: Sequence[float], ci_key: str) -> Any:
    """Bar error extents (2 x axes: below, above) from each axis's 95% interval; 0 where there is none."""
    import numpy as np

    lows, highs = [], []
    for a, h in zip(axes, heights, strict=True):
        ci = block.get(a, {}).get("ci95")
        ci = ci.get(ci_key) if isinstance(ci, dict) else ci
        ok = ci and None not in ci and np.isfinite(h)
        lows.append(h - ci[0] if ok else 0.0)
        highs.append(ci[1] - h if ok else 0.0)
    return np.array([lows, highs])


def _draw_panel(ax: Any, runs: Sequence[Mapping[str, Any]], labels: Sequence[str], panel: tuple, colors: Any) -> None:
    """One benchmark figure: a group of bars per axis, one bar per run, and the ideal as a dashed line."""
    import numpy as np

    bench, key, name, ideal, ci_key = panel
    axes = [a for a in AXES if any((r.get(bench) or {}).get("axes", {}).get(a) for r in runs)]
    x = np.arange(len(axes))
    width = 0.8 / len(runs)
    for i, run in enumerate(runs):
        block = (run.get(bench) or {}).get("axes", {})
        values = [block.get(a, {}).get(key) for a in axes]
        heights = [np.nan if v is None else v for v in values]
        err = _error_bars(block, axes, heights, ci_key) if ci_key else None
        ax.bar(
            x + (i - (len(runs) - 1) / 2) * width,
            heights,
            width,
            yerr=err,
            capsize=3,
            color=colors[i % len(colors)],
            label=labels[i],
        )
    if ideal is not None:
        ax.axhline(ideal, color="black", linestyle="--", linewidth=1)
    ax.set_xticks(x, axes)
    ax.set_title(name, fontsize=10)
    ax.grid(axis="y", alpha=0.3)


def _draw_perplexity(ax: Any, runs: Sequence[Mapping[str, Any]], labels: Sequence[str], colors: Any) -> None:
    """The perplexity panel: one bar per run."""
    import numpy as np

    values = [(r.get("perplexity") or {}).get("perplexity") for r in runs]
    ax.bar(
        np.arange(len(runs)),
        [np.nan if v is None else v for v in values],
        color=[colors[i % len(colors)] for i in range(len(runs))],
    )
    kinds = {(r.get("perplexity") or {}).get("kind", "perplexity") for r in runs} - {None}
    ax.set_xticks(np.arange(len(runs)), labels, rotation=15, fontsize=8)
    ax.set_title(f"{' / '.join(sorted(kinds)).replace('_', '-')} (lower is better)", fontsize=10)
    ax.grid(axis="y", alpha=0.3)


def _legend_and_title(fig: Any, first_ax: Any, n_runs: int, title: str | None) -> list[Any]:
    """The legend above the panels and the title; returned so that the tight bounding box keeps them."""
    handles, names = first_ax.get_legend_handles_labels()
    extra = []
    if handles:  # above the panels; savefig's tight bounding box keeps it and trims the margins
        extra.append(
            fig.legend(
                handles,
                names,
                loc="lower center",
                bbox_to_anchor=(0.5, 1.0),
                ncol=min(n_runs, 4),
                fontsize=9,
                frameon=False,
            )
        )
    if title:
        extra.append(fig.suptitle(title, y=1.04 if handles else 1.0))
    return extra


def chart_figure(
    runs: Sequence[Mapping[str, Any]], *, labels: Sequence[str] | None = None, title: str | None = None
) -> Chart:
    """The chart comparing runs, drawn but not saved (see :func:`plot_results`); ``Chart.save(path)`` writes it."""
    import matplotlib
    from matplotlib.figure import Figure

    if not runs:
        raise DebiasError("no results to plot", "pass at least one results file")
    labels = list(labels) if labels else [str(r.get("label") or r.get("model")) for r in runs]
    if len(labels) != len(runs):
        raise DebiasError(f"{len(labels)} labels for {len(runs)} result files", "pass one label per file")
    panels = [p for p in _PANELS if any(r.get(p[0]) for r in runs)]
    has_ppl = any(r.get("perplexity") for r in runs)
    n = len(panels) + int(has_ppl)
    if n == 0:
        raise DebiasError("the result files hold no benchmark figures", "pass files written by peft-debias eval")
    cols = min(n, 2)
    rows = (n + cols - 1) // cols
    fig = Figure(figsize=(6.4 * cols, 3.9 * rows))
    grid = fig.subplots(rows, cols, squeeze=False)
    colors = matplotlib.colormaps["tab10"].colors
    for ax, panel in zip(grid.flat, panels, strict=False):
        _draw_panel(ax, runs, labels, panel, colors)
    if has_ppl:
        _draw_perplexity(grid.flat[len(panels)], runs, labels, colors)
    for ax in list(grid.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    return Chart(fig, _legend_and_title(fig, grid.flat[0], len(runs), title))


@dataclass
class Chart:
    """A drawn chart: the matplotlib figure and the artists (legend, title) outside its axes."""

    figure: Any
    extra: list[Any]

    def save(self, path: str | os.PathLike) -> None:
        """Write the PNG to ``path`` as it is (callers write into a temporary path of an atomic output)."""
        self.figure.savefig(path, format="png", dpi=120, bbox_inches="tight", bbox_extra_artists=self.extra)


def plot_results(
    runs: Sequence[Mapping[str, Any]],
    output: str | os.PathLike,
    *,
    labels: Sequence[str] | None = None,
    overwrite: bool = False,
    title: str | None = None,
) -> Path:
    """A PNG comparing runs: a panel per benchmark, bars per axis and run (95% intervals where known).

    Drawn on a bare :class:`matplotlib.figure.Figure` (Agg canvas), so no pyplot state or backend is touched.
    """
    chart = chart_figure(runs, labels=labels, title=title)
    with atomic_output(output, overwrite=overwrite) as tmp:
        chart.save(tmp)
    return Path(output)


def text_summary(results: Mapping[str, Any]) -> list[str]:
    """A few lines for the terminal: the headline figure per benchmark and axis, and the comparison."""
    out = [
        f"{results.get('label')}: {results.get('model')} ({results.get('model_kind')}; "
        f"protocol {protocol_name(results)}; {placement_text(results.get('placement'))})"
    ]
    seat = results.get("seat")
    if seat:
        axes = "; ".join(
            f"{a} {_num(v['mean_abs_effect_size'], 3)} ({v['n_tests']} tests)" for a, v in seat["axes"].items()
        )
        out.append(f"seat: mean |effect size| {axes or '-'}; {len(seat['tests'])} tests")
    crows = results.get("crows")
    if crows:
        out.append(
            f"crows ({crows['scoring']}): "
            + "; ".join(
                f"{a} {_num(v['stereotype_score'])}{_ci(v.get('ci95'))} n={v['n']}" for a, v in crows["axes"].items()
            )
        )
    stereo = results.get("stereoset")
    if stereo:
        out.append(
            f"stereoset ({stereo['scoring']}): "
            + "; ".join(
                f"{a} SS {_num(v['ss'])}{_ci(v.get('ci95', {}).get('ss'))} LMS {_num(v['lms'])} ICAT {_num(v['icat'])} "
                f"n={v['n']}"
                for a, v in stereo["axes"].items()
            )
        )
    ppl = results.get("perplexity")
    if ppl:
        out.append(
            f"{ppl['kind'].replace('_', '-')}: {_num(ppl['perplexity'])} on {ppl['n_tokens']} tokens of "
            f"{ppl.get('text', '')}"
        )
    compare = results.get("compare")
    if compare:
        other = compare.get("other", {})
        for bench, (fig, yes, no) in PAIRED.items():
            for axis, c in compare.get(bench, {}).items():
                out.append(
                    f"compare with {other.get('label')}: {bench} {axis} {_num(c[fig])} vs "
                    f"{_num(c[f'other_{fig}'])} ({'+' if (c['delta'] or 0) >= 0 else ''}{_num(c['delta'])}), "
                    f"{len(c[yes])} flipped up, {len(c[no])} down of {c['n_common']}, "
                    f"McNemar p={_p(c['mcnemar_p'])}"
                )
    for bench, axes in results.get("fidelity", {}).get("decisions", {}).items():
        out += [f"vs float32: {bench} {a}: {f['differ']} of {f['of']} decisions differ" for a, f in axes.items()]
    return out
