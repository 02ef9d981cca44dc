"""SEAT: test-file validation, selection, the encode-once pipeline with known answers, batched encodings."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from peft_debias.core.errors import DebiasError
from peft_debias.eval.lm_scoring import mean_pooled_embeddings
from peft_debias.eval.seat import (
    SEAT_AXIS_TESTS,
    axis_of_test,
    load_seat_test,
    parse_seat_test,
    run_seat,
    select_seat_tests,
)
from peft_debias.models.loading import load_model

from support.eval_helpers import single_thread  # noqa: F401

# Sentences whose "embeddings" are fixed 2-D vectors: s(w) = (w_x - w_y) / |w| with A = {e1}, B = {e2}.
VECTORS = {
    "x1": [1.0, 0.0],
    "x2": [3.0, 4.0],
    "y1": [0.0, 2.0],
    "y2": [4.0, 3.0],
    "a": [1.0, 0.0],
    "b": [0.0, 1.0],
}
HAND_TEST = {
    "targ1": {"category": "X", "examples": ["x1", "x2"]},
    "targ2": {"category": "Y", "examples": ["y1", "y2"]},
    "attr1": {"category": "A", "examples": ["a"]},
    "attr2": {"category": "B", "examples": ["b"]},
}


def _write(folder: Path, name: str, content) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.jsonl"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


def test_axis_lists_match_design() -> None:
    assert SEAT_AXIS_TESTS["gender"] == ("sent-weat6", "sent-weat6b", "sent-weat7", "sent-weat7b", "sent-weat8",
                                         "sent-weat8b")  # fmt: skip
    assert len(SEAT_AXIS_TESTS["race"]) == 7 and "sent-angry_black_woman_stereotype_b" in SEAT_AXIS_TESTS["race"]
    assert SEAT_AXIS_TESTS["religion"] == ("sent-religion1", "sent-religion1b", "sent-religion2", "sent-religion2b")
    assert axis_of_test("sent-weat3b") == "race" and axis_of_test("weat1") is None


def test_known_answer_through_run_seat(tmp_path: Path) -> None:
    calls = []

    def encode(sentences):
        calls.append(list(sentences))
        return np.array([VECTORS[s] for s in sentences])

    tests = [parse_seat_test(HAND_TEST, "sent-weat6", "hand"), parse_seat_test(HAND_TEST, "sent-weat7", "hand")]
    result = run_seat(encode, tests, axes=["gender", "race"], n_samples=100, seed=0)
    one = result["tests"]["sent-weat6"]
    assert one["effect_size"] == pytest.approx(0.8 / math.sqrt(2.08 / 3))
    assert one["association_gap"] == pytest.approx(0.8)  # s: x1 1, x2 -0.2, y1 -1, y2 0.2
    assert one["p_value"] == pytest.approx(2 / 6) and one["exact"] and one["n_permutations"] == 6
    assert one["axis"] == "gender" and one["n"] == {"targ1": 2, "targ2": 2, "attr1": 1, "attr2": 1}
    assert result["axes"] == {
        "gender": {"mean_abs_effect_size": pytest.approx(0.8 / math.sqrt(2.08 / 3)), "n_tests": 2,
                   "mean_abs_association_gap": pytest.approx(0.8), "tests": ["sent-weat6", "sent-weat7"]}
    }  # fmt: skip
    # every distinct sentence is encoded once, in one call, across both tests
    assert len(calls) == 1 and sorted(calls[0]) == sorted(VECTORS)
    assert result["n_sentences"] == 6


def test_mean_abs_effect_size_per_axis() -> None:
    flipped = {**HAND_TEST, "targ1": HAND_TEST["targ2"], "targ2": HAND_TEST["targ1"]}  # effect size negated
    tests = [parse_seat_test(HAND_TEST, "sent-religion1", "h"), parse_seat_test(flipped, "sent-religion2", "h")]
    result = run_seat(lambda s: np.array([VECTORS[x] for x in s]), tests, axes=["religion"], n_samples=100)
    es = [result["tests"][n]["effect_size"] for n in ("sent-religion1", "sent-religion2")]
    assert es[0] == pytest.approx(-es[1])
    assert result["axes"]["religion"]["mean_abs_effect_size"] == pytest.approx(abs(es[0]))
    assert result["tests"]["sent-religion2"]["association_gap"] == pytest.approx(-0.8)
    assert result["axes"]["religion"]["mean_abs_association_gap"] == pytest.approx(0.8)
    # lifting every target out of the attributes' plane by the same angle scales each s(w) by 1 / sqrt(1 + 3^2):
    # the gap shrinks by that factor, the effect size (scale-free) does not move
    lifted = {k: [*(np.array(v) / np.linalg.norm(v)), 3.0 if k[0] in "xy" else 0.0] for k, v in VECTORS.items()}
    again = run_seat(lambda s: np.array([lifted[x] for x in s]), tests[:1], axes=["religion"], n_samples=100)
    assert again["tests"]["sent-religion1"]["association_gap"] == pytest.approx(0.8 / math.sqrt(10))
    assert again["tests"]["sent-religion1"]["effect_size"] == pytest.approx(es[0])


def test_duplicates_within_a_set_are_dropped() -> None:
    test = parse_seat_test({**HAND_TEST, "attr1": {"category": "A", "examples": ["a", "a"]}}, "t", "h")
    assert test.attr1 == ("a",)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "is not valid JSON"),
        ('{"targ1": {}}\n{"targ2": {}}', "is not valid JSON"),
        ([1, 2], "holds a list, not a JSON object"),
        ({k: v for k, v in HAND_TEST.items() if k != "attr2"}, "lacks the key 'attr2'"),
        ({**HAND_TEST, "targ1": {"category": "X"}}, "'targ1.examples' is missing"),
        ({**HAND_TEST, "attr1": {"examples": ["ok", 3]}}, "'attr1.examples' has an empty or non-string entry"),
        ({**HAND_TEST, "targ2": {"examples": ["y1"]}}, "targ1 has 2 distinct examples and targ2 1"),
    ],
)
def test_malformed_test_files_name_file_and_key(tmp_path: Path, content, message: str) -> None:
    path = _write(tmp_path, "broken", content)
    with pytest.raises(DebiasError) as err:
        load_seat_test(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_selection(tmp_path: Path) -> None:
    folder = tmp_path / "seat"
    for name in ("sent-weat6", "sent-weat7", "weat1"):
        _write(folder, name, HAND_TEST)
    assert [t.name for t in select_seat_tests(folder, "all", ["gender"])] == ["sent-weat6", "sent-weat7", "weat1"]
    assert [t.name for t in select_seat_tests(folder, ["weat1.jsonl", "sent-weat6"], [])] == ["weat1", "sent-weat6"]
    with pytest.raises(DebiasError, match=r"SEAT test 'sent-weat6b' not found: expected .*sent-weat6b.jsonl"):
        select_seat_tests(folder, "axes", ["gender"])
    with pytest.raises(DebiasError, match="SEAT test 'nope' not found"):
        select_seat_tests(folder, ["nope"], [])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DebiasError, match="no SEAT test files"):
        select_seat_tests(tmp_path / "empty", "all", [])


def test_real_files_all_parse(data_dir: Path) -> None:
    tests = select_seat_tests(data_dir / "seat", "all", ["gender", "race", "religion"])
    assert len(tests) == 50
    assert all(len(t.targ1) == len(t.targ2) for t in tests)
    assert {t.name for t in select_seat_tests(data_dir / "seat", "axes", ["gender", "race", "religion"])} == {
        name for names in SEAT_AXIS_TESTS.values() for name in names
    }


@pytest.mark.parametrize("name", ["bert_encoder", "bert", "llama", "gpt2"])
def test_batched_embeddings_equal_one_sentence_at_a_time(tiny_models: dict[str, Path], name: str) -> None:
    loaded = load_model(str(tiny_models[name]))
    texts = ["He is a doctor.", "The woman went to work while the man stayed home.", "Hi", "My mother is a nurse."]
    batched = mean_pooled_embeddings(loaded.model, loaded.tokenizer, texts, batch_size=3)
    with torch.no_grad():
        for row, text in zip(batched, texts, strict=True):
            out = loaded.model(**loaded.tokenizer(text, return_tensors="pt"), output_hidden_states=True)
            hidden = out.hidden_states[-1][0].mean(0)
            np.testing.assert_allclose(row, (hidden / hidden.norm()).numpy(), atol=1e-5)
    assert np.linalg.norm(batched, axis=1) == pytest.approx(np.ones(len(texts)))
