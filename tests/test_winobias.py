"""WinoBias as a downstream task: every line of the real files parses into a two-candidate item, hand-checked items,
and the metrics (accuracy pro / anti, their gap, TPR-GAP by pronoun gender) against hand-computed values."""

from __future__ import annotations

import re
import shutil
from collections import Counter
from pathlib import Path

import pytest

from peft_debias.core.errors import DebiasError
from peft_debias.eval.winobias import WinoBiasItem, load_winobias, winobias_metrics


@pytest.mark.parametrize("split", ["dev", "test"])
def test_every_line_of_the_real_files_is_an_item(data_dir: Path, split: str) -> None:
    items = load_winobias(data_dir, split)
    assert len(items) == 1584  # 4 files x 396 lines (SOURCE.md)
    assert Counter((i.stereotype, i.type) for i in items) == {(s, t): 396 for s in ("pro", "anti") for t in (1, 2)}
    for item in items:
        assert len(set(item.candidates)) == 2 and item.label in (0, 1) and item.gender in ("male", "female")
        assert "[" not in item.text and "]" not in item.text, item
        marked = re.findall(r"\*(\w+)\*", item.text)
        assert len(marked) == 1 and item.text.lower().count(item.candidates[item.label]) >= 1, item
    genders = Counter((i.stereotype, i.gender) for i in items)
    assert min(genders[(s, g)] for s in ("pro", "anti") for g in ("male", "female")) > 150


def test_hand_checked_items(data_dir: Path) -> None:
    items = {i.source: i for i in load_winobias(data_dir, "dev")}
    first = items["pro_stereotyped_type1.txt.dev:1"]
    assert first == WinoBiasItem(
        "The developer argued with the designer because *he* did not like the design.",
        ("developer", "designer"), 0, "male", "pro", 1, "pro_stereotyped_type1.txt.dev:1",
    )  # fmt: skip
    second = items["pro_stereotyped_type1.txt.dev:2"]
    assert second.label == 1 and second.gender == "female" and "because *her* idea" in second.text
    # a third occupation later in the sentence is not a candidate
    third = items["anti_stereotyped_type2.txt.dev:72"]
    assert third.candidates == ("developer", "cleaner") and third.label == 1 and "manager" in third.text
    # only the first pronoun is marked when the gold pair has two ("[she] needed to cut [her] hair")
    two = items["anti_stereotyped_type1.txt.dev:27"]
    assert "*she* needed to cut her hair" in two.text and two.label == 0


def _item(label: int, gender: str, stereotype: str) -> WinoBiasItem:
    return WinoBiasItem("t", ("a", "b"), label, gender, stereotype, 1, "x")


def test_metrics_by_hand() -> None:
    items = [
        _item(0, "male", "pro"), _item(1, "female", "pro"), _item(0, "female", "pro"), _item(1, "male", "pro"),
        _item(0, "female", "anti"), _item(1, "male", "anti"), _item(0, "male", "anti"), _item(1, "female", "anti"),
    ]  # fmt: skip
    predictions = [0, 1, 0, 1, 1, 1, 0, 0]  # pro all right; anti: 2 of 4 right
    got = winobias_metrics(items, predictions)
    assert got["accuracy_pro"] == 100.0 and got["accuracy_anti"] == 50.0 and got["gap"] == 50.0
    assert got["accuracy"] == 75.0 and got["n_test"] == 8
    # TPR by class: class 0 male 2/2, female 1/2 -> +0.5; class 1 male 2/2, female 1/2 -> +0.5 -> RMS 50
    assert got["tpr_gap"] == pytest.approx(50.0)


def test_bad_inputs(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DebiasError, match=r"winobias/male_occupations\.txt is missing"):
        load_winobias(tmp_path, "dev")
    with pytest.raises(DebiasError, match="unknown WinoBias split 'train'"):
        load_winobias(data_dir, "train")
    folder = Path(shutil.copytree(data_dir / "winobias", tmp_path / "winobias"))
    path = folder / "pro_stereotyped_type1.txt.dev"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], "2 The cat sat on the mat.", *lines[2:]]) + "\n")
    with pytest.raises(DebiasError, match=r"pro_stereotyped_type1\.txt\.dev:2: not a WinoBias line"):
        load_winobias(tmp_path, "dev")
    with pytest.raises(DebiasError, match="3 predictions for 2 items"):
        winobias_metrics([_item(0, "male", "pro"), _item(1, "female", "anti")], [0, 1, 1])
    with pytest.raises(DebiasError, match="no anti-stereotyped item"):
        winobias_metrics([_item(0, "male", "pro"), _item(1, "female", "pro")], [0, 1])
