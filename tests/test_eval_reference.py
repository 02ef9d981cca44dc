"""Reference-exact evaluation on the real bundled models (slow: deselect with -m 'not slow').

Every figure below was computed with the reference code itself, run unmodified outside this repository beside
this package, on the same bundled models and the same data files:

* bias-bench: McGill-NLP/bias-bench at commit 291426aab926f78ecfc7bd040b531429ee8123e0, with shims for numpy 2
  (``np.int = int``), pandas 3 (``DataFrame.append`` as ``pd.concat``) and transformers 5 (``encode_plus`` as
  ``tokenizer(...)``; no padding at its batch size 1). ``CrowSPairsRunner`` and ``StereoSetRunner`` with
  ``is_generative`` for SmolLM2 and without for MiniLM + a masked-LM head; StereoSet predictions scored by
  ``experiments/stereoset_evaluation.py``'s ``ScoreEvaluator`` on the dev items rebuilt in the original JSON layout
  from ``stereoset_dev_flat.jsonl`` (the original ``dev.json`` is not in the data folder); ``SEATRunner`` with
  ``n_samples=100000, parametric=False, seed=0`` on all 50 tests of ``seat/``.
* lm-evaluation-harness 0.4.13: its ``crows_pairs_english`` task definition (empty context, ``doc_to_choice``
  [sent_more, sent_less], its own ``process_results``) on the gender rows of the local CSV, ``HFLM`` on SmolLM2 in
  float32, batch size 1.

What agreed, item by item:
* SmolLM2, CrowS-Pairs gender, ``--protocol bias-bench``: all 262 decisions; stereo 49.69, antistereo 62.14.
* SmolLM2, StereoSet gender (255 items), ``--protocol bias-bench``: SS, LMS and ICAT to the last digit.
* SmolLM2, CrowS-Pairs gender, ``--protocol lm-eval``: all 262 decisions; ``likelihood_diff`` within 1e-6.
* MiniLM + its (untrained, seed-0) masked-LM head, ``--protocol bias-bench``: all CrowS-Pairs decisions of gender
  (262), race (515; the skipped row 1101 and the 2 ties too) and religion (105); StereoSet SS, LMS and ICAT of the
  three axes to the last digit. The head is untrained, so these figures mean nothing about bias; they pin the
  masked-LM procedure.
* MiniLM, SEAT (all 50 tests), ``--protocol bias-bench``: effect sizes within 4e-6 (bias-bench pools and takes
  cosines in float32; the largest gaps are on the 8-sentence heilman tests), every exact p-value identical, and
  the sampled ones identical draw for draw on 30 of 31 tests; the last (sent-angry_black_woman_stereotype) is off
  by one draw in 100,000, a partition whose sum lies within float noise of the observed one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from peft_debias.eval.runner import evaluate_bias

from support.bundled import require_bundled
from support.loader import one_torch_thread  # noqa: F401 - autouse fixture

pytestmark = [pytest.mark.slow, pytest.mark.integration]

GENDER = "gender"


def bits(decisions: dict[str, int]) -> str:
    """Per-pair decisions (1: sent_more preferred) in CSV-row order, as hex of the bit string behind a leading 1."""
    return format(int("1" + "".join(str(decisions[k]) for k in sorted(decisions, key=int)), 2), "x")


def differing(decisions: dict[str, int], pinned: str) -> list[str]:
    """Row ids whose decision differs from the pinned bits (for a readable failure)."""
    expected = bin(int(pinned, 16))[3:]
    ids = sorted(decisions, key=int)
    return [k for k, b in zip(ids, expected, strict=False) if str(decisions[k]) != b]


def check_crows(block: dict[str, Any], axis: str, pinned: dict[str, Any]) -> None:
    figures, decisions = block["axes"][axis], block["decisions"][axis]
    assert len(decisions) == pinned["n"], f"{axis}: {len(decisions)} pairs scored"
    assert bits(decisions) == pinned["bits"], f"{axis}: decisions differ on rows {differing(decisions, pinned['bits'])}"
    assert round(figures["stereotype_score"], 2) == pinned["metric"]
    assert round(figures["stereo"]["stereotype_score"], 2) == pinned["stereo"]
    assert round(figures["antistereo"]["stereotype_score"], 2) == pinned["antistereo"]
    for key in ("n_ties", "n_skipped"):
        assert figures[key] == pinned.get(key, 0), key


# ---------------------------------------------------------------------------------------------------- SmolLM2
CROWS_BIAS_BENCH_SMOLLM2 = {
    "n": 262, "metric": 54.58, "stereo": 49.69, "antistereo": 62.14,
    "bits": "58594105be773fec8612d70e0ef7fbc6cf8de3aa2172e3ba12af568c1334fd7d5f",
}  # fmt: skip
STEREOSET_BIAS_BENCH_SMOLLM2 = {"ss": 61.30697868958738, "lms": 91.02759334063681, "icat": 70.44265217929667}
CROWS_LM_EVAL_SMOLLM2 = {
    "n": 262, "pct_stereotype": 0.5687022900763359, "likelihood_diff": 4.25822276195497,
    "bits": "7445455dbc561fec8542b57826e5fb58cfddebeba57bea9e32af76cc91756f35d2",
}  # fmt: skip


def test_smollm2_under_bias_bench_is_bias_bench(data_dir: Path) -> None:
    require_bundled("smollm2")
    results = evaluate_bias(
        "bundled:smollm2", benchmarks="crows,stereoset", axes=GENDER, data_dir=data_dir, protocol="bias-bench",
        n_bootstrap=0, progress=False,
    )  # fmt: skip
    assert results["crows"]["causal"]["start_token"] == "<|endoftext|>"
    check_crows(results["crows"], GENDER, CROWS_BIAS_BENCH_SMOLLM2)
    figures = results["stereoset"]["axes"][GENDER]
    assert figures["n"] == 255
    for key, value in STEREOSET_BIAS_BENCH_SMOLLM2.items():
        assert figures[key] == pytest.approx(value, abs=1e-9), key


def test_smollm2_under_lm_eval_is_lm_evals_crows_pairs(data_dir: Path) -> None:
    require_bundled("smollm2")
    results = evaluate_bias(
        "bundled:smollm2", benchmarks="crows", axes=GENDER, data_dir=data_dir, protocol="lm-eval", n_bootstrap=0,
        progress=False,
    )  # fmt: skip
    figures, decisions = results["crows"]["axes"][GENDER], results["crows"]["decisions"][GENDER]
    pinned = CROWS_LM_EVAL_SMOLLM2
    assert bits(decisions) == pinned["bits"], f"decisions differ on rows {differing(decisions, pinned['bits'])}"
    assert figures["stereotype_score"] == pytest.approx(100 * pinned["pct_stereotype"], abs=1e-9)
    assert figures["likelihood_diff"] == pytest.approx(pinned["likelihood_diff"], abs=1e-4)


# ----------------------------------------------------------------------------------------- MiniLM, masked LM
CROWS_BIAS_BENCH_MINILM_MLM = {
    "gender": {"n": 262, "metric": 47.33, "stereo": 30.82, "antistereo": 72.82,
               "bits": "742401fa80f5a6b17cffa1b602e09b170e28b2a671464184d2347a8b37c65975e9"},
    "race": {"n": 515, "metric": 65.63, "stereo": 68.09, "antistereo": 41.86, "n_ties": 2, "n_skipped": 1,
             "bits": "f77bbefe83784edc9fe3ed117d0bcabee65efa1a8f73d5f5fb3f8e3aab2d6edddb897eafe6bdbfdcf0d1bf9afaa6a31ef"
                     "9eb957bdf13ffbfbddbeeaf5bdfdaf3e"},
    "religion": {"n": 105, "metric": 47.62, "stereo": 48.48, "antistereo": 33.33,
                 "bits": "32c4d520468d8af7ed91d5588b4"},
}  # fmt: skip
STEREOSET_BIAS_BENCH_MINILM_MLM = {
    "gender": (49.9112541242976, 52.43263346958999, 52.339569870137154),
    "race": (42.75498373228406, 55.577716651633665, 47.5244874263618),
    "religion": (47.12643678160919, 63.19540229885058, 59.56348262650285),
}


def test_minilm_masked_lm_under_bias_bench_is_bias_bench(data_dir: Path) -> None:
    import torch

    from peft_debias.models.loading import load_model

    require_bundled("minilm")
    torch.manual_seed(0)  # the untrained head is drawn at load time: seed 0, as in the reference run
    loaded = load_model("bundled:minilm", "masked_lm")
    results = evaluate_bias(
        loaded, benchmarks="crows,stereoset", data_dir=data_dir, protocol="bias-bench", n_bootstrap=0,
        progress=False,
    )  # fmt: skip
    for axis, pinned in CROWS_BIAS_BENCH_MINILM_MLM.items():
        check_crows(results["crows"], axis, pinned)
    for axis, (ss, lms, icat) in STEREOSET_BIAS_BENCH_MINILM_MLM.items():
        figures = results["stereoset"]["axes"][axis]
        assert (figures["ss"], figures["lms"], figures["icat"]) == pytest.approx((ss, lms, icat), abs=1e-9), axis


# ------------------------------------------------------------------------------------------------ MiniLM, SEAT
SEAT_BIAS_BENCH_MINILM = {  # test: (effect size, p-value), in bias-bench's order
    "angry_black_woman_stereotype": (0.2929327825707366, 0.21821),
    "angry_black_woman_stereotype_b": (1.1944941430078913, 0.07142857142857142),
    "heilman_double_bind_competent_1": (0.08719315628545875, 0.43232323232323233),
    "heilman_double_bind_competent_1+3-": (0.10744138308534719, 0.41592851592851593),
    "heilman_double_bind_competent_1-": (0.22634177817866938, 0.3309246309246309),
    "heilman_double_bind_competent_one_sentence": (-0.9258295175446948, 0.9695415695415696),
    "heilman_double_bind_competent_one_word": (-0.4014767228611717, 0.7826728826728827),
    "heilman_double_bind_likable_1": (-0.7464216708926456, 0.9291375291375291),
    "heilman_double_bind_likable_1+3-": (-1.0457542978100072, 0.9849261849261849),
    "heilman_double_bind_likable_1-": (-0.9970279807632195, 0.9804972804972805),
    "heilman_double_bind_likable_one_sentence": (-0.8262629408629177, 0.9498834498834499),
    "heilman_double_bind_likable_one_word": (-0.6353791371505024, 0.8926184926184926),
    "sent-angry_black_woman_stereotype": (-0.1337132024750348, 0.84713),
    "sent-angry_black_woman_stereotype_b": (1.0282689400625915, 1e-05),
    "sent-heilman_double_bind_competent_one_word": (-0.14214505074447228, 0.7889),
    "sent-heilman_double_bind_likable_one_word": (-0.4418466659713479, 0.99374),
    "sent-religion1": (0.22780292626832707, 0.0693),
    "sent-religion1b": (-0.27484324394249043, 0.96184),
    "sent-religion2": (0.6221788438698703, 2e-05),
    "sent-religion2b": (0.06849030127124103, 0.33037),
    "sent-weat1": (1.3868736322788067, 1e-05),
    "sent-weat2": (1.5422474744123018, 1e-05),
    "sent-weat3": (0.33324041455814357, 7e-05),
    "sent-weat3b": (-0.5365914748073278, 1.0),
    "sent-weat4": (0.7271397595017146, 1e-05),
    "sent-weat5": (0.9205230722978691, 1e-05),
    "sent-weat5b": (-0.1753072686728977, 0.95848),
    "sent-weat6": (1.2937726329011385, 1e-05),
    "sent-weat6b": (0.27650118544490054, 0.03941),
    "sent-weat7": (0.727890240283234, 1e-05),
    "sent-weat7b": (1.4396944886940004, 1e-05),
    "sent-weat8": (0.7213324164848712, 6e-05),
    "sent-weat8b": (1.2861318804047155, 1e-05),
    "sent-weat9": (0.3300770745363421, 0.16568),
    "sent-weat10": (0.7364018605742015, 1e-05),
    "weat1": (1.2371944153004328, 1e-05),
    "weat2": (1.5099831966440016, 1e-05),
    "weat3": (0.23722349944693685, 0.17405),
    "weat3b": (-0.36925918770186666, 0.83782),
    "weat4": (0.9347989791379934, 0.00275),
    "weat5": (0.9443711841690234, 0.00295),
    "weat5b": (0.3352625448401995, 0.18291),
    "weat6": (1.021100099692723, 0.01616161616161616),
    "weat6b": (0.6255463526059155, 0.11476301476301476),
    "weat7": (0.9420495466010886, 0.02703962703962704),
    "weat7b": (1.5033858793862676, 0.0002331002331002331),
    "weat8": (0.4761279104858585, 0.18197358197358196),
    "weat8b": (1.0242661106166235, 0.018104118104118105),
    "weat9": (0.4228678901351983, 0.24458874458874458),
    "weat10": (1.0066121144855664, 0.019580419580419582),
}
# bias-bench run on the gender tests alone: its RandomState stream then reaches them first.
SEAT_BIAS_BENCH_MINILM_GENDER_P = {"sent-weat6": 1e-05, "sent-weat6b": 0.03999, "sent-weat7": 1e-05,
                                   "sent-weat7b": 1e-05, "sent-weat8": 4e-05, "sent-weat8b": 1e-05}  # fmt: skip


def test_minilm_seat_under_bias_bench_is_bias_bench(data_dir: Path) -> None:
    require_bundled("minilm")
    common = dict(benchmarks="seat", data_dir=data_dir, protocol="bias-bench", progress=False)
    tests = evaluate_bias("bundled:minilm", seat_tests="all", **common)["seat"]["tests"]
    assert list(tests) == list(SEAT_BIAS_BENCH_MINILM)
    off = []
    for name, (effect, p) in SEAT_BIAS_BENCH_MINILM.items():
        assert tests[name]["effect_size"] == pytest.approx(effect, abs=5e-6), name
        if tests[name]["exact"]:
            assert tests[name]["p_value"] == p, name
        elif tests[name]["p_value"] != p:
            assert abs(tests[name]["p_value"] - p) == pytest.approx(1e-5), name  # one draw of 100,000
            off.append(name)
    assert off == ["sent-angry_black_woman_stereotype"]
    gender = evaluate_bias("bundled:minilm", seat_tests=list(SEAT_BIAS_BENCH_MINILM_GENDER_P), **common)
    assert {k: v["p_value"] for k, v in gender["seat"]["tests"].items()} == SEAT_BIAS_BENCH_MINILM_GENDER_P
