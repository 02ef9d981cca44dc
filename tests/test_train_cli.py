"""``peft-debias train`` from the command line: recipes, overrides and the error contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from peft_debias.cli.train import config_from_args, load_recipe
from peft_debias.core.errors import DebiasError

from support.tiny_models import CORPUS

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "peft_debias", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(CORPUS) + "\n")
    return path


@pytest.mark.e2e
def test_recipe_with_command_line_overrides(tiny_models, corpus, tmp_path) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"description: tiny\nbase: {tiny_models['gpt2']}\ncorpus: {corpus}\nmax_steps: 50\nlr: 0.01\n"
                      "method: prompt\nnum_virtual_tokens: 3\n")
    out = tmp_path / "adapter"
    result = run_cli("train", "--recipe", str(recipe), "--max-steps", "2", "--output", str(out), "--no-progress")
    assert result.returncode == 0, result.stderr
    assert "trained prompt on gender: 2 steps" in result.stdout
    info = json.loads((out / "debias_config.json").read_text())
    assert info["training"]["steps"] == 2 and info["training"]["lr"] == 0.01
    assert info["method"] == {"name": "prompt", "peft_type": "PROMPT_TUNING", "num_virtual_tokens": 3}


@pytest.mark.parametrize("recipe", sorted((REPO / "recipes").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_recipes_are_valid(recipe: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEFT_DEBIAS_DATA", "/data")
    import argparse

    config = config_from_args(argparse.Namespace(recipe=str(recipe), output="out"))
    config.validate()
    assert config.base and config.max_steps and (config.corpus or config.objective == "equalize")
    assert all("$" not in c for c in config.corpus)


def test_recipe_with_unset_variable(tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("PEFT_DEBIAS_DATA", raising=False)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("corpus: ${PEFT_DEBIAS_DATA}/gutenberg\n")
    with pytest.raises(DebiasError, match="unset variables"):
        load_recipe(recipe)


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("recipe_text", "extra", "message"),
    [
        ("max_stepz: 3\n", [], "has unknown keys ['max_stepz']"),
        ("max_steps: [3\n", [], "is not valid YAML"),
        ("- a\n- b\n", [], "is not a mapping"),
        ("", ["--method", "adalora"], "unknown method 'adalora'"),
        ("", ["--axis", "caste"], "unknown axis 'caste'"),
        ("", ["--max-steps", "-5"], "max_steps -5 < 1"),
        ("", ["--max-steps", "three"], "invalid int value"),
    ],
)
def test_bad_train_input(tiny_models, corpus, tmp_path, recipe_text, extra, message) -> None:
    recipe = tmp_path / "r.yaml"
    recipe.write_text(recipe_text or "{}\n")
    out = tmp_path / "adapter"
    result = run_cli("train", "--recipe", str(recipe), "--base", str(tiny_models["llama"]), "--corpus", str(corpus),
                     "--output", str(out), "--no-progress", *extra)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("peft-debias: error: ") and message in lines[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt", "r.yaml"]
