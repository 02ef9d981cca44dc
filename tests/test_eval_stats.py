"""Known answers for the evaluation statistics: SEAT effect size and permutation test, bootstrap, McNemar."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from peft_debias.eval.stats import (
    association,
    bootstrap_proportion,
    cosine_matrix,
    effect_size_from_associations,
    mcnemar_exact,
    percentile_interval,
    permutation_p_value,
    rng_for,
    seat_test_statistics,
)

# Hand-built SEAT: A = {(1, 0)}, B = {(0, 1)}, so s(w) = cos(w, a) - cos(w, b) = (w_x - w_y) / |w|.
X = np.array([[1.0, 0.0], [3.0, 4.0]])  # s = 1, (3 - 4) / 5 = -0.2
Y = np.array([[0.0, 2.0], [4.0, 3.0]])  # s = -1, (4 - 3) / 5 = 0.2
A = np.array([[1.0, 0.0]])
B = np.array([[0.0, 1.0]])


def test_cosine_and_association_by_hand() -> None:
    assert cosine_matrix(np.array([[3.0, 4.0]]), np.array([[1.0, 0.0], [0.0, 5.0]]))[0] == pytest.approx([0.6, 0.8])
    assert association(np.concatenate([X, Y]), A, B) == pytest.approx([1.0, -0.2, -1.0, 0.2])
    # several attributes: means over A and over B
    two = association(np.array([[1.0, 1.0]]), np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[-1.0, 0.0]]))
    assert two == pytest.approx([math.sqrt(0.5) + math.sqrt(0.5)])


def test_effect_size_by_hand() -> None:
    # means 0.4 and -0.4; s over X u Y = [1, -0.2, -1, 0.2]: mean 0, sample variance 2.08 / 3
    expected = 0.8 / math.sqrt(2.08 / 3)
    assert effect_size_from_associations(np.array([1.0, -0.2]), np.array([-1.0, 0.2])) == pytest.approx(expected)
    stats = seat_test_statistics(X, Y, A, B, n_samples=100, rng=rng_for(0, "t"))
    effect, perm = stats.effect_size, stats.permutation
    assert effect == pytest.approx(expected)
    assert stats.association_gap == pytest.approx(0.8)
    assert perm.exact and perm.n_partitions == 6
    assert math.isnan(effect_size_from_associations(np.ones(2), np.ones(2)))  # no spread: undefined


def test_exact_p_value_by_enumeration() -> None:
    # partition sums of {1, -0.2, -1, 0.2} into pairs: 0.8 (observed), 0, 1.2, -1.2, 0, -0.8: two are >= 0.8
    result = permutation_p_value(np.array([1.0, -0.2, -1.0, 0.2]), 2, 6, rng_for(0))
    assert result.exact and result.p_value == pytest.approx(2 / 6)
    # a larger one against brute force
    s = np.random.default_rng(3).standard_normal(12)
    sums = [s[list(c)].sum() for c in itertools.combinations(range(12), 6)]
    expected = np.mean(np.array(sums) >= s[:6].sum() - 1e-12)
    assert permutation_p_value(s, 6, 10_000, rng_for(0)).p_value == pytest.approx(expected)


def test_ties_count_as_exceeding() -> None:
    # every partition has the same sum: all are ties, p = 1 (sent-bias's conservative test)
    assert permutation_p_value(np.ones(6), 3, 100, rng_for(0)).p_value == 1.0
    # observed 0.1 + 0.2 = 0.30000000000000004; the partition 0.3 + 0.0 = 0.3 is a tie up to float rounding and
    # counts, with 0.1 + 0.3 and 0.2 + 0.3: 4 of 6 (an exact `>=` would give 3 of 6)
    assert permutation_p_value(np.array([0.1, 0.2, 0.3, 0.0]), 2, 6, rng_for(0)).p_value == pytest.approx(4 / 6)


def test_exact_or_sampled_boundary() -> None:
    s = np.array([1.0, -0.2, -1.0, 0.2])
    assert permutation_p_value(s, 2, 6, rng_for(0)).exact  # C(4, 2) = 6 <= n_samples
    sampled = permutation_p_value(s, 2, 5, rng_for(0))
    assert not sampled.exact and sampled.n_partitions == 5
    assert sampled.p_value * 5 == pytest.approx(round(sampled.p_value * 5))  # (1 + hits) / n_samples


def test_sampled_p_value_plus_one_correction_and_seed() -> None:
    s = np.arange(30, 0, -1, dtype=float)  # the observed X = the 15 largest: the unique maximum
    result = permutation_p_value(s, 15, 2_000, rng_for(0))
    assert not result.exact and result.p_value == pytest.approx(1 / 2_000)
    t = np.random.default_rng(1).standard_normal(40)
    assert permutation_p_value(t, 20, 3_000, rng_for(7)) == permutation_p_value(t, 20, 3_000, rng_for(7))
    assert rng_for(0, "a").random() != rng_for(0, "b").random()


def test_sampled_p_value_is_unbiased() -> None:
    # n = 5: 252 partitions. With n_samples = 251 the test samples; its mean over seeds must match the exact p.
    s = np.random.default_rng(11).standard_normal(10)
    exact = permutation_p_value(s, 5, 252, rng_for(0)).p_value
    sampled = [permutation_p_value(s, 5, 251, rng_for(seed)).p_value for seed in range(300)]
    expected = (1 + 250 * exact) / 251
    assert np.mean(sampled) == pytest.approx(expected, abs=4 * math.sqrt(exact * (1 - exact) / (250 * 300)))


def test_permutation_test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        permutation_p_value(np.ones(5), 2, 10, rng_for(0))
    with pytest.raises(ValueError):
        seat_test_statistics(X, Y[:1], A, B, n_samples=10, rng=rng_for(0))


def test_bootstrap_interval() -> None:
    assert percentile_interval(bootstrap_proportion([1, 1, 1, 1], 500, rng_for(0))) == [100.0, 100.0]
    decisions = [1] * 30 + [0] * 70
    replicates = bootstrap_proportion(decisions, 4_000, rng_for(0))
    assert replicates.shape == (4_000,)
    assert replicates.mean() == pytest.approx(30, abs=0.3)
    low, high = percentile_interval(replicates)
    # normal approximation: 30 +- 1.96 * sqrt(0.3 * 0.7 / 100) * 100 = 30 +- 9
    assert low == pytest.approx(21, abs=1.6) and high == pytest.approx(39, abs=1.6)
    assert np.array_equal(replicates, bootstrap_proportion(decisions, 4_000, rng_for(0)))
    assert bootstrap_proportion([], 10, rng_for(0)).size == 0


@pytest.mark.parametrize(
    ("b", "c", "expected"),
    [
        (0, 0, 1.0),
        (5, 0, 2 / 32),  # 2 * P(X <= 0), X ~ Bin(5, 1/2)
        (1, 1, 1.0),
        (10, 2, 2 * (1 + 12 + 66) / 4096),
        (2, 10, 2 * (1 + 12 + 66) / 4096),
    ],
)
def test_mcnemar_exact(b: int, c: int, expected: float) -> None:
    assert mcnemar_exact(b, c) == pytest.approx(expected)


def test_mcnemar_matches_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for b, c in [(3, 9), (20, 31), (0, 7), (44, 40)]:
        assert mcnemar_exact(b, c) == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue)
