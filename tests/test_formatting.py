"""Numbers in reports: one notation for figures, intervals and p-values."""

from __future__ import annotations

import math

import numpy as np

from peft_debias.eval.formatting import format_ci, format_number, format_p


def test_format_number() -> None:
    assert format_number(55.0) == "55.00" and format_number(0.12345, 3) == "0.123" and format_number(7) == "7.00"
    assert format_number(np.float32(0.5)) == "0.50" and format_number(-1.005, 1) == "-1.0"
    for missing in (None, math.nan, math.inf, "55", [1.0]):
        assert format_number(missing) == "n/a"


def test_format_ci() -> None:
    assert format_ci([51.0, 61.0]) == " [51.00, 61.00]" and format_ci((51.0, 61.04), 1) == " [51.0, 61.0]"
    for missing in (None, [], [51.0, None], [math.nan, 61.0], [1.0]):
        assert format_ci(missing) == ""


def test_format_p() -> None:
    assert format_p(0.5) == "0.5" and format_p(1.0) == "1" and format_p(0.04567) == "0.0457"
    assert format_p(0.001) == "0.001" and format_p(0.000999) == "1.0e-03" and format_p(2.61e-08) == "2.6e-08"
    assert format_p(0.0) == "0.0e+00" and format_p(np.float64(0.25)) == "0.25"
    for missing in (None, math.nan, "0.5"):
        assert format_p(missing) == "n/a"


def test_demo_report_p_values() -> None:
    from peft_debias.demo.report import _p, _seat_cell

    assert _p(None) == "" and _p(0.0004) == "p=4.0e-04" and _p(0.5) == "p=0.5"
    test = {"effect_size": 0.5, "p_value": 0.0123, "association_gap": 0.01}
    assert _seat_cell(test) == ["0.500 (p=0.0123)", "+0.0100"]
