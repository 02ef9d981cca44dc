"""Experiment statistics and item splits against hand-computed values."""

from __future__ import annotations

import math

import pytest

from peft_debias.experiment.splits import (
    REPORT,
    SELECT,
    crows_score,
    fill_item_groups,
    point_decisions,
    point_metrics,
    split_ids,
    stereoset_scores,
    value,
)
from peft_debias.experiment.stats import (
    bias_distance,
    combined_p,
    mean_sd,
    paired_t_test,
    pooled_mcnemar,
    sign_flip_p,
    summarize,
    t_cdf,
    t_quantile,
    t_two_sided_p,
)

from support.experiment import results_from_items


def test_mean_and_sample_sd() -> None:
    mean, sd, n = mean_sd([1.0, 2.0, 3.0, 6.0])
    assert (mean, n) == (3.0, 4)
    assert sd == pytest.approx(math.sqrt(14 / 3))  # deviations -2, -1, 0, 3: 14 / (n - 1)
    assert mean_sd([5.0, None, float("nan")])[:1] == (5.0,) and math.isnan(mean_sd([5.0])[1])
    assert mean_sd([])[2] == 0


def test_student_t_against_closed_forms() -> None:
    # df = 1 is the Cauchy distribution: P(|T| >= 1) = 1/2; df = 2: CDF = 1/2 + t / (2 sqrt(2 + t^2)).
    assert t_two_sided_p(1.0, 1) == pytest.approx(0.5, abs=1e-12)
    for t in (0.3, 1.7, 4.0):
        assert t_cdf(t, 2) == pytest.approx(0.5 + t / (2 * math.sqrt(2 + t * t)), abs=1e-12)
        assert t_cdf(-t, 2) == pytest.approx(1 - t_cdf(t, 2), abs=1e-12)
    a = 0.95  # the 0.975 quantile with 2 df: t = a sqrt(2 / (1 - a^2)) = 4.302653...
    assert t_quantile(0.975, 2) == pytest.approx(a * math.sqrt(2 / (1 - a * a)), abs=1e-9)
    assert t_quantile(0.975, 2) == pytest.approx(4.302653, abs=1e-6)
    assert t_quantile(0.975, 10) == pytest.approx(2.228139, abs=1e-6)  # printed t tables
    assert t_quantile(0.025, 10) == pytest.approx(-2.228139, abs=1e-6)


def test_t_interval_over_seeds() -> None:
    s = summarize([1.0, 2.0, 3.0])
    half = 4.302653 / math.sqrt(3)  # t_{0.975, 2} * sd / sqrt(n) with sd = 1
    assert (s.mean, s.sd, s.n) == (2.0, 1.0, 3)
    assert s.ci95 == pytest.approx((2.0 - half, 2.0 + half), abs=1e-6)
    one = summarize([4.0])
    assert one.mean == 4.0 and math.isnan(one.sd) and all(math.isnan(x) for x in one.ci95)


def test_paired_t_test_hand_example() -> None:
    # d = 1, 2, 3: mean 2, sd 1, t = 2 sqrt(3), df 2: p = 1 - t / sqrt(2 + t^2) = 1 - 2 sqrt(3) / sqrt(14)
    assert paired_t_test([1, 2, 3]) == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(14), abs=1e-12)
    assert paired_t_test([1, 2, 3]) == pytest.approx(0.074180, abs=1e-6)
    assert paired_t_test([-1, -2, -3]) == pytest.approx(paired_t_test([1, 2, 3]))
    assert paired_t_test([2, 2, 2]) == 0.0 and paired_t_test([0, 0, 0]) == 1.0
    assert math.isnan(paired_t_test([1.0]))


def test_sign_flip_exact() -> None:
    # 8 sign patterns of (1, 2, 3): only all-plus and all-minus reach |mean| 2
    assert sign_flip_p([1, 2, 3]) == 0.25
    # (3, -1, 2): pattern sums 6, 2, 4, 0, 0, -4, -2, -6; observed 4: |sum| >= 4 in 4 of 8
    assert sign_flip_p([3, -1, 2]) == 0.5
    assert sign_flip_p([1, 1, 1, 1, 1, 1]) == pytest.approx(2 / 64)  # the floor 2 / 2^n
    sampled = sign_flip_p([1.0] * 20, max_exact=10, n_samples=2000)
    assert 0 < sampled <= 0.01  # sampled with the +1 correction: never 0


def test_pooled_mcnemar_over_seeds_and_items() -> None:
    seed0 = ({"a": 1, "b": 1, "c": 1, "x": 1}, {"a": 0, "b": 0, "c": 0, "x": 0})
    seed1 = ({"a": 1, "b": 1, "c": 1, "d": 0}, {"a": 0, "b": 0, "c": 0, "d": 0})
    test = pooled_mcnemar([seed0, seed1], items={"a", "b", "c", "d"})
    assert (test.to_yes, test.to_no, test.n_pairs) == (6, 0, 7)  # "x" is outside the items
    assert test.p_value == pytest.approx(2 / 2**6)  # 2 P(Bin(6, 1/2) <= 0)
    flipped = pooled_mcnemar([(seed0[1], seed0[0])])
    assert (flipped.to_yes, flipped.to_no) == (0, 4) and flipped.p_value == pytest.approx(2 / 16)
    assert math.isnan(pooled_mcnemar([({"a": 1}, {"b": 0})]).p_value)  # no common item


def test_combined_p_and_bias_distance() -> None:
    assert combined_p(0.01, 0.2) == 0.2 and combined_p(0.03, None) == 0.03 and math.isnan(combined_p(None, None))
    assert bias_distance("crows/gender", 46.0) == 4.0 and bias_distance("stereoset/gender/ss", 61.0) == 11.0
    assert bias_distance("seat/gender", -0.4) == 0.4 and math.isnan(bias_distance("perplexity", 20.0))
    assert math.isnan(bias_distance("stereoset/gender/lms", 90.0))


def test_split_is_deterministic_disjoint_and_balanced() -> None:
    ids = [str(i) for i in range(262)]
    halves = split_ids(ids, benchmark="crows", seed=0)
    backwards = split_ids(list(reversed(ids)), benchmark="crows", seed=0)
    assert all(set(backwards[h]) == set(halves[h]) for h in (SELECT, REPORT))  # order does not matter
    assert set(halves[SELECT]).isdisjoint(halves[REPORT]) and set(halves[SELECT]) | set(halves[REPORT]) == set(ids)
    assert 0.35 < len(halves[SELECT]) / len(ids) < 0.65
    # an item's half does not depend on which other items are present
    subset = split_ids(ids[::7], benchmark="crows", seed=0)
    assert set(subset[SELECT]) == set(halves[SELECT]) & set(ids[::7])
    assert split_ids(ids, benchmark="crows", seed=1) != halves  # another seed, another split
    assert split_ids(ids, benchmark="stereoset", seed=0) != halves  # benchmarks split independently


def test_stereoset_items_sharing_a_template_share_a_half(data_dir) -> None:
    """StereoSet repeats templates (same stereotype sentence, other anti-stereotype): one half holds all copies."""
    from peft_debias.eval.stereoset import load_stereoset, split_group

    items = load_stereoset(data_dir / "stereoset" / "stereoset_dev_flat.jsonl")
    groups = {item.id: split_group(item) for item in items}
    halves = split_ids(groups, benchmark="stereoset", groups=groups)
    side = {i: h for h, ids in halves.items() for i in ids}
    by_sentence: dict[str, set[str]] = {}
    for item in items:
        by_sentence.setdefault(item.sentences[0], set()).add(side[item.id])
    repeated = [s for s in by_sentence if sum(i.sentences[0] == s for i in items) > 1]
    assert repeated and all(len(by_sentence[s]) == 1 for s in repeated)


def test_results_without_template_groups_borrow_them_from_the_other_cells() -> None:
    """A cell written before StereoSet items carried their template group is split like the rest of the experiment."""
    items = {f"s{i}": {"target": f"t{i % 3}", "pro": int(i % 4 == 0), "related": 2} for i in range(60)}
    grouped = {i: {**row, "group": f"g{int(i[1:]) // 6}"} for i, row in items.items()}  # 6 items per template
    new = {"points": [{"point": 10, "eval": results_from_items({}, grouped)}]}
    old = {"points": [{"point": 10, "eval": results_from_items({}, items)}], "kept": 1}
    filled = fill_item_groups({"new": new, "old": old})
    assert "group" not in old["points"][0]["eval"]["stereoset"]["items"]["gender"]["s0"]  # inputs are not modified
    assert filled["new"] == new and filled["old"]["kept"] == 1
    by_template = point_metrics(filled["old"]["points"][0]["eval"], ["gender"])["stereoset/gender/ss"]
    assert by_template == point_metrics(new["points"][0]["eval"], ["gender"])["stereoset/gender/ss"]
    by_id = point_metrics(old["points"][0]["eval"], ["gender"])["stereoset/gender/ss"]
    assert by_id["all"] == by_template["all"] and by_id[REPORT] != by_template[REPORT]
    # without a result that knows the groups, nothing changes
    assert fill_item_groups({"old": old}) == {"old": old}


def test_stereoset_scores_macro_average_by_hand() -> None:
    items = {
        "i1": {"target": "t1", "pro": 1, "related": 2},
        "i2": {"target": "t1", "pro": 0, "related": 1},
        "i3": {"target": "t2", "pro": 1, "related": 2},
    }
    # SS per target: t1 50, t2 100 -> 75; LMS per target: t1 3/4 -> 75, t2 100 -> 87.5; ICAT 87.5 * 25 / 50
    assert stereoset_scores(items) == pytest.approx({"ss": 75.0, "lms": 87.5, "icat": 43.75})
    assert stereoset_scores(items, ["i1", "i2"]) == pytest.approx({"ss": 50.0, "lms": 75.0, "icat": 75.0})
    assert crows_score({"1": 1, "2": 0, "3": 1, "4": 1}, ["1", "2"]) == 50.0


def _results(n: int = 40) -> dict:
    decisions = {str(i): int(i % 3 != 0) for i in range(n)}
    items = {f"s{i}": {"target": f"t{i % 4}", "pro": i % 2, "related": 2} for i in range(n)}
    return results_from_items(
        decisions,
        items,
        seat={"axes": {"gender": {"mean_abs_effect_size": 0.61, "mean_abs_association_gap": 0.012}}},
        perplexity={"perplexity": 25.0},
    )


def test_point_metrics_split_figures_from_per_item_data() -> None:
    results = _results()
    m = point_metrics(results, ["gender"], seed=0)
    decisions = results["crows"]["decisions"]["gender"]
    halves = split_ids(decisions, benchmark="crows", seed=0)
    weighted = sum(len(halves[h]) * m["crows/gender"][h] for h in (SELECT, REPORT)) / len(decisions)
    assert weighted == pytest.approx(m["crows/gender"]["all"])  # the halves partition the pairs
    assert m["crows/gender"][REPORT] == pytest.approx(crows_score(decisions, halves[REPORT]))
    assert set(m["stereoset/gender/ss"]) == {"all", SELECT, REPORT}
    assert m["seat/gender"] == {"all": 0.61} and value(m, "seat/gender", REPORT) == 0.61  # no split: all items
    assert m["seat/gender/gap"] == {"all": 0.012} and bias_distance("seat/gender/gap", -0.012) == 0.012
    assert value(m, "perplexity", SELECT) == 25.0 and math.isnan(value(m, "crows/race", REPORT))
    assert set(point_decisions(results, ["gender"])) == {"crows/gender", "stereoset/gender/ss"}


def test_paraphrase_pairs_and_scores() -> None:
    import numpy as np

    from peft_debias.experiment.paraphrase import TEMPLATES, paraphrase_pairs, paraphrase_scores

    pairs = paraphrase_pairs(["gender"])
    assert len(pairs) == 6 * len(TEMPLATES) and len({a for a, _, _ in pairs}) == len(pairs)
    words = " ".join(a for a, _, _ in pairs).split()
    assert words.count("man") == words.count("woman") > 0  # both classes of the axis, equally
    eye = np.eye(3)  # three templates, each sentence identical to its paraphrase and orthogonal to the others
    assert paraphrase_scores(eye, eye, [0, 1, 2]) == {
        "cosine": 1.0, "unrelated": 0.0, "gap": 1.0, "accuracy": 1.0, "n_pairs": 3
    }  # fmt: skip
    collapsed = np.ones((3, 2)) / np.sqrt(2)  # everything maps to one point: no gap, nothing retrieved
    scores = paraphrase_scores(collapsed, collapsed, [0, 1, 2])
    assert scores["gap"] == pytest.approx(0.0) and scores["accuracy"] == 0.0 and scores["cosine"] == pytest.approx(1.0)
    # another filling of the same template is not a rival: rows 0 and 1 share template 0
    near = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert paraphrase_scores(near, near, [0, 0, 1])["accuracy"] == 1.0
