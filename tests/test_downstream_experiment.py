"""The downstream experiment (``downstream:`` block of ``peft-debias experiment``): config checks, the paired
statistics by hand, and a whole four-arm grid on the tiny BERT with the real WinoBias files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from peft_debias.cli.main import main
from peft_debias.core.errors import DebiasError
from peft_debias.experiment.downstream import parse_downstream
from peft_debias.experiment.downstream_report import compare

from support.loader import one_torch_thread  # noqa: F401 - autouse fixture
from support.tiny_models import CORPUS

REPO = Path(__file__).resolve().parents[1]


def _grid(**block) -> dict:
    return {"name": "t", "downstream": {"model": "m", "arms": ["plain"], **block}}


@pytest.mark.parametrize(
    ("block", "message"),
    [
        ({"arms": ["adapter"]}, "plain included"),
        ({"arms": ["plain", "lora"]}, "list arms from plain, adapter, control, vector"),
        ({"seeds": [3]}, "at least two distinct seeds"),
        ({"options": {"seed": 1}}, "downstream: options has unknown key(s) seed"),
        ({"options": {"epoch": 1}}, "downstream: options has unknown key(s) epoch"),
        ({"arms": ["plain", "control"]}, "need an upstream: block"),
        ({"upstream": {"cda": False}}, "downstream: upstream has unknown key(s) cda"),
        ({"vector": {"lambda": 1}}, "downstream: vector has unknown key(s) lambda"),
    ],
)
def test_bad_downstream_blocks_are_named(block, message) -> None:
    with pytest.raises(DebiasError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_downstream(_grid(**block))


def test_the_shipped_recipe_parses() -> None:
    grid = parse_downstream(yaml.safe_load((REPO / "recipes/experiments/minilm-winobias-downstream.yaml").read_text()))
    assert grid.arms == ["plain", "adapter", "control", "vector"] and grid.seeds == [0, 1, 2, 3, 4]
    assert grid.runs()[:4] == [("plain", 0), ("adapter", 0), ("control", 0), ("vector", 0)]


def test_paired_comparison_by_hand() -> None:
    runs = {
        "plain": {0: {"gap": 10.0}, 1: {"gap": 20.0}, 2: {"gap": 30.0}},
        "adapter": {0: {"gap": 9.0}, 1: {"gap": 18.0}, 2: {"gap": 27.0}, 3: {"gap": 1.0}},
    }
    row = compare(runs, "adapter", "plain")
    assert row["seeds"] == [0, 1, 2] and row["diffs"] == [-1.0, -2.0, -3.0]
    assert row["mean"] == pytest.approx(-2.0)
    assert row["reduction"] == pytest.approx(2.0 / 20.0)
    # t = -2 / (1 / sqrt(3)) = -3.464 with 2 degrees of freedom: two-sided p = 0.0742
    assert row["p_t"] == pytest.approx(0.0742, abs=5e-4)
    assert row["p_sign_flip"] == pytest.approx(0.25)  # all 8 sign patterns, 2 as extreme
    assert compare(runs, "adapter", "missing") is None


@pytest.mark.integration
def test_a_four_arm_grid_runs_pairs_and_caches(tiny_models, data_dir, tmp_path) -> None:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(CORPUS * 2) + "\n")
    config = {
        "name": "tiny-winobias",
        "downstream": {
            "model": str(tiny_models["bert"]),
            "seeds": [0, 1],
            "options": {"max_steps": 2, "batch_size": 32, "lr": 1e-3},
            "upstream": {"corpus": [str(corpus)], "max_steps": 2, "batch_size": 4, "eval_every": 0, "save_every": 0},
            "vector": {"scale": 1.0, "biased": {"max_steps": 2, "batch_size": 4}},
        },
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "out"
    argv = ["experiment", "--config", str(path), "--output", str(out), "--data-dir", str(data_dir)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    runs = {
        arm: {s: json.loads((out / "runs" / f"{arm}-seed{s}" / "metrics.json").read_text()) for s in (0, 1)}
        for arm in ("plain", "adapter", "control", "vector")
    }
    assert runs["adapter"][0]["config"]["adapter"] == ["adapter-seed0"]
    assert runs["control"][1]["config"]["adapter"] == ["control-seed1"]
    assert runs["vector"][0]["config"]["model"] == "vector-seed0"
    for arm, entry in summary["arms"].items():
        assert entry["seeds"] == [0, 1]
        assert entry["gap_by_seed"] == [runs[arm][s]["gap"] for s in (0, 1)]
    diffs = [runs["adapter"][s]["gap"] - runs["control"][s]["gap"] for s in (0, 1)]
    assert summary["arms"]["adapter"]["vs_control"]["diffs"] == pytest.approx(diffs)
    tpr = [runs["vector"][s]["tpr_gap"] - runs["plain"][s]["tpr_gap"] for s in (0, 1)]
    assert summary["arms"]["vector"]["tpr_gap_vs_plain"]["diffs"] == pytest.approx(tpr)
    assert "| adapter | 2 |" in (out / "report.md").read_text()
    debias = json.loads((out / "upstream" / "adapter-seed0" / "debias_config.json").read_text())
    control = json.loads((out / "upstream" / "control-seed0" / "debias_config.json").read_text())
    assert json.dumps(debias).count('"cda": true') and json.dumps(control).count('"cda": false')
    stamp = (out / "runs" / "plain-seed0" / "metrics.json").stat().st_mtime_ns
    assert main([*argv, "--report-only"]) == 0 and main(argv) == 0  # the cache: nothing recomputed
    assert (out / "runs" / "plain-seed0" / "metrics.json").stat().st_mtime_ns == stamp


@pytest.mark.integration
def test_the_vector_arm_gives_a_bare_encoder_a_masked_lm_head(tiny_models, data_dir, tmp_path) -> None:
    """A bare encoder has no LM head to train a biased copy with: the arm builds one (seeded), fine-tunes from that
    very model, and subtracts the vector from it; LayerNorm weights stay the base's (excluded from V)."""
    from safetensors.torch import load_file

    from peft_debias.experiment.downstream import _vector_model

    grid = parse_downstream(_grid(model=str(tiny_models["bert_encoder"]), arms=["plain", "vector"]))
    grid.vector = {"scale": 1.0, "biased": {"max_steps": 2, "batch_size": 4, "lr": 1e-2}}
    out = tmp_path / "vector-seed0"
    _vector_model(grid, 0, out, data_dir)
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertForMaskedLM"]
    assert not out.with_name("vector-seed0.work").exists()
    base, debiased = (
        load_file(str(tiny_models["bert_encoder"] / "model.safetensors")),
        load_file(str(out / "model.safetensors")),
    )
    shared = [k for k in base if "bert." + k in debiased]  # the masked LM has no pooler
    assert len(shared) >= len(base) - 2
    moved = [k for k in shared if not torch.equal(base[k], debiased["bert." + k])]
    assert moved and not any("LayerNorm" in k for k in moved)
    assert any("LayerNorm" in k for k in base)
