"""The shipped ``evaluate`` measurement modules load offline and give the same numbers as the direct functions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from peft_debias.core.errors import DebiasError
from peft_debias.eval.crows import CrowsPair, causal_pair_scores, crows_axis_result
from peft_debias.eval.lm_scoring import mean_pooled_embeddings
from peft_debias.eval.seat import SETS, load_seat_test, run_seat
from peft_debias.eval.stats import rng_for
from peft_debias.eval.stereoset import (
    StereoSetItem,
    masked_item_scores,
    stereoset_bootstrap,
    stereoset_metrics,
)
from peft_debias.evaluate_modules import MODULES, module_path
from peft_debias.models.loading import load_model

from support.eval_helpers import single_thread  # noqa: F401

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def modules_cache(tmp_path_factory: pytest.TempPathFactory):
    """evaluate copies a module into ``HF_MODULES_CACHE`` and imports it from there as the package
    ``evaluate_modules``; Python keeps that package's first location, so one folder serves the whole module."""
    import evaluate.config

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluate.config, "HF_MODULES_CACHE", tmp_path_factory.mktemp("hf_modules"))
        yield


@pytest.fixture
def load(modules_cache: None, hub_offline: None, tmp_path: Path):
    """``evaluate.load`` of a shipped module, offline."""
    import evaluate

    return lambda name: evaluate.load(module_path(name), cache_dir=str(tmp_path / "cache"))


def test_every_module_ships_as_package_data() -> None:
    assert MODULES == ("seat", "crows_pairs", "stereoset")
    for name in MODULES:
        assert (Path(module_path(name)) / f"{name}.py").is_file()
    with pytest.raises(DebiasError, match="unknown evaluate module 'nope'"):
        module_path("nope")
    pyproject = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    assert '"evaluate_modules/*/*.py"' in pyproject


def test_seat_module(load, tiny_models: dict[str, Path], data_dir: Path) -> None:
    test = load_seat_test(data_dir / "seat" / "weat6.jsonl")
    sentences = [s for k in SETS for s in test.sets()[k]]
    groups = [k for k in SETS for _ in test.sets()[k]]
    got = load("seat").compute(sentence=sentences, group=groups, model=str(tiny_models["bert_encoder"]), n_samples=3000)
    loaded = load_model(str(tiny_models["bert_encoder"]))
    direct = run_seat(
        lambda s: mean_pooled_embeddings(loaded.model, loaded.tokenizer, s),
        [test.__class__("seat", *(test.sets()[k] for k in SETS))],
        axes=[],
        n_samples=3000,
    )["tests"]["seat"]
    assert got["effect_size"] == pytest.approx(direct["effect_size"], abs=1e-9)
    assert got["p_value"] == direct["p_value"] and got["exact"] is False


def test_crows_pairs_module(load, tiny_models: dict[str, Path]) -> None:
    more = ["He is a doctor.", "The woman stayed home.", "My mother fixed the car."]
    less = ["She is a doctor.", "The man stayed home.", "My father fixed the car."]
    loaded = load_model(str(tiny_models["llama"]))
    got = load("crows_pairs").compute(sent_more=more, sent_less=less, model=loaded, n_bootstrap=200)
    pairs = [CrowsPair(str(i), m, s, "stereo", "") for i, (m, s) in enumerate(zip(more, less, strict=True))]
    scores = causal_pair_scores(loaded.model, loaded.tokenizer, pairs)
    direct, _ = crows_axis_result(pairs, scores, n_bootstrap=200, seed=0, axis="evaluate")
    assert got == {"stereotype_score": direct["stereotype_score"], "ci95": direct["ci95"], "n": 3}


def test_stereoset_module(load, tiny_models: dict[str, Path]) -> None:
    rows = [
        ("chess player", "The chess player was BLANK.", "The chess player was asian.",
         "The chess player was hispanic.", "The chess player was fox."),
        ("mother", "The mother is BLANK.", "The mother is caring.", "The mother is cold.", "The mother is blue."),
    ]  # fmt: skip
    loaded = load_model(str(tiny_models["bert"]))
    got = load("stereoset").compute(
        target=[r[0] for r in rows],
        context=[r[1] for r in rows],
        stereotype=[r[2] for r in rows],
        anti_stereotype=[r[3] for r in rows],
        unrelated=[r[4] for r in rows],
        model=loaded.model,
        tokenizer=loaded.tokenizer,
        n_bootstrap=100,
    )
    items = [StereoSetItem(str(i), r[0], "", r[1], r[2:]) for i, r in enumerate(rows)]
    scores = masked_item_scores(loaded.model, loaded.tokenizer, items)
    direct = stereoset_metrics(items, scores)
    direct["ci95"] = stereoset_bootstrap(items, scores, 100, rng_for(0, "stereoset", "evaluate"))
    assert json.loads(json.dumps(got)) == json.loads(json.dumps(direct))
    assert np.isfinite(got["icat"])
