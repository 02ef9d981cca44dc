"""Results files: writing and reading them, and comparing two runs item by item.

A results file is the JSON dict :func:`~peft_debias.eval.evaluate_bias` returns (schema in
:mod:`peft_debias.eval`). It keeps every CrowS-Pairs and StereoSet per-item decision keyed by a stable item id,
so two files alone are enough for a paired comparison: the items whose decision flipped, and an exact McNemar
test on them (:func:`compare_results`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from peft_debias.core.atomic import atomic_output
from peft_debias.core.errors import DebiasError, one_line
from peft_debias.core.jsonio import dumps
from peft_debias.core.portable import scrub_local_paths
from peft_debias.core.provenance import protocol_name
from peft_debias.eval.stats import mcnemar_exact

SCHEMA_VERSION = 1
# benchmark -> (headline figure, name of "now yes, before no" list, name of "now no, before yes" list)
PAIRED = {
    "crows": ("stereotype_score", "flipped_to_more", "flipped_to_less"),
    "stereoset": ("ss", "flipped_to_stereotype", "flipped_to_anti_stereotype"),
}


def results_text(results: Mapping[str, Any]) -> str:
    """The text of a results file: indented strict JSON and a newline, with no local path in it: a model,
    adapter or data file given as a path is recorded by its last part
    (:func:`~peft_debias.core.portable.scrub_local_paths`)."""
    return dumps(scrub_local_paths(results)) + "\n"


def save_results(results: Mapping[str, Any], path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write results as indented strict JSON, atomically."""
    with atomic_output(path, overwrite=overwrite) as tmp:
        tmp.write_text(results_text(results), encoding="utf-8")
    return Path(path)


def load_results(path: str | os.PathLike) -> dict[str, Any]:
    """Read a results file written by ``peft-debias eval``; clear errors for anything else."""
    path = Path(path)
    if not path.is_file():
        raise DebiasError(f"results file {path} not found", "pass a JSON file written by peft-debias eval --output")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise DebiasError(
            f"results file {path} is not valid JSON: {one_line(err, 120)}", "pass a results file"
        ) from err
    if not isinstance(data, dict) or "schema_version" not in data or "model" not in data:
        raise DebiasError(
            f"{path} is not a peft-debias results file (no schema_version/model keys)",
            "pass a JSON file written by peft-debias eval --output",
        )
    if data["schema_version"] != SCHEMA_VERSION:
        raise DebiasError(
            f"results file {path} has schema version {data['schema_version']}, this version reads {SCHEMA_VERSION}",
            "re-run the evaluation with this version",
        )
    data.setdefault("label", path.stem)
    return data


def _natural(key: str) -> tuple[int, Any]:
    return (0, int(key)) if re.fullmatch(r"\d+", key) else (1, key)


def _paired(here: Mapping[str, Any], there: Mapping[str, Any], bench: str) -> dict[str, Any]:
    figure, yes_name, no_name = PAIRED[bench]
    out = {}
    for axis in here.get("axes", {}):
        if axis not in there.get("axes", {}):
            continue
        mine, theirs = here.get("decisions", {}).get(axis, {}), there.get("decisions", {}).get(axis, {})
        common = sorted(set(mine) & set(theirs), key=_natural)
        to_yes = [i for i in common if mine[i] and not theirs[i]]
        to_no = [i for i in common if not mine[i] and theirs[i]]
        a, b = here["axes"][axis][figure], there["axes"][axis][figure]
        out[axis] = {
            figure: a,
            f"other_{figure}": b,
            "delta": None if a is None or b is None else a - b,
            "n_common": len(common),
            "n_only_here": len(set(mine) - set(theirs)),
            "n_only_other": len(set(theirs) - set(mine)),
            yes_name: to_yes,
            no_name: to_no,
            "mcnemar_p": mcnemar_exact(len(to_yes), len(to_no)),
        }
    return out


def compare_results(current: Mapping[str, Any], other: Mapping[str, Any]) -> dict[str, Any]:
    """Compare two results dicts: paired CrowS / StereoSet decisions (flips + exact McNemar p), SEAT mean |ES|
    per axis and perplexity. Deltas are ``current - other``. Runs of different protocols are not comparable."""
    mine, theirs = protocol_name(current), protocol_name(other)
    if mine != theirs:
        raise DebiasError(
            f"the runs used different scoring protocols ({mine} and {theirs}), so their figures are not comparable",
            f"evaluate both with the same --protocol (e.g. rerun the other with --protocol {mine})",
        )
    out: dict[str, Any] = {
        "other": {"label": other.get("label"), "model": other.get("model"), "adapters": other.get("adapters", [])}
    }
    for bench in PAIRED:
        if bench in current and bench in other:
            out[bench] = _paired(current[bench], other[bench], bench)
    if "seat" in current and "seat" in other:
        out["seat"] = {}
        for axis, fig in current["seat"].get("axes", {}).items():
            theirs = other["seat"].get("axes", {}).get(axis)
            if theirs:
                a, b = fig["mean_abs_effect_size"], theirs["mean_abs_effect_size"]
                out["seat"][axis] = {
                    "mean_abs_effect_size": a,
                    "other_mean_abs_effect_size": b,
                    "delta": None if a is None or b is None else a - b,
                }
    if "perplexity" in current and "perplexity" in other:
        a, b = current["perplexity"]["perplexity"], other["perplexity"]["perplexity"]
        out["perplexity"] = {"perplexity": a, "other_perplexity": b, "ratio": a / b if a and b else None}
    return out
