"""Lambda sweeps: evaluate ``theta_pre - lambda * V`` at several strengths (and for several combinations of axes).

The base model is loaded once; for every point the touched parameters are restored from an exact copy and the
vector is applied in place, then ``evaluate_fn(model, tokenizer) -> results`` runs (by default
:func:`peft_debias.eval.evaluate_bias`). Lambda 0 (the base) is always evaluated first as the reference. The
chosen lambda is the largest whose perplexity increase over the base stays within ``ppl_threshold``: the Bias
Vector paper saw representation collapse at large lambda (DESIGN.md section 5: +9% at 1, +34% at 2 on SmolLM2).
The eval suite has no validation split of the bias benchmarks, so the choice rests on perplexity alone; point
``ppl_file`` at held-out text that is not the test text when the choice matters.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from peft_debias.core.atomic import atomic_output
from peft_debias.core.errors import DebiasError
from peft_debias.core.jsonio import write_json
from peft_debias.vector.bias_vector import BiasVector
from peft_debias.vector.meta import check_scalar

logger = logging.getLogger(__name__)

EvaluateFn = Callable[[Any, Any], Mapping[str, Any]]


@dataclass
class SweepConfig:
    """What a sweep evaluates and how it picks lambda."""

    lambdas: list[float] = field(default_factory=lambda: [0.25, 0.5, 1.0, 2.0, 4.0])
    ppl_threshold: float = field(default=0.10, metadata={"help": "largest allowed relative perplexity increase"})

    def validate(self) -> SweepConfig:
        if not self.lambdas:
            raise DebiasError("no lambda to sweep", "pass e.g. --lambda 0.5,1,2")
        self.lambdas = sorted({check_scalar(x) for x in self.lambdas})
        if not (math.isfinite(self.ppl_threshold) and self.ppl_threshold >= 0):
            raise DebiasError(f"perplexity threshold {self.ppl_threshold} is not >= 0", "pass e.g. 0.1 (10%)")
        return self


def parse_lambdas(text: str) -> list[float]:
    """``"0.25,0.5,1"`` -> floats; NaN, infinities and non-numbers are errors."""
    values = []
    for part in str(text).split(","):
        try:
            value = float(part.strip())
        except ValueError:
            raise DebiasError(f"lambda {part.strip()!r} is not a number", "pass e.g. --lambda 0.5,1,2") from None
        values.append(check_scalar(value))
    return values


def summarize(results: Mapping[str, Any]) -> dict[str, float | None]:
    """Flatten eval results (schema of :mod:`peft_debias.eval`) to ``{"crows/gender": ..., "perplexity": ...}``."""
    out: dict[str, float | None] = {}
    for axis, row in (results.get("crows", {}).get("axes") or {}).items():
        out[f"crows/{axis}"] = row.get("stereotype_score")
    for axis, row in (results.get("stereoset", {}).get("axes") or {}).items():
        for key in ("ss", "lms", "icat"):
            out[f"stereoset/{axis}/{key}"] = row.get(key)
    for axis, row in (results.get("seat", {}).get("axes") or {}).items():
        out[f"seat/{axis}"] = row.get("mean_abs_effect_size")
    if "perplexity" in results:
        ppl = results["perplexity"]
        out["perplexity"] = ppl.get("perplexity") if isinstance(ppl, Mapping) else ppl
    return out


class _Restorer:
    """Exact copies of the parameters a set of vectors touches, to reset the model between sweep points."""

    def __init__(self, model: torch.nn.Module, vectors: Sequence[BiasVector]) -> None:
        params = dict(model.named_parameters())
        names = {n for v in vectors for n in v if n in params}
        self.saved = {n: params[n].detach().to("cpu", copy=True) for n in sorted(names)}  # off the accelerator
        self.params = params

    def restore(self) -> None:
        with torch.no_grad():
            for name, value in self.saved.items():
                self.params[name].copy_(value)


def lambda_sweep(
    model: torch.nn.Module,
    tokenizer: Any,
    vectors: Mapping[str, BiasVector],
    evaluate_fn: EvaluateFn,
    config: SweepConfig | None = None,
    *,
    baseline: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Evaluate the base and ``base - lam * V`` for every vector (label -> vector) and lambda.

    ``baseline``: results of ``evaluate_fn`` on the unchanged model, if already at hand (not evaluated again).

    Returns ``{"lambdas", "ppl_threshold", "baseline": metrics, "points": [{"label", "lambda", "metrics",
    "ppl_increase"}], "chosen": {label: lambda or None}, "results": {"base": raw, "<label>@<lam>": raw}}``.
    The model is left as it was (restored exactly).
    """
    from tqdm.auto import tqdm

    config = (config or SweepConfig()).validate()
    if not vectors:
        raise DebiasError("no bias vector to sweep", "pass at least one")
    restorer = _Restorer(model, list(vectors.values()))
    raw: dict[str, Any] = {"base": dict(baseline if baseline is not None else evaluate_fn(model, tokenizer))}
    base_metrics = summarize(raw["base"])
    points = []
    bar = tqdm(total=len(vectors) * len(config.lambdas), desc="lambda sweep", unit="point", disable=None)
    try:
        for label, vector in vectors.items():
            for lam in config.lambdas:
                restorer.restore()
                vector.apply_to(model, scale=-lam)
                results = dict(evaluate_fn(model, tokenizer))
                raw[f"{label}@{lam:g}"] = results
                metrics = summarize(results)
                points.append({"label": label, "lambda": lam, "metrics": metrics, **_ppl_change(metrics, base_metrics)})
                bar.update(1)
                logger.info("%s lambda %g: %s", label, lam, _short(metrics))
    finally:
        restorer.restore()
        bar.close()
    chosen = {label: _choose(points, label, config.ppl_threshold) for label in vectors}
    return {
        "lambdas": config.lambdas,
        "ppl_threshold": config.ppl_threshold,
        "baseline": base_metrics,
        "points": points,
        "chosen": chosen,
        "results": raw,
    }


def _ppl_change(metrics: Mapping[str, Any], baseline: Mapping[str, Any]) -> dict[str, float | None]:
    ppl, base = metrics.get("perplexity"), baseline.get("perplexity")
    if ppl is None or base is None or not base:
        return {"ppl_increase": None}
    return {"ppl_increase": ppl / base - 1.0}


def _choose(points: list[dict[str, Any]], label: str, threshold: float) -> float | None:
    ok = [
        p["lambda"]
        for p in points
        if p["label"] == label and p["ppl_increase"] is not None and p["ppl_increase"] <= threshold
    ]
    return max(ok) if ok else None


def _short(metrics: Mapping[str, Any]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in metrics.items() if isinstance(v, float))


def sweep_table(sweep: Mapping[str, Any]) -> str:
    """A markdown table: one row per point (and the base), one column per metric."""
    keys = sorted({k for p in sweep["points"] for k in p["metrics"]} | set(sweep["baseline"]))
    keys = [k for k in keys if k != "perplexity"] + (["perplexity"] if "perplexity" in keys else [])
    header = ["vector", "lambda", *keys, "ppl change"]
    rows = [["base", "0", *(_fmt(sweep["baseline"].get(k)) for k in keys), ""]]
    for p in sweep["points"]:
        change = "n/a" if p["ppl_increase"] is None else f"{100 * p['ppl_increase']:+.1f}%"
        rows.append([p["label"], f"{p['lambda']:g}", *(_fmt(p["metrics"].get(k)) for k in keys), change])
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    chosen = ", ".join(f"{k}: {'none' if v is None else f'{v:g}'}" for k, v in sweep["chosen"].items())
    lines += ["", f"Largest lambda within +{100 * sweep['ppl_threshold']:.0f}% perplexity: {chosen}."]
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def plot_sweep(sweep: Mapping[str, Any], path: str | Path) -> Path:
    """Bias metrics (left) and perplexity (right) against lambda, one line per vector; saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(sweep["chosen"])
    bias_keys = sorted(
        k for k in sweep["baseline"] if k.startswith("crows/") or (k.startswith("stereoset/") and k.endswith("/ss"))
    )
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label in labels:
        pts = [p for p in sweep["points"] if p["label"] == label]
        xs = [0.0] + [p["lambda"] for p in pts]
        for key in bias_keys:
            ys = [sweep["baseline"].get(key)] + [p["metrics"].get(key) for p in pts]
            left.plot(xs, [math.nan if y is None else y for y in ys], marker="o", label=f"{label}: {key}")
        ppl = [sweep["baseline"].get("perplexity")] + [p["metrics"].get("perplexity") for p in pts]
        right.plot(xs, [math.nan if y is None else y for y in ppl], marker="o", label=label)
    left.axhline(50, color="grey", linestyle="--", linewidth=1)
    left.set(xlabel="lambda", ylabel="stereotype score (ideal 50)", title="bias")
    base_ppl = sweep["baseline"].get("perplexity")
    if base_ppl:
        right.axhline(
            base_ppl * (1 + sweep["ppl_threshold"]),
            color="red",
            linestyle=":",
            linewidth=1,
            label=f"+{100 * sweep['ppl_threshold']:.0f}% threshold",
        )
    right.set(xlabel="lambda", ylabel="perplexity", title="language-model quality")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_sweep(sweep: Mapping[str, Any], output: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``sweep.json``, ``sweep.md`` and ``sweep.png`` into the folder ``output`` (atomically)."""
    with atomic_output(output, overwrite=overwrite, directory=True) as tmp:
        write_json(tmp / "sweep.json", sweep)
        (tmp / "sweep.md").write_text(sweep_table(sweep), encoding="utf-8")
        plot_sweep(sweep, tmp / "sweep.png")
    return Path(output)


def evaluate_with_suite(**eval_options: Any) -> EvaluateFn:
    """An ``evaluate_fn`` running :func:`peft_debias.eval.evaluate_bias` with fixed options (benchmarks, axes,
    data_dir, kind, ppl_max_tokens, ...)."""

    def evaluate(model: Any, tokenizer: Any) -> Mapping[str, Any]:
        from peft_debias.eval import evaluate_bias

        return evaluate_bias(model, tokenizer, **eval_options)

    return evaluate
