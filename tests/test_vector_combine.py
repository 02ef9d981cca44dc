"""Combining several axes' vectors: sum, projection (Gram-Schmidt), TIES and DARE match their definitions."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from peft_debias import BiasVector
from peft_debias.core.errors import DebiasError
from peft_debias.vector.combine import combine, gram_matrix
from peft_debias.vector.terms import DenseDelta

from support.vector import load_all


def vec(tensors: dict[str, torch.Tensor], axis: str) -> BiasVector:
    v = BiasVector([(1.0, DenseDelta(tensors))])
    v.meta.axis = axis
    return v


@pytest.fixture
def three() -> list[BiasVector]:
    gen = torch.Generator().manual_seed(0)
    shared = torch.randn(6, 5, generator=gen)  # a direction all three axes share
    out = []
    for axis in ("gender", "race", "religion"):
        out.append(
            vec({"a.weight": shared + 0.5 * torch.randn(6, 5, generator=gen), "b": torch.randn(7, generator=gen)}, axis)
        )
    return out


def flat(v: BiasVector) -> torch.Tensor:
    return torch.cat([v.tensor(k).reshape(-1).double() for k in sorted(v.keys())])


def test_sum(three) -> None:
    total = combine(three, "sum", weights=[1.0, 0.5, 2.0])
    assert torch.equal(
        total.tensor("a.weight"),
        three[0].tensor("a.weight") + 0.5 * three[1].tensor("a.weight") + 2.0 * three[2].tensor("a.weight"),
    )
    assert total.meta.axis == "gender+race+religion"


def test_projection_is_gram_schmidt(three) -> None:
    vs = [flat(v) for v in three]
    us: list[torch.Tensor] = []
    for v in vs:
        u = v.clone()
        for prev in us:
            u -= (v @ prev) / (prev @ prev) * prev
        us.append(u)
    expected = sum(us)
    got = flat(combine(three, "projection"))
    assert torch.allclose(got, expected, atol=1e-5)
    # the parts are orthogonal, so the shared direction is counted once: smaller than the plain sum
    assert abs(float(us[0] @ us[1])) < 1e-6 * float(us[0].norm() * us[1].norm())
    assert got.norm() < flat(combine(three, "sum")).norm()
    gram = gram_matrix(three)
    assert torch.allclose(gram, torch.stack(vs) @ torch.stack(vs).T, rtol=1e-9)


def test_projection_drops_a_repeated_axis(three) -> None:
    doubled = combine([three[0], three[0] * 2.0], "projection")
    assert torch.allclose(flat(doubled), flat(three[0]), atol=1e-6)


def _ties_reference(tensors: list[torch.Tensor], weights: list[float], density: float) -> torch.Tensor:
    """TIES-merging (Yadav et al. 2023) as peft implements it: trim each to its top-k magnitudes, elect the sign of
    the summed trimmed tensors, then average the weighted entries that agree with it."""
    trimmed = []
    for t in tensors:
        k = int(density * t.numel())
        keep = torch.zeros(t.numel(), dtype=torch.bool)
        keep[t.abs().reshape(-1).topk(k).indices] = True
        trimmed.append(torch.where(keep.reshape(t.shape), t, torch.zeros_like(t)))
    stacked = torch.stack(trimmed)
    sign = torch.where(stacked.sum(0) >= 0, 1.0, -1.0)
    agree = stacked.sign() == sign
    weighted = stacked * torch.tensor(weights).reshape(-1, *([1] * (stacked.dim() - 1)))
    return (weighted * agree).sum(0) / agree.sum(0).clamp(min=1)


def test_ties_matches_definition(three) -> None:
    merged = combine(three, "ties", density=0.4, weights=[1.0, 1.0, 0.5])
    for key in ("a.weight", "b"):
        expected = _ties_reference([v.tensor(key) for v in three], [1.0, 1.0, 0.5], 0.4)
        assert torch.allclose(merged.tensor(key), expected, atol=1e-6), key


def test_dare_is_seeded_rescaled_dropout(three) -> None:
    one = combine([three[0], three[1]], "dare_linear", density=0.5, seed=3)
    again = combine([three[0], three[1]], "dare_linear", density=0.5, seed=3)
    other = combine([three[0], three[1]], "dare_linear", density=0.5, seed=4)
    a = one.tensor("a.weight")
    assert torch.equal(a, again.tensor("a.weight")) and torch.equal(a, one.tensor("a.weight"))
    assert not torch.equal(a, other.tensor("a.weight"))
    # a single vector: every entry is dropped or rescaled by 1/density
    single = combine([three[0], three[0] * 0.0], "dare_linear", density=0.5, seed=1).tensor("a.weight")
    x = three[0].tensor("a.weight")
    assert torch.all((single == 0) | torch.isclose(single, x / 0.5))
    ties = combine(three, "dare_ties", density=0.5, seed=1)
    assert ties.tensor("b").shape == (7,)


def test_combination_streams_into_a_model(tiny_models, tmp_path: Path) -> None:
    from support.vector import perturb

    base = tiny_models["llama"]
    vectors = [
        BiasVector.from_models(base, perturb(base, tmp_path / axis, seed=i), axis=axis)
        for i, axis in enumerate(("gender", "race"))
    ]
    for method in ("sum", "projection", "ties"):
        combined = combine(vectors, method)
        combined.apply_to(base, scale=-0.5, output=tmp_path / method, progress=False)
        pre, out = load_all(base), load_all(tmp_path / method)
        for key in combined:
            expected = pre[key].float() + (-0.5) * combined.tensor(key)
            assert torch.allclose(out[key], expected, atol=1e-7), (method, key)


def test_bad_combinations(three) -> None:
    with pytest.raises(DebiasError, match="unknown combination"):
        combine(three, "average")
    with pytest.raises(DebiasError, match="one weight per vector"):
        combine(three, "sum", weights=[1.0])
    with pytest.raises(DebiasError, match="density"):
        combine(three, "ties", density=0.0)
    with pytest.raises(DebiasError, match="not a finite number"):
        combine(three, "sum", weights=[1.0, float("nan"), 1.0])


@pytest.mark.e2e
def test_cli_combines_axes(tiny_models, tmp_path: Path) -> None:
    import subprocess
    import sys

    from support.vector import perturb

    base = tiny_models["llama"]
    gender, race = perturb(base, tmp_path / "g", seed=1), perturb(base, tmp_path / "r", seed=2)
    result = subprocess.run(
        [sys.executable, "-m", "peft_debias", "vector", "--base", str(base), "--biased", str(gender), "--axis",
         "gender", "--biased", str(race), "--axis", "race", "--combine", "projection", "--lambda", "1",
         "--output", str(tmp_path / "out"), "--no-progress"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    vectors = [BiasVector.from_models(base, b) for b in (gender, race)]
    expected = combine(vectors, "projection")
    pre, out = load_all(base), load_all(tmp_path / "out")
    for key in expected:
        assert torch.equal(out[key], pre[key] + (-1.0) * expected.tensor(key)), key
    info = json.loads((tmp_path / "out" / "debias_config.json").read_text())
    assert info["axis"] == "gender+race" and info["combine"] == "projection"
