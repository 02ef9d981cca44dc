"""difflib alignment helper: spans and positions on hand-worked examples."""

from __future__ import annotations

from peft_debias.core.align import positions, spans


def test_spans_and_positions_of_a_swap() -> None:
    a = ["the", "man", "is", "a", "doctor"]
    b = ["the", "woman", "is", "a", "good", "doctor"]
    parts = spans(a, b, autojunk=False)
    assert parts == [
        ("equal", range(0, 1), range(0, 1)),
        ("replace", range(1, 2), range(1, 2)),
        ("equal", range(2, 4), range(2, 4)),
        ("insert", range(4, 4), range(4, 5)),
        ("equal", range(4, 5), range(5, 6)),
    ]
    assert positions(parts, equal=True) == ([0, 2, 3, 4], [0, 2, 3, 5])
    assert positions(parts, equal=False) == ([1], [1, 4])


def test_delete_and_empty() -> None:
    parts = spans([1, 2, 3], [1, 3], autojunk=False)
    assert parts == [("equal", range(0, 1), range(0, 1)), ("delete", range(1, 2), range(1, 1)),
                     ("equal", range(2, 3), range(1, 2))]  # fmt: skip
    assert positions(parts, equal=False) == ([1], [])
    assert spans([], [], autojunk=True) == []
    assert positions([], equal=True) == ([], [])


def test_autojunk_is_the_callers_choice() -> None:
    # From 200 items on, difflib's autojunk ignores an item found in more than 1% + 1 of b: here both 1 and 7, so
    # only the final 3 is matched; autojunk=False matches 199 of the alternating items.
    a = [7, 1] * 100 + [3]
    b = [1, 7] * 100 + [3]
    assert spans(a, b, autojunk=True) == [("replace", range(0, 200), range(0, 200)),
                                          ("equal", range(200, 201), range(200, 201))]  # fmt: skip
    assert positions(spans(a, b, autojunk=False), equal=True) == ([*range(199), 200], [*range(1, 200), 200])
