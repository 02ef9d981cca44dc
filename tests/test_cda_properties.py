"""Property-based tests for CDA (hypothesis)."""

from __future__ import annotations

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from peft_debias.cda.axes import BiasAxis, get_axis
from peft_debias.cda.swapping import counterfactuals, swap, takes_an

GENDER = get_axis("gender")


def _partner(term: str) -> str:
    cls, group = GENDER.lookup[term]
    return group[1 - cls]


# terms whose counterpart maps back to them: excludes her/his/hers, the terms that become one of them (him -> her,
# read back as "his" before a content word) and words shared by two groups such as "bride"
ROUND_TRIP = sorted(
    t
    for t in GENDER.lookup
    if t not in GENDER.contextual and _partner(t) not in GENDER.contextual and _partner(_partner(t)) == t
)
NO_AXIS_WORDS = ["the", "a", "an", "doctor", "walked", "manager", "history", "shepherd", "heroic", "mankind", "kingdom",
                 "sonnet", "human", "therapist", "hemisphere", "mention", "shell", "themselves", "wizardry"]
SEPARATORS = [" ", ", ", ". ", "! ", "; ", " - ", "'s ", " (", ") ", '" ']
CASES = [str.lower, str.title, str.upper]


@st.composite
def texts(draw, words: list[str]) -> str:
    parts = draw(st.lists(st.tuples(st.sampled_from(words), st.sampled_from(CASES), st.sampled_from(SEPARATORS)),
                          min_size=1, max_size=12))
    return "".join(case(word) + sep for word, case, sep in parts)


ARTICLE = re.compile(r"\b(an?)(\s+)(?=(\w+))", re.IGNORECASE)


def grammatical(text: str) -> str:
    """``text`` with every article "a"/"an" made to agree with the word after it: "an" before a vowel sound,
    upper case only before an upper-case word."""

    def fix(m: re.Match[str]) -> str:
        old, word = m.group(1), m.group(3)
        new = "an" if takes_an(word) else "a"
        if old.isupper() and len(word) > 1 and word.isupper():
            new = new.upper()
        elif old[0].isupper():
            new = new.capitalize()
        return new + m.group(2)

    return ARTICLE.sub(fix, text)


def _without_articles(words: list[str]) -> list[str]:
    return [w for w in words if w.lower() not in ("a", "an")]


@settings(max_examples=300, deadline=None)
@given(texts(ROUND_TRIP + NO_AXIS_WORDS))
def test_binary_swap_round_trips(text: str) -> None:
    text = grammatical(text)
    once = swap(text, GENDER)
    assert swap(once, GENDER) == text
    assert grammatical(once) == once  # the articles follow the swapped terms


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
        elif old.lower() in ("a", "an"):  # an article may follow the swapped word after it
            assert new.lower() in ("a", "an")
        else:
            assert new == old
    assert re.sub(r"\w+", "", text) == re.sub(r"\w+", "", swap(text, GENDER))  # punctuation and spaces untouched


# ---- extensions: any binary axis, the multi-class axes, case, modes ------------------------------------------------

MULTI = {name: get_axis(name) for name in ("race", "religion")}


def _cycles(axis) -> list[str]:
    """Terms whose whole group maps back to itself, so that ``k`` shifts by one return every term."""
    k = len(axis.classes)
    return sorted(
        t
        for t in axis.lookup
        if t not in axis.contextual and all(axis.lookup[axis.lookup[t][1][j]][1] == axis.lookup[t][1] for j in range(k))
    )


@st.composite
def binary_axes(draw):
    """A user axis of made-up word pairs (``register_axis`` accepts any such file), none a prefix of a filler word."""
    words = draw(
        st.lists(st.text("bcdfgklmnprstvz", min_size=2, max_size=7).map(lambda w: "q" + w), min_size=2, max_size=12,
                 unique=True)
    )  # fmt: skip
    half = len(words) // 2
    return BiasAxis(name="toy", classes=("one", "two"), groups=tuple(zip(words[:half], words[half:], strict=False)))


@settings(max_examples=150, deadline=None)
@given(binary_axes(), st.data())
def test_any_binary_axis_round_trips(axis, data) -> None:
    text = data.draw(texts(axis.terms + NO_AXIS_WORDS))
    once = swap(text, axis)
    assert swap(once, axis) == text
    assert (once != text) == axis.mentions(text)
    assert counterfactuals(text, axis) == ([once] if axis.mentions(text) else [])


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(MULTI)), st.data())
def test_multi_class_shifts_cycle_back(name: str, data) -> None:
    axis = MULTI[name]
    text = grammatical(data.draw(texts(_cycles(axis) + NO_AXIS_WORDS)))
    k = len(axis.classes)
    shifted = text
    for _ in range(k):
        shifted = swap(shifted, axis)
        assert grammatical(shifted) == shifted
    assert shifted == text
    assert swap(swap(text, axis, 1), axis, k - 1) == text


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(sorted(MULTI)), st.data())
def test_multi_class_counterfactuals_never_split_words(name: str, data) -> None:
    axis = MULTI[name]
    text = data.draw(texts(axis.terms + NO_AXIS_WORDS))
    outs = counterfactuals(text, axis)
    assert len(outs) == (len(axis.classes) - 1 if axis.mentions(text) else 0)
    for out in outs:
        assert len(re.findall(r"\w+", out)) == len(re.findall(r"\w+", text))
        assert re.sub(r"\w+", "", out) == re.sub(r"\w+", "", text)


def _case(word: str) -> str:
    letters = [c for c in word if c.isalpha()]
    if len(letters) > 1 and all(c.isupper() for c in letters):
        return "upper"
    if word.istitle():
        return "title"
    return "lower" if word.islower() else "other"


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["gender", "race", "religion"]), st.data())
def test_swaps_keep_the_case_of_every_word(name: str, data) -> None:
    axis = get_axis(name)
    text = data.draw(texts(axis.terms + NO_AXIS_WORDS))
    for out in counterfactuals(text, axis):
        before, after = axis.pattern.findall(text), axis.pattern.findall(out)
        assert len(before) == len(after)
        for old, new in zip(before, after, strict=True):
            assert _case(new) == _case(old), (old, new)


@settings(max_examples=200, deadline=None)
@given(st.sampled_from(["gender", "race", "religion"]), st.data())
def test_mode_one_picks_one_of_the_counterfactuals(name: str, data) -> None:
    axis = get_axis(name)
    text = data.draw(texts(axis.terms + NO_AXIS_WORDS))
    one, every = counterfactuals(text, axis, "one"), counterfactuals(text, axis, "all")
    assert len(one) == (1 if every else 0)
    assert not one or one[0] in every
    assert one == counterfactuals(text, axis, "one")  # deterministic
