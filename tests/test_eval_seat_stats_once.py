"""SEAT statistics from one cosine table per test: the same numbers as the two-pass formulas (association called
per set), the association gap taken from the effect size's own ``s`` values, unit vectors not re-normalised."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import peft_debias.eval.stats as stats
from peft_debias.eval.seat import load_seat_test, run_seat
from peft_debias.eval.stats import (
    association,
    effect_size_from_associations,
    permutation_p_value,
    rng_for,
    seat_test_statistics,
    unit_rows,
)
from peft_debias.models.loading import load_model

from support.eval_helpers import single_thread  # noqa: F401


def _two_pass(x, y, a, b, n_samples, rng):
    """The figures as computed before: association over X u Y for the effect size and the p-value, then
    association of X and of Y again for the gap."""
    s = association(np.concatenate([x, y]), a, b)
    effect = effect_size_from_associations(s[: len(x)], s[len(x) :])
    gap = float(association(x, a, b).mean() - association(y, a, b).mean())
    return effect, gap, permutation_p_value(s, len(x), n_samples, rng)


def _check(x, y, a, b, n_samples, name):
    effect, gap, perm = _two_pass(x, y, a, b, n_samples, rng_for(0, name))
    for unit, rows in ((False, (x, y, a, b)), (True, tuple(unit_rows(m) for m in (x, y, a, b)))):
        got = seat_test_statistics(*rows, n_samples=n_samples, rng=rng_for(0, name), unit=unit)
        assert abs(got.effect_size - effect) <= 1e-12
        assert abs(got.association_gap - gap) <= 1e-12
        assert got.permutation.exact == perm.exact and got.permutation.n_partitions == perm.n_partitions
        assert abs(got.permutation.p_value - perm.p_value) <= 1e-12


@pytest.mark.parametrize("n, n_samples", [(5, 1000), (12, 3000)])  # exact (C(10,5) = 252) and sampled
def test_one_table_equals_the_two_pass_formulas_on_random_data(n: int, n_samples: int) -> None:
    gen = np.random.default_rng(n)
    x, y = gen.standard_normal((n, 16)) * 3, gen.standard_normal((n, 16)) + 0.5
    a, b = gen.standard_normal((7, 16)) * 0.2, gen.standard_normal((9, 16)) * 5
    _check(x, y, a, b, n_samples, f"random{n}")


def test_one_table_equals_the_two_pass_formulas_on_a_real_test(data_dir: Path) -> None:
    loaded = load_model("bundled:minilm")
    test = load_seat_test(data_dir / "seat" / "weat7.jsonl")
    from peft_debias.eval.lm_scoring import mean_pooled_embeddings

    sets = [mean_pooled_embeddings(loaded.model, loaded.tokenizer, list(s)) for s in test.sets().values()]
    _check(*sets, 100_000, "weat7")


def test_unit_rows_leaves_unit_vectors_alone_and_normalises_others() -> None:
    unit = unit_rows(np.random.default_rng(0).standard_normal((4, 3)))
    assert unit_rows(unit) is unit  # no copy, no division
    raw = np.array([[3.0, 4.0], [0.0, 0.0]])
    np.testing.assert_allclose(unit_rows(raw), [[0.6, 0.8], [0.0, 0.0]])


def test_run_seat_builds_one_cosine_table_per_test(monkeypatch: pytest.MonkeyPatch, data_dir: Path) -> None:
    tests = [load_seat_test(data_dir / "seat" / f"{n}.jsonl") for n in ("weat6", "weat7", "weat8")]
    sentences = sorted({s for t in tests for part in t.sets().values() for s in part})
    vectors = dict(zip(sentences, np.random.default_rng(1).standard_normal((len(sentences), 8)), strict=True))
    calls = []
    real = stats.unit_association
    monkeypatch.setattr(stats, "unit_association", lambda *m: calls.append(1) or real(*m))
    monkeypatch.setattr(stats, "cosine_matrix", lambda *m: pytest.fail("cosine_matrix called: a second table"))
    out = run_seat(lambda s: np.stack([vectors[t] for t in s]), tests, axes=[], n_samples=500)
    assert len(calls) == len(tests)
    for test in tests:  # the gap and effect size are those of the unnormalised vectors
        x, y, a, b = (np.stack([vectors[s] for s in part]) for part in test.sets().values())
        monkeypatch.undo()
        effect, gap, _ = _two_pass(x, y, a, b, 500, rng_for(0))
        assert out["tests"][test.name]["effect_size"] == pytest.approx(effect, abs=1e-12)
        assert out["tests"][test.name]["association_gap"] == pytest.approx(gap, abs=1e-12)
    assert json.dumps(out)  # plain JSON values
