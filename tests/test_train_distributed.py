"""The training loop under ``accelerate launch`` with two real CPU ranks (gloo)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support.launch import launch_two_ranks
from support.tiny_models import CORPUS

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(CORPUS) + "\n")
    return path


def _train_args(model: Path, corpus: Path, output: Path) -> list[str]:
    return [
        "--base",
        str(model),
        "--corpus",
        str(corpus),
        "--output",
        str(output),
        "--max-steps",
        "3",
        "--batch-size",
        "2",
        "--lr",
        "0.05",
        "--eval-every",
        "3",
        "--no-progress",
        "--world-size",
        "2",
    ]


def test_two_cpu_ranks_train_the_same_adapter(tiny_models, corpus, tmp_path) -> None:
    output = tmp_path / "adapter"
    result = launch_two_ranks(
        REPO / "recipes" / "train.py", *_train_args(tiny_models["llama"], corpus, output), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((output / "debias_config.json").read_text())
    assert info["training"]["world_size"] == 2
    fingerprints = info["rank_fingerprints"]
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]
    assert result.stdout.count("trained lora on gender") == 1  # only the main process reports


def test_world_size_mismatch_fails_loudly(tiny_models, corpus, tmp_path) -> None:
    output = tmp_path / "adapter"
    result = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "train.py"), *_train_args(tiny_models["llama"], corpus, output)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 2
    assert "launched for 2 processes but this run sees 1" in result.stderr
    assert not output.exists()
