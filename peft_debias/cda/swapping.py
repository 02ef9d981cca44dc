"""Counterfactual data augmentation (CDA): swap the terms of a bias axis in text.

Rules, all deterministic:

* whole words only (``\\b`` boundaries): "manager" and "history" are never touched, "man's", "his." and
  "step-mother" are (the possessive ``'s`` and the punctuation stay);
* case is preserved: ``he``/``He``/``HE`` -> ``she``/``She``/``SHE``; title-cased phrases stay title-cased
  ("African-American" -> "European-American");
* a binary axis is swapped both ways at once (he <-> she). An axis with ``k`` classes gives ``k - 1``
  counterfactuals, one per cyclic shift of the classes, so a sentence about one group gets one copy for each
  alternative group;
* ambiguous terms follow the axis's contextual rules. For gender: ``her`` becomes ``his`` when a content word
  follows ("her book" -> "his book") and ``him`` otherwise ("saw her." -> "saw him.", "gave her the key" -> "gave
  him the key"), and ``his`` becomes ``her`` before a content word and ``hers`` otherwise. A content word is any
  word not in the package's closed-class list (``data/function_words.txt``), so "her" before a verb
  ("let her go") reads as possessive ("let his go"): a known limit of a rule without a parser;
* an article right before a swapped term follows it: "an elder" -> "a youth", "A youth" -> "An elder". The choice
  goes by the sound of the new term's first word (:func:`takes_an`: a vowel letter, except "one", "uni-", "eu-",
  "use"..., which sound like "y"/"w"; and a silent "h" as in "hour", "honest", "heir"). An article that did not
  agree with the old term by that rule is left as it is, so swapping twice restores a text whose articles agree.
"""

from __future__ import annotations

import hashlib
import re
from functools import cache
from importlib import resources
from typing import Literal

from peft_debias.cda.axes import BiasAxis, get_axis
from peft_debias.core.errors import DebiasError

CDA_MODES = ("all", "one")
Mode = Literal["all", "one"]
_NEXT_WORD = re.compile(r"\s+([A-Za-z]+)")
# words that start with a vowel letter but a consonant sound ("a university", "a one-off", "a European")
_CONSONANT_SOUND = re.compile(r"one(?![a-z])|oneself|once|uni(?![nmd])|us[eu]|ut[aeio]|ur[aeiou]|eu|ewe|ubiq")
# words that start with a silent h ("an hour", "an honest", "an heir")
_SILENT_H = ("hour", "honest", "honor", "honour", "heir")


@cache
def function_words() -> frozenset[str]:
    """The closed-class word list that decides contextual rules."""
    text = resources.files("peft_debias").joinpath("data/function_words.txt").read_text(encoding="utf-8")
    return frozenset(w for line in text.splitlines() if not line.startswith("#") for w in line.split())


def _match_case(source: str, target: str) -> str:
    letters = [c for c in source if c.isalpha()]
    if len(letters) > 1 and all(c.isupper() for c in letters):
        return target.upper()
    if source.istitle():
        return target.title() if " " in target or "-" in target else target[:1].upper() + target[1:]
    if source[:1].isupper():
        return target[:1].upper() + target[1:]
    return target


def takes_an(word: str) -> bool:
    """Whether ``word`` takes the article "an" (it starts with a vowel sound) rather than "a"."""
    word = word.lower()
    if word.startswith(_SILENT_H):
        return True
    return word[:1] in ("a", "e", "i", "o", "u") and _CONSONANT_SOUND.match(word) is None


def _article(old: str, term: str, new_term: str) -> str:
    """The article ``old`` ("a"/"an" in any case) for ``new_term`` in place of ``term``: changed only when ``old``
    agreed with ``term``. Its case is kept: upper case before an upper-case term ("AN ELDER" -> "A YOUTH"),
    else capitalised or not as it was."""
    if (old.lower() == "an") != takes_an(term):
        return old
    new = "an" if takes_an(new_term) else "a"
    if old.isupper() and len(term) > 1 and term.isupper():
        return new.upper()
    return new.capitalize() if old[0].isupper() else new


def _group_for(axis: BiasAxis, term: str, text: str, end: int) -> tuple[int, tuple[str, ...]]:
    rule = axis.contextual.get(term)
    if rule is None:
        return axis.lookup[term]
    nxt = _NEXT_WORD.match(text, end)
    group = rule.before_word if nxt and nxt.group(1).lower() not in function_words() else rule.otherwise
    return group.index(term), group


def swap(text: str, axis: str | BiasAxis, shift: int = 1) -> str:
    """Replace every term of ``axis`` in ``text`` by its counterpart ``shift`` classes further on (cyclically)."""
    axis = get_axis(axis)
    k = len(axis.classes)

    def replace(m: re.Match[str]) -> str:
        found = m.group("term")
        term = " ".join(found.lower().split())
        cls, group = _group_for(axis, term, text, m.end())
        new = _match_case(found, group[(cls + shift) % k])
        if m.group("article") is None:
            return new
        return _article(m.group("article"), found, new) + m.group("space") + new

    return axis.pattern_with_article.sub(replace, text)


def counterfactuals(text: str, axis: str | BiasAxis, mode: Mode = "all") -> list[str]:
    """Counterfactual versions of ``text`` (empty if it has no axis term).

    ``mode="all"``: one per alternative class (``k - 1``; one for a binary axis). ``mode="one"``: a single
    counterfactual whose shift is chosen deterministically from the text.
    """
    axis = get_axis(axis)
    if mode not in CDA_MODES:
        raise DebiasError(f"unknown CDA mode {mode!r} (known: {', '.join(CDA_MODES)})", "pick a known mode")
    if not axis.mentions(text):
        return []
    k = len(axis.classes)
    if mode == "one":
        digest = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:4], "big")
        return [swap(text, axis, 1 + digest % (k - 1))]
    return [swap(text, axis, s) for s in range(1, k)]
