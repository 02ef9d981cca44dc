"""Bias evaluation: SEAT, CrowS-Pairs, StereoSet intrasentence and LM quality, batched and exact.

Entry point: :func:`evaluate_bias` (``peft-debias eval`` on the command line). Metric definitions follow the
published ones (DESIGN section 4) and are cited in each module: :mod:`.seat`, :mod:`.crows`, :mod:`.stereoset`,
:mod:`.perplexity`; the statistics (effect size, permutation test, bootstrap, McNemar) are in :mod:`.stats`.

Results schema (version 1; a JSON object, NaN written as null)::

    {
      "schema_version": 1,
      "label": str,                       # name in reports/charts (default: model + adapter names)
      "model": str, "model_kind": "masked_lm" | "causal_lm" | "encoder",
      "adapters": [{"path", "peft_type", "task_type", "merged": bool}],
      "benchmarks": [str], "axes": ["gender", "race", "religion"],
      "protocol": {"name": "default" | "bias-bench" | "lm-eval", "summary"},   # eval/protocols.py
      "config": {EvalConfig fields; the protocol's switches as applied},
      "versions": {"peft_debias", "torch", "transformers", "peft", "numpy", "python"},
      "created": ISO time, "seconds": {"load", <benchmark>..., "total"},
      "seat": {
        "protocol",
        "tests": {<test file stem>: {"effect_size", "association_gap", "p_value", "axis": axis | null, "exact": bool,
                                     "n_permutations", "n": {"targ1", "targ2", "attr1", "attr2"}, "categories"}},
        "axes": {<axis>: {"mean_abs_effect_size", "mean_abs_association_gap", "n_tests", "tests": [str]}},
        "n_samples", "n_sentences", "source", "seconds"},
      "crows": {
        "protocol", "scoring": "masked" | "causal", "mlm_tokens": "shared" | "diff" | null,
        "causal": {"start_token", "first_token", "special_tokens", "score"} | null,
        "axes": {<axis>: {"stereotype_score", "ci95": [lo, hi], "n", "n_more_preferred", "n_ties", "n_skipped",
                          "likelihood_diff" (lm-eval protocol only),
                          "stereo": {"stereotype_score", "n"}, "antistereo": {"stereotype_score", "n"}}},
        "decisions": {<axis>: {<CSV row id>: 1 if sent_more scored higher else 0}}, "source", "seconds"},
      "stereoset": {
        "protocol", "scoring": "masked" | "causal", "mlm_filler_mean": "logprob" | "prob" | null, "causal",
        "axes": {<axis>: {"ss", "lms", "icat", "n", "n_targets", "ci95": {"ss", "lms", "icat"}}},
        "decisions": {<axis>: {<item id>: 1 if stereotype scored above anti-stereotype else 0}},
        "items": {<axis>: {<item id>: {"target", "pro": 0/1, "related": 0-2}}},   # SS/LMS on any item subset
        "source", "seconds"},
      # "source" is {"path", "sha256", ...} or {"hub": id}; with EvalConfig.split also {"split", "split_seed"}:
      # CrowS/StereoSet then hold only that half of the items (eval/splits.py)
      "perplexity": {"perplexity", "kind": "perplexity" | "pseudo_perplexity", "nll", "n_tokens", "window",
                     "stride", "text", "source", "seconds"},
      "compare": {                        # only with compare=: deltas are this run minus the other
        "other": {"label", "model", "adapters"},
        "crows": {<axis>: {"stereotype_score", "other_stereotype_score", "delta", "n_common", "n_only_here",
                           "n_only_other", "flipped_to_more": [id], "flipped_to_less": [id], "mcnemar_p"}},
        "stereoset": {<axis>: {"ss", "other_ss", "delta", ..., "flipped_to_stereotype": [id],
                               "flipped_to_anti_stereotype": [id], "mcnemar_p"}},
        "seat": {<axis>: {"mean_abs_effect_size", "other_mean_abs_effect_size", "delta"}},
        "perplexity": {"perplexity", "other_perplexity", "ratio"}}
    }

``source`` is ``{"file", "sha256"}`` (first 16 hex digits), ``{"folder"}`` or ``{"hub"}``. Axes keys are
``gender``, ``race`` (CrowS ``race-color``) and ``religion``. CrowS item ids are the CSV's row index;
StereoSet ids are the original ``id`` or, for the flattened file, a hash of the item's content.
"""

from __future__ import annotations

import importlib
from typing import Any

# Imported on first use (like the top-level package), so that e.g. reading results or drawing a chart does not
# import torch.
_EXPORTS = {
    "AXES": "sources",
    "BENCHMARKS": "benchmarks",
    "Benchmark": "benchmarks",
    "EvalConfig": "benchmarks",
    "SEAT_AXIS_TESTS": "seat",
    "compare_results": "results",
    "evaluate_bias": "runner",
    "load_results": "results",
    "markdown_report": "report",
    "plot_results": "report",
    "register_benchmark": "benchmarks",
    "save_results": "results",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
