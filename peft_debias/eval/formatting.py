"""Numbers in reports: one notation for figures, confidence intervals and p-values in the eval, experiment and
demo reports.

A missing value (None, a non-number, NaN or an infinity: strict JSON files store NaN as null) shows as ``n/a``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

MISSING = "n/a"


def _finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and math.isfinite(value)  # numpy scalars are numbers.Real too


def format_number(value: Any, digits: int = 2) -> str:
    """``value`` with ``digits`` decimals (``55.00``), or ``n/a``."""
    return f"{value:.{digits}f}" if _finite(value) else MISSING


def format_ci(interval: Sequence[Any] | None, digits: int = 2) -> str:
    """A 95% interval as `` [lo, hi]`` (leading space, to follow its figure), or an empty string when there is
    none or either end is missing."""
    if not interval or len(interval) != 2 or not all(_finite(v) for v in interval):
        return ""
    return f" [{format_number(interval[0], digits)}, {format_number(interval[1], digits)}]"


def format_p(value: Any) -> str:
    """A p-value with three significant digits (``0.0123``, ``0.5``), below 0.001 in scientific notation with two
    (``1.2e-04``); ``n/a`` when missing."""
    if not _finite(value):
        return MISSING
    return f"{value:.3g}" if value >= 0.001 else f"{value:.1e}"
