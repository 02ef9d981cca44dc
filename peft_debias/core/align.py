"""Aligning two token sequences with difflib: the spans they share and the spans where they differ.

One place for the ``SequenceMatcher`` calls of the CrowS-Pairs scoring and the counterfactual objectives. Callers
keep their own choices: what the items are (token ids, or their strings) and ``autojunk`` (difflib's popular-item
heuristic, on by default in difflib and in bias-bench's CrowS-Pairs code).
"""

from __future__ import annotations

import difflib
from collections.abc import Hashable, Sequence

Span = tuple[str, range, range]  # difflib tag ("equal", "replace", "delete", "insert"), positions in a, in b


def spans(a: Sequence[Hashable], b: Sequence[Hashable], *, autojunk: bool) -> list[Span]:
    """difflib's opcodes for turning ``a`` into ``b``, as ``(tag, positions in a, positions in b)`` in order."""
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=autojunk)
    return [(tag, range(i1, i2), range(j1, j2)) for tag, i1, i2, j1, j2 in matcher.get_opcodes()]


def positions(parts: Sequence[Span], *, equal: bool) -> tuple[list[int], list[int]]:
    """The positions in ``a`` and in ``b`` that lie in the ``equal`` spans (``equal=True``; the two lists pair up
    one to one), or in all the other spans (``equal=False``), in order."""
    left: list[int] = []
    right: list[int] = []
    for tag, in_a, in_b in parts:
        if (tag == "equal") == equal:
            left += in_a
            right += in_b
    return left, right
