"""``--dtype bfloat16`` (and ``--fidelity``) on the real bundled models against fp32 (slow): how many decisions
move, how far SEAT moves.

bf16 is opt-in because it is not exact: the fp32 LM head and log-softmax remove the head's share of the error, the
bf16 body keeps the rest. Measured here (torch 2.13 CPU): 6 of the 262 CrowS-Pairs gender decisions of SmolLM2
flip (their fp32 margins are a few thousandths of a nat per token), and MiniLM's SEAT effect sizes move by 0.010 on
average, 0.061 at most. The bounds below leave room for float differences between machines.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from peft_debias.eval.crows import causal_pair_scores, load_crows_pairs
from peft_debias.eval.lm_scoring import mean_pooled_embeddings
from peft_debias.eval.seat import run_seat, select_seat_tests
from peft_debias.models.loading import load_model

from support.eval_helpers import single_thread  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def test_bf16_crows_decisions_on_smollm2(data_dir: Path) -> None:
    every = load_crows_pairs(data_dir / "crows_pairs/crows_pairs_anonymized.csv")
    pairs = [p for p in every if p.bias_type == "gender"]
    scores = {}
    for dtype in (torch.float32, torch.bfloat16):
        loaded = load_model("bundled:smollm2", dtype=dtype)
        scores[dtype] = causal_pair_scores(loaded.model, loaded.tokenizer, pairs, progress=False)
    model = loaded.model
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # still tied, still bf16
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16
    fp32, bf16 = scores[torch.float32], scores[torch.bfloat16]
    flips = int(np.sum((fp32[:, 0] > fp32[:, 1]) != (bf16[:, 0] > bf16[:, 1])))
    assert len(pairs) == 262 and flips <= 10, f"{flips} of {len(pairs)} CrowS gender decisions flip in bf16"
    assert np.abs(bf16 - fp32).max() < 1.0


def test_bf16_seat_effect_sizes_on_minilm(data_dir: Path) -> None:
    tests = select_seat_tests(data_dir / "seat", "all", ["gender", "race", "religion"])
    effects = {}
    for dtype in (torch.float32, torch.bfloat16):
        loaded = load_model("bundled:minilm", dtype=dtype)
        encode = lambda s: mean_pooled_embeddings(loaded.model, loaded.tokenizer, s, progress=False)  # noqa: B023, E731
        out = run_seat(encode, tests, axes=[], n_samples=100, progress=False)
        effects[dtype] = np.array([out["tests"][t.name]["effect_size"] for t in tests])
    diff = np.abs(effects[torch.bfloat16] - effects[torch.float32])
    assert diff.max() < 0.1 and diff.mean() < 0.02, f"max {diff.max():.3f}, mean {diff.mean():.3f}"


def test_fidelity_reports_the_flips_on_smollm2(data_dir: Path) -> None:
    """``eval --dtype bfloat16 --fidelity`` counts the CrowS decisions bf16 moves: the same count as comparing the
    decisions of a separate float32 run by hand, and a few, not none."""
    from peft_debias.eval.runner import evaluate_bias

    options = {"benchmarks": "crows", "axes": "gender", "data_dir": data_dir, "n_bootstrap": 0, "progress": False}
    bf16 = evaluate_bias("bundled:smollm2", dtype="bfloat16", fidelity=True, **options)
    fp32 = evaluate_bias("bundled:smollm2", dtype="float32", **options)
    mine, theirs = bf16["crows"]["decisions"]["gender"], fp32["crows"]["decisions"]["gender"]
    differ = sum(mine[k] != theirs[k] for k in mine)
    assert bf16["fidelity"]["decisions"]["crows"]["gender"] == {"differ": differ, "of": 262}
    assert 1 <= differ <= 10, differ
