"""Property-based tests (hypothesis) for bias-vector algebra on small random tensors.

The algebra a user writes (``-v``, ``v * lam``, ``v1 + v2``, ``sum(vs)``, apply then un-apply) must mean what the
maths says. Vectors are lazy (coefficients on terms), so the identities that only regroup coefficients hold bit
for bit; the ones that add tensors in float32 hold up to rounding, checked with a tolerance scaled to the values.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from peft_debias import BiasVector
from peft_debias.core.errors import DebiasError
from peft_debias.vector.terms import DenseDelta

SHAPES = {"w": (3, 5), "b": (5,), "emb": (7, 2), "scalar": ()}
TINY = torch.finfo(torch.float32).tiny  # below it float32 results are subnormal (or flushed to zero)


@st.composite
def vectors(draw, count: int = 1) -> list[BiasVector]:
    """``count`` vectors over the same tensor names, with a random subset of :data:`SHAPES` and random values."""
    names = draw(st.lists(st.sampled_from(sorted(SHAPES)), min_size=1, max_size=len(SHAPES), unique=True))
    out = []
    for _ in range(count):
        seed = draw(st.integers(0, 2**31 - 1))
        scale = draw(st.sampled_from([1e-3, 1.0, 1e3]))
        gen = torch.Generator().manual_seed(seed)
        tensors = {n: torch.randn(SHAPES[n], generator=gen) * scale for n in names}
        out.append(BiasVector([(1.0, DenseDelta(tensors))]))
    return out


lambdas = st.floats(min_value=-1e3, max_value=1e3, allow_nan=False, allow_infinity=False)


def values(vector: BiasVector) -> dict[str, torch.Tensor]:
    return {name: vector.tensor(name) for name in vector}


def assert_equal(a: BiasVector, b: BiasVector) -> None:
    va, vb = values(a), values(b)
    assert va.keys() == vb.keys()
    for name in va:
        assert torch.equal(va[name], vb[name]), name


def assert_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], magnitude: float) -> None:
    """Equal up to float32 rounding of numbers as large as ``magnitude``."""
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-5 * magnitude + TINY)


@settings(max_examples=150, deadline=None)
@given(vectors(), lambdas)
def test_negation_moves_between_vector_and_lambda(vs: list[BiasVector], lam: float) -> None:
    (v,) = vs
    assert_equal((-v) * lam, v * (-lam))
    assert_equal(lam * v, v * lam)
    negated = -v
    assert_equal(-negated, v)
    for name, tensor in values(v * lam).items():  # and it is the scaled tensor
        torch.testing.assert_close(tensor, (v.tensor(name).double() * lam).float(), rtol=1e-6, atol=TINY)


@settings(max_examples=150, deadline=None)
@given(vectors(count=2), lambdas, lambdas)
def test_sum_of_two_commutes_exactly(vs: list[BiasVector], a: float, b: float) -> None:
    v1, v2 = vs[0] * a, vs[1] * b
    assert_equal(v1 + v2, v2 + v1)
    assert_equal(v1 - v2, -(v2 - v1))


@settings(max_examples=100, deadline=None)
@given(vectors(count=4), st.permutations(range(4)))
def test_sum_of_many_does_not_depend_on_the_order(vs: list[BiasVector], order: list[int]) -> None:
    total, shuffled = sum(vs), sum(vs[i] for i in order)
    assert isinstance(total, BiasVector) and len(total.terms) == 4
    magnitude = max(float(t.abs().max()) for v in vs for t in values(v).values())
    assert_close(values(total), values(shuffled), magnitude)
    expected = {name: sum(v.tensor(name).double() for v in vs).float() for name in vs[0]}
    assert_close(values(total), expected, magnitude)


@settings(max_examples=100, deadline=None)
@given(vectors(), lambdas)
def test_difference_with_itself_is_exactly_zero(vs: list[BiasVector], lam: float) -> None:
    (v,) = vs
    for tensor in values(v * lam - v * lam).values():
        assert not tensor.any()


class Toy(torch.nn.Module):
    def __init__(self, gen: torch.Generator) -> None:
        super().__init__()
        for name, shape in SHAPES.items():
            self.register_parameter(name, torch.nn.Parameter(torch.randn(shape, generator=gen)))


@settings(max_examples=100, deadline=None)
@given(vectors(), lambdas, st.integers(0, 2**31 - 1))
def test_apply_then_unapply_restores_the_model(vs: list[BiasVector], lam: float, seed: int) -> None:
    (v,) = vs
    model = Toy(torch.Generator().manual_seed(seed))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    v.apply_to(model, scale=lam)
    changed = {n: p.detach().clone() for n, p in model.named_parameters()}
    for name in SHAPES:  # only the vector's tensors move, each by lam * V
        if name in v:
            expected = before[name] + lam * v.tensor(name)
            atol = 1e-5 * float(expected.abs().max()) + TINY
            torch.testing.assert_close(changed[name], expected, rtol=1e-5, atol=atol)
        else:
            assert torch.equal(changed[name], before[name])
    (-v).apply_to(model, scale=lam)  # un-apply: the same vector negated
    after = dict(model.named_parameters())
    magnitude = max(1.0, *(abs(lam) * float(t.abs().max()) for t in values(v).values()))
    assert_close({n: p.detach() for n, p in after.items()}, before, magnitude)


@settings(max_examples=50, deadline=None)
@given(vectors(), lambdas)
def test_norm_scales_with_the_absolute_lambda(vs: list[BiasVector], lam: float) -> None:
    (v,) = vs
    assert (v * lam).norm() == pytest.approx(abs(lam) * v.norm(), rel=1e-5, abs=1e-30)
    assert v.dot(v * lam) == pytest.approx(lam * v.norm() ** 2, rel=1e-5, abs=1e-30)


@settings(max_examples=50, deadline=None)
@given(vectors(), st.sampled_from([math.nan, math.inf, -math.inf]))
def test_non_finite_strengths_are_refused(vs: list[BiasVector], bad: float) -> None:
    (v,) = vs
    with pytest.raises(DebiasError, match="not a finite number"):
        _ = v * bad
    with pytest.raises(DebiasError, match="not a finite number"):
        v.apply_to(Toy(torch.Generator().manual_seed(0)), scale=bad)


@settings(max_examples=20, deadline=None)
@given(vectors(count=2), lambdas)
def test_saved_vector_reloads_to_the_same_values(tmp_path_factory, vs: list[BiasVector], lam: float) -> None:
    combined = vs[0] * lam - vs[1]
    folder = combined.save(tmp_path_factory.mktemp("vector") / "v", progress=False)
    assert_equal(BiasVector.load(folder), combined)
