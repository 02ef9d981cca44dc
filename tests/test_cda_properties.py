"""Property-based tests for CDA (hypothesis)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from peft_debias.axes import get_axis
from peft_debias.cda import counterfactuals, swap

GENDER = get_axis("gender")


def _partner(term: str) -> str:
    cls, group = GENDER.lookup[term]
    return group[1 - cls]


# terms whose counterpart maps back to them (excludes her/his/hers and words shared by two groups such as "bride")
ROUND_TRIP = sorted(t for t in GENDER.lookup if t not in GENDER.contextual and _partner(_partner(t)) == t)
NO_AXIS_WORDS = ["the", "a", "doctor", "walked", "manager", "history", "shepherd", "heroic", "mankind", "kingdom",
                 "sonnet", "human", "therapist", "hemisphere", "mention", "shell", "themselves", "wizardry"]
SEPARATORS = [" ", ", ", ". ", "! ", "; ", " - ", "'s ", " (", ") ", '" ']
CASES = [str.lower, str.title, str.upper]


@st.composite
def texts(draw, words: list[str]) -> str:
    parts = draw(st.lists(st.tuples(st.sampled_from(words), st.sampled_from(CASES), st.sampled_from(SEPARATORS)),
                          min_size=1, max_size=12))
    return "".join(case(word) + sep for word, case, sep in parts)


@settings(max_examples=300, deadline=None)
@given(texts(ROUND_TRIP + NO_AXIS_WORDS))
def test_binary_swap_round_trips(text: str) -> None:
    assert swap(swap(text, GENDER), GENDER) == text


@settings(max_examples=300, deadline=None)
@given(texts(NO_AXIS_WORDS))
def test_text_without_axis_words_is_never_changed(text: str) -> None:
    for axis in ("gender", "race", "religion"):
        assert swap(text, axis) == text
        assert counterfactuals(text, axis) == []


@settings(max_examples=300, deadline=None)
@given(texts(sorted(GENDER.lookup) + NO_AXIS_WORDS))
def test_swaps_never_split_or_merge_words(text: str) -> None:
    before, after = re.findall(r"\w+", text), re.findall(r"\w+", swap(text, GENDER))
    assert len(before) == len(after)
    for old, new in zip(before, after, strict=True):
        if old.lower() in GENDER.lookup:
            assert new.lower() in GENDER.lookup and new.lower() != old.lower()
        else:
            assert new == old
    assert re.sub(r"\w+", "", text) == re.sub(r"\w+", "", swap(text, GENDER))  # punctuation and spaces untouched
