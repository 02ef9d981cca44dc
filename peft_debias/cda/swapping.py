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
  ("let her go") reads as possessive ("let his go"): a known limit of a rule without a parser.
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
        term = " ".join(m.group(0).lower().split())
        cls, group = _group_for(axis, term, text, m.end())
        return _match_case(m.group(0), group[(cls + shift) % k])

    return axis.pattern.sub(replace, text)


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
