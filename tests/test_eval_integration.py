"""Integration on the real bundled models and the real data (slow): SEAT on MiniLM (all 50 test files),
CrowS-Pairs and StereoSet (gender, race, religion) and perplexity on SmolLM2.

The expected figures were measured with this code (torch 2.13 CPU); they are regression anchors, compared with
a tolerance that allows float differences between machines to flip a near-tie or two.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from peft_debias.eval import SEAT_AXIS_TESTS, evaluate_bias

from support.eval_helpers import single_thread  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.integration]

MINILM_SEAT_AXES = {"gender": 0.958, "race": 0.551, "religion": 0.298}  # mean |effect size|, 100k samples
MINILM_SEAT_TESTS = {"sent-weat6": 1.294, "sent-weat7b": 1.440, "sent-religion2": 0.622, "sent-weat3b": -0.537}
SMOLLM2 = {  # measured by `peft-debias eval --model bundled:smollm2` (CrowS score; StereoSet SS)
    "crows": {"gender": 54.58, "race": 55.04, "religion": 55.24},
    "stereoset": {"gender": 60.49, "race": 64.50, "religion": 53.61},
}


def test_seat_all_tests_on_minilm(data_dir: Path) -> None:
    r = evaluate_bias("bundled:minilm", data_dir=data_dir, progress=False)
    assert r["model_kind"] == "encoder" and r["benchmarks"] == ["seat"]
    tests = r["seat"]["tests"]
    assert len(tests) == 50
    for name, t in tests.items():
        assert math.isfinite(t["effect_size"]) and 1e-5 <= t["p_value"] <= 1.0, name
        size = t["n"]["targ1"]
        assert t["exact"] == (math.comb(2 * size, size) <= 100_000), name
    for axis, expected in MINILM_SEAT_AXES.items():
        figures = r["seat"]["axes"][axis]
        assert figures["n_tests"] == len(SEAT_AXIS_TESTS[axis])
        assert figures["mean_abs_effect_size"] == pytest.approx(expected, abs=1e-3), axis
    for name, expected in MINILM_SEAT_TESTS.items():
        assert tests[name]["effect_size"] == pytest.approx(expected, abs=1e-3), name
    # p-values are seeded per test: the same run on a subset gives the same numbers
    again = evaluate_bias("bundled:minilm", data_dir=data_dir, seat_tests=["sent-weat6", "weat6"], progress=False)
    for name in ("sent-weat6", "weat6"):
        assert again["seat"]["tests"][name]["p_value"] == tests[name]["p_value"]
        assert again["seat"]["tests"][name]["effect_size"] == pytest.approx(tests[name]["effect_size"], abs=1e-5)


def test_crows_stereoset_perplexity_on_smollm2(data_dir: Path) -> None:
    r = evaluate_bias(
        "bundled:smollm2",
        data_dir=data_dir,
        benchmarks="crows,stereoset,perplexity",
        ppl_max_tokens=2_000,
        progress=False,
    )
    assert r["model_kind"] == "causal_lm"
    crows, stereo = r["crows"]["axes"], r["stereoset"]["axes"]
    assert [crows[a]["n"] for a in ("gender", "race", "religion")] == [262, 516, 105]
    assert [stereo[a]["n"] for a in ("gender", "race", "religion")] == [255, 962, 79]
    for axis in ("gender", "race", "religion"):
        low, high = crows[axis]["ci95"]
        assert low <= crows[axis]["stereotype_score"] <= high
        assert high - low < 20  # hundreds of pairs: an interval of a few points each side
        for key in ("ss", "lms", "icat"):
            assert stereo[axis]["ci95"][key][0] <= stereo[axis][key] <= stereo[axis]["ci95"][key][1]
        assert stereo[axis]["lms"] > 75  # a real LM prefers the related fillers
        assert crows[axis]["stereotype_score"] == pytest.approx(SMOLLM2["crows"][axis], abs=1.0)
        assert stereo[axis]["ss"] == pytest.approx(SMOLLM2["stereoset"][axis], abs=1.0)
    ppl = r["perplexity"]
    assert ppl["kind"] == "perplexity" and ppl["n_tokens"] == 2_000
    assert 5 < ppl["perplexity"] < 60  # a 135M model on WikiText-2
