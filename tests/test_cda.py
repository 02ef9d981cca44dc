"""CDA against hand-written expected outputs, including the tricky cases."""

from __future__ import annotations

import pytest

from peft_debias.cda.axes import BiasAxis, get_axis
from peft_debias.cda.swapping import counterfactuals, swap, takes_an
from peft_debias.core.errors import DebiasError


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("He is a doctor.", "She is a doctor."),
        ("She is a nurse.", "He is a nurse."),
        ("HE SAID SO", "SHE SAID SO"),
        ("The man's hat", "The woman's hat"),
        ("It was his.", "It was hers."),
        ("It was hers, not his.", "It was his, not hers."),
        ("his own idea", "her own idea"),
        ("I saw her. Her book was on her desk.", "I saw him. His book was on his desk."),
        ("They gave her the key to her house.", "They gave him the key to his house."),
        ("He told her, and she smiled.", "She told him, and he smiled."),
        ("The manager read a history of mankind.", "The manager read a history of mankind."),
        ("Themselves and others; shepherd, chemist, human.", "Themselves and others; shepherd, chemist, human."),
        ("My step-mother and Mr. Smith.", "My step-father and Mrs. Smith."),
        ("Kings and queens, fathers and daughters!", "Queens and kings, mothers and sons!"),
        ('"Him?" asked the actress.', '"Her?" asked the actor.'),
        ("he'd rather his sons stayed", "she'd rather her daughters stayed"),
        ("No axis words here at all.", "No axis words here at all."),
    ],
)
def test_gender_swap(text: str, expected: str) -> None:
    assert swap(text, "gender") == expected


def test_binary_axis_gives_one_counterfactual_and_none_without_terms() -> None:
    assert counterfactuals("The boy ran.", "gender") == ["The girl ran."]
    assert counterfactuals("The dog ran.", "gender") == []
    assert counterfactuals("", "gender") == []


def test_multiclass_axis_gives_one_copy_per_alternative() -> None:
    assert counterfactuals("The rabbi went to the synagogue.", "religion") == [
        "The priest went to the church.",
        "The imam went to the mosque.",
    ]
    assert counterfactuals("Black people in Africa", "race") == ["White people in Europe", "Asian people in Asia"]


def test_multiword_terms_match_longest_first_and_keep_title_case() -> None:
    assert counterfactuals("An African American writer", "race") == [
        "A European American writer",
        "An Asian American writer",
    ]
    assert swap("african-american history", "race") == "european-american history"


AGE = BiasAxis(name="age", classes=("young", "old"), groups=(("young", "old"), ("youth", "elder")))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The young man met an elder.", "The old man met a youth."),
        ("The old man met a youth.", "The young man met an elder."),
        ("An elder spoke to a youth.", "A youth spoke to an elder."),
        ("A youth spoke to an elder.", "An elder spoke to a youth."),
        ("AN ELDER AND A YOUTH", "A YOUTH AND AN ELDER"),
        ("an\n elder", "a\n youth"),  # any white space between them
        ("a elder", "a youth"),  # an article that did not agree is left as it was
        ("Santa elder, banana youth", "Santa youth, banana elder"),  # "a" inside a word is no article
        ("a young elder", "an old youth"),  # the article goes with the word right after it
    ],
)
def test_articles_follow_the_swapped_term(text: str, expected: str) -> None:
    assert swap(text, AGE) == expected


def test_articles_in_the_builtin_axes() -> None:
    assert swap("An uncle and an actor met a host.", "gender") == "An aunt and an actress met a hostess."
    assert swap("She is a heroine, an empress.", "gender") == "He is a hero, an emperor."
    assert counterfactuals("An African met a European.", "race") == [
        "A European met an Asian.",
        "An Asian met an African.",
    ]
    assert counterfactuals("A rabbi met an imam.", "religion") == ["A priest met a rabbi.", "An imam met a priest."]


@pytest.mark.parametrize(
    ("word", "an"),
    [("apple", True), ("elder", True), ("umbrella", True), ("uncle", True), ("unimportant", True), ("hour", True),
     ("honest", True), ("honour", True), ("heir", True), ("Asian", True), ("youth", False), ("history", False),
     ("host", False), ("university", False), ("unique", False), ("one", False), ("one-off", False), ("once", False),
     ("European", False), ("usual", False), ("user", False), ("utopia", False), ("ewe", False), ("onion", True),
     ("utter", True), ("urge", True), ("", False)],
)  # fmt: skip
def test_takes_an_goes_by_the_sound(word: str, an: bool) -> None:
    assert takes_an(word) is an


def test_mode_one_is_deterministic_and_a_valid_alternative() -> None:
    text = "The Muslim family celebrated Ramadan."
    one = counterfactuals(text, "religion", mode="one")
    assert one == counterfactuals(text, "religion", mode="one")
    assert len(one) == 1 and one[0] in counterfactuals(text, "religion")


def test_unknown_mode_is_a_clear_error() -> None:
    with pytest.raises(DebiasError, match=r"unknown CDA mode 'both'.*known: all, one"):
        counterfactuals("he", "gender", mode="both")  # type: ignore[arg-type]


def test_swap_is_involutive_on_unambiguous_gender_text() -> None:
    text = "The king told his daughter that the queen and her brother would visit their aunt."
    assert swap(swap(text, "gender"), "gender") == text


def test_axis_coverage_at_least_bias_bench() -> None:
    gender, race, religion = get_axis("gender"), get_axis("race"), get_axis("religion")
    assert len(gender.groups) >= 57
    for kin in ("father", "mother", "sons", "daughters", "uncle", "aunts", "nephew", "nieces", "grandmother"):
        assert kin in gender.lookup
    assert len(race.groups) >= 6 and len(race.classes) == 3
    assert len(religion.groups) >= 6 and len(religion.classes) == 3
