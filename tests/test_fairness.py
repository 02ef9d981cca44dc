"""Fairness metrics against hand-computed values, and the downstream recipe on a planted gender shortcut."""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from peft_debias.core.errors import DebiasError
from peft_debias.eval.fairness import accuracy, fprd, fprd_per_term, macro_f1, term_masks, tpr_gap_rms, tpr_gaps

from support.launch import launch_two_ranks
from support.loader import (
    one_torch_thread,  # noqa: F401 - autouse fixture
    shortcut_rows,
    trained_adapter,
    write_csv,
)

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "downstream_classifier.py"
M, F = "male", "female"


def test_tpr_gap_two_classes_by_hand() -> None:
    # class 0: male 1/2 right, female 2/2; class 1: male 2/2, female 1/2 -> gaps -0.5, +0.5 -> RMS 0.5 -> 50
    y_true = [0, 0, 1, 1, 0, 0, 1, 1]
    y_pred = [0, 1, 1, 1, 0, 0, 0, 1]
    groups = [M] * 4 + [F] * 4
    assert tpr_gaps(y_true, y_pred, groups) == {0: -0.5, 1: 0.5}
    assert tpr_gap_rms(y_true, y_pred, groups) == pytest.approx(50.0)
    assert tpr_gap_rms(np.array(y_true), torch.tensor(y_pred), groups) == pytest.approx(50.0)


def test_tpr_gap_three_unbalanced_classes_by_hand() -> None:
    # male TPRs: c0 2/3, c1 1/2, c2 1/1; female: c0 1/1, c1 2/3, c2 1/2 -> gaps -1/3, -1/6, 1/2
    # RMS = sqrt((1/9 + 1/36 + 1/4) / 3) = sqrt(7/54)
    y_true = [0, 0, 0, 1, 1, 2, 0, 1, 1, 1, 2, 2]
    y_pred = [0, 0, 1, 1, 0, 2, 0, 1, 1, 0, 2, 0]
    groups = [M] * 6 + [F] * 6
    gaps = tpr_gaps(y_true, y_pred, groups)
    assert gaps == pytest.approx({0: -1 / 3, 1: -1 / 6, 2: 1 / 2})
    expected = 100 * math.sqrt(7 / 54)
    assert tpr_gap_rms(y_true, y_pred, groups) == pytest.approx(expected) == pytest.approx(36.00411)
    # A class seen in one group only has no gap and does not count; other group names work when given.
    assert tpr_gap_rms([*y_true, 3], [*y_pred, 3], [*groups, M]) == pytest.approx(expected)
    renamed = ["m" if g == M else "f" for g in groups]
    assert tpr_gap_rms(y_true, y_pred, renamed, positive_groups=("m", "f")) == pytest.approx(expected)
    assert tpr_gap_rms(y_true, y_pred, groups, positive_groups=(F, M)) == pytest.approx(expected)  # sign-free


def test_tpr_gap_bad_input() -> None:
    with pytest.raises(DebiasError, match="no example of group 'male'"):
        tpr_gap_rms([0, 1], [0, 1], ["m", "f"])
    with pytest.raises(DebiasError, match="differ in length"):
        tpr_gap_rms([0, 1], [0], [M, F])
    with pytest.raises(DebiasError, match="no class has examples of both"):
        tpr_gap_rms([0, 1], [0, 1], [M, F])
    with pytest.raises(DebiasError, match="no examples"):
        tpr_gap_rms([], [], [])


TEXTS = [
    "he is kind",
    "she is kind",
    "he and she",
    "they are kind",
    "he is rude",
    "she is rude",
    "the theme",
    "She left",
]
Y_TRUE = [0, 0, 0, 0, 1, 1, 0, 0]
Y_PRED = [1, 0, 1, 0, 1, 0, 0, 1]


def test_fprd_by_hand() -> None:
    # negatives: rows 0 1 2 3 6 7, predicted positive: 0 2 7 -> FPR overall 1/2
    # he: negatives 0 2 (row 4 is positive; "the theme" is no match) -> 1 -> +1/2
    # she: negatives 1 2 7 ("She" matches) -> 2/3 -> +1/6;  they: row 3 -> 0 -> -1/2;  woman: absent -> left out
    terms = ["he", "she", "they", "woman"]
    per_term = fprd_per_term(Y_TRUE, Y_PRED, TEXTS, terms)
    assert per_term == pytest.approx({"he": 0.5, "she": 1 / 6, "they": -0.5})
    assert fprd(Y_TRUE, Y_PRED, TEXTS, terms) == pytest.approx(7 / 6)
    masks = term_masks(TEXTS, terms)
    assert masks["he"].tolist() == [True, False, True, False, True, False, False, False]
    assert fprd(Y_TRUE, Y_PRED, masks) == pytest.approx(7 / 6)
    matrix = np.stack([masks[t] for t in terms], axis=1)
    assert fprd(Y_TRUE, Y_PRED, matrix, terms) == pytest.approx(7 / 6)
    labels = ["toxic" if y else "ok" for y in Y_TRUE]
    preds = ["toxic" if y else "ok" for y in Y_PRED]
    assert fprd(labels, preds, TEXTS, terms, positive_label="toxic") == pytest.approx(7 / 6)


def test_fprd_bad_input() -> None:
    with pytest.raises(DebiasError, match="no negative example"):
        fprd([1, 1], [1, 0], ["he", "she"], ["he"])
    with pytest.raises(DebiasError, match="no identity term occurs in a negative example"):
        fprd([0, 1], [1, 0], ["it", "she"], ["she"])
    with pytest.raises(DebiasError, match="identity terms are missing"):
        fprd([0, 1], [1, 0], ["he", "she"])
    with pytest.raises(DebiasError, match="columns for"):
        fprd([0, 1], [1, 0], np.ones((2, 3), dtype=bool), ["he"])


def test_accuracy_and_macro_f1_by_hand() -> None:
    # class 0: tp 1, fn 1 -> F1 2/3; class 1: tp 2, fp 1 -> F1 4/5
    assert accuracy([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx(0.75)
    assert macro_f1([0, 0, 1, 1], [0, 1, 1, 1]) == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert macro_f1(["a", "b"], ["c", "c"]) == 0.0


@pytest.fixture(scope="module")
def recipe():
    spec = importlib.util.spec_from_file_location("downstream_classifier", RECIPE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    import transformers

    verbosity, bars = transformers.utils.logging.get_verbosity(), transformers.utils.logging.is_progress_bar_enabled()
    hub_level = logging.getLogger("huggingface_hub").level
    yield module
    transformers.utils.logging.set_verbosity(verbosity)  # main() quiets the libraries for the whole process
    logging.getLogger("huggingface_hub").setLevel(hub_level)
    if bars:
        transformers.utils.logging.enable_progress_bar()


@pytest.fixture(scope="module")
def shortcut_data(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("shortcut")
    return {
        "shortcut": write_csv(root / "shortcut.csv", shortcut_rows(128, shortcut=True, seed=1)),
        "balanced": write_csv(root / "balanced.csv", shortcut_rows(128, shortcut=False, seed=2)),
        "test": write_csv(root / "test.csv", shortcut_rows(64, shortcut=False, seed=3)),
    }


@pytest.mark.integration
def test_recipe_tpr_gap_is_large_for_a_shortcut_model_and_small_for_a_balanced_one(
    recipe, tiny_models, tmp_path_factory, shortcut_data, tmp_path
) -> None:
    adapter = trained_adapter(tiny_models, tmp_path_factory, "bert", "lora")
    results = {}
    for train in ("shortcut", "balanced"):
        output = tmp_path / train
        argv = ["--model", str(tiny_models["bert"]), "--adapter", str(adapter)]
        argv += ["--train-file", str(shortcut_data[train]), "--test-file", str(shortcut_data["test"])]
        argv += ["--output", str(output), "--identity-terms", "he,she", "--no-save-model"]
        # lr 1e-2: 9 of 9 (data seed, training seed) combinations tried gave TPR-GAP 100 vs 0 (5e-3: 7 of 9)
        argv += ["--epochs", "8", "--lr", "1e-2", "--batch-size", "16", "--seed", "0"]
        assert recipe.main(argv) == 0
        assert sorted(p.name for p in output.iterdir()) == ["metrics.json", "predictions.jsonl"]
        results[train] = json.loads((output / "metrics.json").read_text())
        assert len((output / "predictions.jsonl").read_text().splitlines()) == 64
    short, fair = results["shortcut"], results["balanced"]
    for result in results.values():
        assert result["adapters_unchanged"] is True and result["n_test"] == 64
        assert set(result) >= {"accuracy", "macro_f1", "tpr_gap", "tpr_gaps", "fprd", "fprd_terms"}
    # The shortcut model predicts from the pronoun: on the balanced test set TPR-GAP and FPRD are large.
    assert short["tpr_gap"] > 60 and short["fprd"] > 0.6 and short["accuracy"] < 75
    assert fair["tpr_gap"] < 20 and fair["fprd"] < 0.2 and fair["accuracy"] > 90
    assert short["tpr_gap"] - fair["tpr_gap"] > 50


@pytest.mark.integration
def test_recipe_bad_input_is_one_line(recipe, tiny_models, shortcut_data, tmp_path, capsys) -> None:
    common = ["--model", str(tiny_models["bert"]), "--train-file", str(shortcut_data["test"])]
    common += ["--output", str(tmp_path / "o")]
    assert recipe.main([*common, "--groups", "m,f"]) == 2
    assert recipe.main([*common, "--adapter", str(tmp_path / "missing")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("peft-debias: error: ") for line in lines)
    assert "no test row of group 'm'" in lines[0] and "not found" in lines[1]
    assert not (tmp_path / "o").exists()


@pytest.mark.e2e
def test_recipe_under_accelerate_launch_with_two_ranks(tiny_models, tmp_path_factory, tmp_path) -> None:
    adapter = trained_adapter(tiny_models, tmp_path_factory, "bert", "prompt")
    data = write_csv(tmp_path / "data.csv", shortcut_rows(37, shortcut=False, seed=4))  # odd: padded by the sampler
    output = tmp_path / "out"
    args = ["--model", str(tiny_models["bert"]), "--adapter", str(adapter), "--train-file", str(data)]
    result = launch_two_ranks(RECIPE, *args, "--output", str(output), "--max-steps", "2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((output / "metrics.json").read_text())
    assert info["train"]["world_size"] == 2 and info["adapters_unchanged"] is True
    assert (output / "model" / "downstream.json").is_file()  # the whole model, written once by the main process
    assert len((output / "predictions.jsonl").read_text().splitlines()) == 37  # gathered without duplicates
