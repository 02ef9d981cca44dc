"""The select/report item halves: deterministic, order-free, disjoint, and applied by the eval suite."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from peft_debias.core.errors import DebiasError
from peft_debias.eval.splits import SPLITS, split_of, take_split


def test_split_is_a_documented_function_of_id_and_seed() -> None:
    digest = hashlib.sha256(b"peft-debias-split\x1f0\x1fcrows\x1f17").digest()
    assert split_of("crows", "17") == ("select" if digest[0] % 2 == 0 else "report")
    ids = [str(i) for i in range(2000)]
    halves = [split_of("crows", i) for i in ids]
    assert 900 < halves.count("select") < 1100
    assert halves != [split_of("crows", i, seed=1) for i in ids]  # the seed matters
    assert halves != [split_of("stereoset", i) for i in ids]  # benchmarks are split independently


def test_take_split_partitions_and_ignores_order() -> None:
    items = [f"item-{i}" for i in range(300)]
    select = take_split(items, "select", benchmark="b", key=str)
    report = take_split(items, "report", benchmark="b", key=str)
    assert sorted(select + report) == sorted(items) and not set(select) & set(report)
    shuffled = list(reversed(items))
    assert set(take_split(shuffled, "select", benchmark="b", key=str)) == set(select)
    assert take_split(items, None, benchmark="b", key=str) == items
    with pytest.raises(DebiasError, match=r"unknown item split .test..*select, report"):
        take_split(items, "test", benchmark="b", key=str)
    assert SPLITS == ("select", "report")


@pytest.mark.integration
def test_eval_scores_only_the_chosen_half(tiny_models: dict[str, Path], data_dir: Path) -> None:
    from peft_debias.eval.crows import load_crows_pairs
    from peft_debias.eval.runner import evaluate_bias

    pairs = [p for p in load_crows_pairs(data_dir / "crows_pairs" / "crows_pairs_anonymized.csv")]
    gender = [p for p in pairs if p.bias_type == "gender"]
    want = {h: sum(split_of("crows", p.id) == h for p in gender) for h in SPLITS}
    n = {}
    for half in SPLITS:
        out = evaluate_bias(
            str(tiny_models["gpt2"]),
            benchmarks="crows",
            axes="gender",
            data_dir=data_dir,
            split=half,
            n_bootstrap=0,
            progress=False,
        )
        n[half] = out["crows"]["axes"]["gender"]["n"]
        assert out["crows"]["source"]["split"] == half
    assert n == want and n["select"] + n["report"] == len(gender)
