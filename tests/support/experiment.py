"""Shared piece of the experiment tests: an eval-results dict (the schema of :mod:`peft_debias.eval`) built from
per-item CrowS decisions and StereoSet items, so the harness can recompute figures on any half."""

from __future__ import annotations

from typing import Any

from peft_debias.experiment.splits import crows_score, stereoset_scores


def results_from_items(decisions: dict[str, int], items: dict[str, dict[str, Any]], **extra: Any) -> dict:
    """``{"crows": ..., "stereoset": ...}`` for gender from per-item data, plus ``extra`` benchmark blocks."""
    return {
        "crows": {"axes": {"gender": {"stereotype_score": crows_score(decisions)}}, "decisions": {"gender": decisions}},
        "stereoset": {
            "axes": {"gender": stereoset_scores(items)},
            "decisions": {"gender": {k: v["pro"] for k, v in items.items()}},
            "items": {"gender": items},
        },
        **extra,
    }
