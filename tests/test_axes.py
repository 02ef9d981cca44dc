"""The axis registry: built-ins, user axes from code and files, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from peft_debias.cda import axes
from peft_debias.cda.axes import BiasAxis, get_axis, list_axes, load_axis_file, register_axis
from peft_debias.cda.swapping import counterfactuals
from peft_debias.core.errors import DebiasError


@pytest.fixture
def clean_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(axes, "_REGISTRY", {})


def test_builtin_axes_are_listed() -> None:
    assert {"gender", "race", "religion"} <= set(list_axes())
    assert get_axis("gender").classes == ("male", "female")


def test_unknown_axis_lists_the_known_ones() -> None:
    with pytest.raises(DebiasError) as err:
        get_axis("age")
    assert "unknown axis 'age'" in str(err.value)
    assert "known: gender, race, religion" in str(err.value)


def test_register_axis_in_code(clean_registry: None) -> None:
    axis = register_axis({"name": "age", "classes": ["young", "old"], "groups": [["young", "old"], ["youth", "elder"]]})
    assert "age" in list_axes() and get_axis("age") is axis
    assert counterfactuals("The young and the elder.", "age") == ["The old and the youth."]
    with pytest.raises(DebiasError, match="already registered"):
        register_axis(axis)
    register_axis(axis, overwrite=True)


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_axis_from_file(tmp_path: Path, suffix: str, clean_registry: None) -> None:
    data = {"name": "fruit", "classes": ["a", "b", "c"], "groups": [["apple", "banana", "cherry"]]}
    path = tmp_path / f"fruit{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(data))
    else:
        path.write_text("name: fruit\nclasses: [a, b, c]\ngroups:\n  - [Apple, banana, cherry]\n")
    axis = get_axis(str(path))
    assert axis == load_axis_file(path)
    assert counterfactuals("An apple.", axis) == ["A banana.", "A cherry."]
    assert register_axis(path).name == "fruit"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "x", "classes": ["a"], "groups": [["p"]]}, "at least two distinct classes"),
        ({"name": "x", "classes": ["a", "b"], "groups": []}, r"groups is a list \(\[\]\), expected a non-empty list"),
        ({"name": "x", "classes": ["a", "b"], "groups": [["p", "q", "r"]]}, "has 3 terms for 2 classes"),
        ({"name": "x", "classes": ["a", "b"], "groups": [["p", "q"], ["q", "p"]]}, "belongs to classes"),
        ({"name": "x y", "classes": ["a", "b"], "groups": [["p", "q"]]}, "invalid axis name"),
        ({"classes": ["a", "b"], "groups": [["p", "q"]]}, "lacks 'name'"),
        (
            {
                "name": "x",
                "classes": ["a", "b"],
                "groups": [["p", "q"]],
                "contextual": {"p": {"before_word": ["z", "q"], "otherwise": ["p", "q"]}},
            },
            "not a group holding it",
        ),
        ({"name": "x", "classes": ["a", "b"], "groups": 5}, r"groups is a number \(5\), expected a non-empty list"),
    ],
)
def test_bad_axis_definitions(data: dict, message: str) -> None:
    with pytest.raises(DebiasError, match=message):
        BiasAxis.from_dict(data)


GOOD = {"name": "toy", "classes": ["a", "b"], "groups": [["p", "q"], ["r", "s"]]}
RULE = {"before_word": ["p", "q"], "otherwise": ["p", "q"]}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"contextual": ["her"]}, 'contextual is a list (["her"]), expected an object mapping a term to {"before'),
        ({"contextual": {"p": ["p", "q"]}}, 'contextual.p is a list (["p", "q"]), expected {"before_word": [group]'),
        ({"contextual": {"p": {"before_word": ["p", "q"]}}}, "contextual.p is an object"),
        ({"contextual": {"p": {**RULE, "after": ["p"]}}}, "contextual.p is an object"),
        ({"contextual": {"p": {**RULE, "otherwise": "p q"}}}, 'contextual.p.otherwise is a string ("p q"), expected a'),
        ({"contextual": {"p": {**RULE, "before_word": ["p", 7]}}}, "contextual.p.before_word[1] is a number (7)"),
        ({"contextual": {"": RULE}}, "a contextual term is an empty string, expected a non-empty string"),
        ({"groups": [["p", "q"], "rs"]}, 'groups[1] is a string ("rs"), expected a list of non-empty strings'),
        ({"groups": [["p", "q"], ["r", None]]}, "groups[1][1] is null, expected a non-empty string"),
        ({"groups": [["p", "q"], ["r", "  "]]}, "groups[1][1] is an empty string"),
        ({"groups": [["p", "q"], ["r", True]]}, "groups[1][1] is a boolean (true)"),  # YAML's unquoted yes/no
        ({"groups": {"p": "q"}}, 'groups is an object ({"p": "q"}), expected a non-empty list of groups'),
        ({"groups": []}, "groups is a list ([]), expected a non-empty list"),
        ({"classes": "a b"}, 'classes is a string ("a b"), expected a list of at least two non-empty strings'),
        ({"classes": ["a", 2]}, "classes[1] is a number (2), expected a non-empty string"),
        ({"name": ["toy"]}, 'name is a list (["toy"]), expected a non-empty string'),
        ({"name": ""}, "name is an empty string, expected a non-empty string"),
        ({"description": 3}, "description is a number (3), expected a string"),
        ({"contexual": {}}, "has unknown keys ['contexual']; use only name, description, classes, groups, contextual"),
    ],
)
def test_axis_file_shapes_are_checked_key_by_key(tmp_path: Path, change: dict, message: str) -> None:
    path = tmp_path / "toy.json"
    path.write_text(json.dumps({**GOOD, **change}))
    with pytest.raises(DebiasError) as err:
        load_axis_file(path)
    assert str(err.value).startswith(f"axis file {path}: ") or "unknown keys" in str(err.value)
    assert message in str(err.value)


def test_a_well_formed_axis_in_code_or_file_still_loads(tmp_path: Path) -> None:
    axis = BiasAxis.from_dict({**GOOD, "groups": (("P", "q "), ["r", "s"]), "contextual": {"P": RULE}})
    assert axis.groups == (("p", "q"), ("r", "s")) and set(axis.contextual) == {"p"}
    path = tmp_path / "toy.yaml"
    path.write_text("name: toy\ndescription:\nclasses: [a, b]\ngroups:\n  - [p, q]\ncontextual:\n")
    assert load_axis_file(path).description == "" and load_axis_file(path).groups == (("p", "q"),)


def test_bad_axis_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DebiasError, match=r"bad.json is not valid JSON"):
        get_axis(str(bad))
    with pytest.raises(DebiasError, match=r"axis file .*missing\.yaml not found"):
        get_axis(str(tmp_path / "missing.yaml"))


def test_fingerprint_tracks_words_not_description() -> None:
    base = {"name": "x", "classes": ["a", "b"], "groups": [["p", "q"]]}
    one = BiasAxis.from_dict(base)
    assert one.fingerprint == BiasAxis.from_dict({**base, "description": "other"}).fingerprint
    assert one.fingerprint != BiasAxis.from_dict({**base, "groups": [["p", "r"]]}).fingerprint
    assert len(get_axis("gender").fingerprint) == 16
