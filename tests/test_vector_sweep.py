"""Lambda sweeps: every point evaluated on the restored base, the largest lambda within the perplexity budget."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from peft_debias import BiasVector
from peft_debias.core.errors import DebiasError
from peft_debias.vector.sweep import SweepConfig, lambda_sweep, parse_lambdas, summarize, write_sweep

from support.vector import perturb

KEY = "model.layers.0.self_attn.q_proj.weight"


@pytest.fixture(scope="module")
def setup(tiny_models, tmp_path_factory):
    base = tiny_models["llama"]
    biased = perturb(base, tmp_path_factory.mktemp("sweep") / "biased", noise=0.05)
    return base, biased


def fake_eval(pre_weight: torch.Tensor, delta: torch.Tensor):
    """Results shaped like evaluate_bias's: CrowS falls and perplexity rises with the applied strength."""

    def evaluate(model, tokenizer):
        weight = dict(model.named_parameters())[KEY].detach()
        lam = float(((pre_weight - weight) * delta).sum() / (delta * delta).sum())  # recovers lambda exactly enough
        return {
            "crows": {"axes": {"gender": {"stereotype_score": 60.0 - 4.0 * lam}}},
            "stereoset": {"axes": {"gender": {"ss": 62.0 - 3.0 * lam, "lms": 90.0 - lam, "icat": 70.0}}},
            "perplexity": {"perplexity": 20.0 * (1.0 + 0.05 * lam * lam)},
        }

    return evaluate


def test_sweep_table_choice_and_restore(setup, tmp_path: Path) -> None:
    base, biased = setup
    model = AutoModelForCausalLM.from_pretrained(base)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    vector = BiasVector.from_models(base, biased, axis="gender")
    evaluate = fake_eval(before[KEY], vector.tensor(KEY))
    sweep = lambda_sweep(model, None, {"gender": vector}, evaluate, SweepConfig([0.5, 1, 2, 4], ppl_threshold=0.25))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # restored exactly
    assert sweep["baseline"]["crows/gender"] == pytest.approx(60.0)
    crows = [p["metrics"]["crows/gender"] for p in sweep["points"]]
    assert crows == pytest.approx([58.0, 56.0, 52.0, 44.0], abs=1e-3)
    assert [round(p["ppl_increase"], 4) for p in sweep["points"]] == [0.0125, 0.05, 0.2, 0.8]
    assert sweep["chosen"] == {"gender": 2.0}  # +20% is within 25%, +80% is not
    out = write_sweep(sweep, tmp_path / "sweep")
    assert sorted(p.name for p in out.iterdir()) == ["sweep.json", "sweep.md", "sweep.png"]
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    data = json.loads((out / "sweep.json").read_text())
    assert data["chosen"] == {"gender": 2.0} and len(data["points"]) == 4
    table = (out / "sweep.md").read_text()
    assert (
        "| gender | 2 |" in table and "+20.0%" in table and "Largest lambda within +25% perplexity: gender: 2." in table
    )


def test_no_lambda_within_budget(setup) -> None:
    base, biased = setup
    model = AutoModelForCausalLM.from_pretrained(base)
    vector = BiasVector.from_models(base, biased)
    evaluate = fake_eval(dict(model.named_parameters())[KEY].detach().clone(), vector.tensor(KEY))
    sweep = lambda_sweep(model, None, {"v": vector}, evaluate, SweepConfig([4.0], ppl_threshold=0.1))
    assert sweep["chosen"] == {"v": None}


def test_lambda_parsing() -> None:
    assert parse_lambdas("0.25, 0.5,1,2,4") == [0.25, 0.5, 1.0, 2.0, 4.0]
    for bad, message in (("nan", "not a finite number"), ("1,inf", "not a finite number"), ("x", "not a number")):
        with pytest.raises(DebiasError, match=message):
            parse_lambdas(bad)
    with pytest.raises(DebiasError, match="threshold"):
        SweepConfig([1.0], ppl_threshold=float("nan")).validate()


def test_summarize_real_schema() -> None:
    results = {
        "seat": {"axes": {"gender": {"mean_abs_effect_size": 0.5}}},
        "crows": {"axes": {"gender": {"stereotype_score": 55.0}, "race": {"stereotype_score": 60.0}}},
        "perplexity": {"perplexity": 12.5, "kind": "perplexity"},
    }
    assert summarize(results) == {"crows/gender": 55.0, "crows/race": 60.0, "seat/gender": 0.5, "perplexity": 12.5}


@pytest.mark.e2e
def test_cli_sweep_with_the_eval_suite(setup, tmp_path: Path, data_dir: Path) -> None:
    base, biased = setup
    out = tmp_path / "sweep"
    result = subprocess.run(
        [sys.executable, "-m", "peft_debias", "vector", "--base", str(base), "--biased", str(biased),
         "--axis", "gender", "--lambda", "0.5,2", "--output", str(out), "--benchmarks", "crows,perplexity",
         "--data-dir", str(data_dir), "--ppl-max-tokens", "300", "--n-bootstrap", "0", "--no-progress",
         "--split", "select"],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    data = json.loads((out / "sweep.json").read_text())
    crows = data["results"]["base"]["crows"]
    assert crows["source"]["split"] == "select" and crows["axes"]["gender"]["n"] < 262  # tuned on one half only
    assert [p["lambda"] for p in data["points"]] == [0.5, 2.0]
    assert {"crows/gender", "perplexity"} <= set(data["baseline"])
    assert all(p["metrics"]["perplexity"] > 0 for p in data["points"])
    assert (out / "sweep.png").stat().st_size > 1000 and "Largest lambda" in result.stdout


def test_sweep_compares_combinations(setup, tmp_path: Path) -> None:
    from peft_debias.vector.combine import combine

    base, biased = setup
    other = perturb(biased, tmp_path / "race", noise=0.05, seed=3)  # shares the gender direction
    model = AutoModelForCausalLM.from_pretrained(base)
    vectors = [BiasVector.from_models(base, b, axis=a) for b, a in ((biased, "gender"), (other, "race"))]
    combos = {method: combine(vectors, method) for method in ("sum", "projection")}
    pre = dict(model.named_parameters())[KEY].detach().clone()
    sweep = lambda_sweep(model, None, combos, fake_eval(pre, combos["sum"].tensor(KEY)), SweepConfig([0.5, 1.0]))
    assert [(p["label"], p["lambda"]) for p in sweep["points"]] == [
        ("sum", 0.5), ("sum", 1.0), ("projection", 0.5), ("projection", 1.0)
    ]  # fmt: skip
    assert set(sweep["chosen"]) == {"sum", "projection"}
    # the projection removes the overlap, so it moves the weights less than the plain sum at the same lambda
    moved = {p["label"]: p["metrics"]["crows/gender"] for p in sweep["points"] if p["lambda"] == 1.0}
    assert moved["projection"] > moved["sum"]
    write_sweep(sweep, tmp_path / "out")
    assert "| projection | 1 |" in (tmp_path / "out" / "sweep.md").read_text()
