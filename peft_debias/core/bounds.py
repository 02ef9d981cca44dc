"""Bounds of numeric config fields, declared once in the field's metadata (``metadata={"min": 1, "max": 512}``).

The command-line option generated from the field (:mod:`peft_debias.cli.options`) and the config's own
``validate()`` read the same bounds, so ``--log-every 0`` and ``TrainConfig(log_every=0)`` are refused alike.
Both bounds are inclusive.
"""

from __future__ import annotations

import math
from dataclasses import fields, is_dataclass
from typing import Any

from peft_debias.core.errors import DebiasError


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def below(value: Any, minimum: float) -> bool:
    """Whether ``value`` is a number (not a bool) smaller than ``minimum`` (NaN counts as out of bounds)."""
    return _number(value) and (value < minimum or math.isnan(value))


def above(value: Any, maximum: float) -> bool:
    """Whether ``value`` is a number (not a bool) larger than ``maximum`` (NaN counts as out of bounds)."""
    return _number(value) and (value > maximum or math.isnan(value))


def check_bounds(config: Any) -> None:
    """Raise a :class:`DebiasError` for the first field of the dataclass ``config`` outside its ``"min"`` /
    ``"max"``; fields that are themselves dataclasses (option groups) are checked the same way."""
    for f in fields(config):
        value = getattr(config, f.name)
        if is_dataclass(value) and not isinstance(value, type):
            check_bounds(value)
            continue
        minimum, maximum = f.metadata.get("min"), f.metadata.get("max")
        if minimum is not None and below(value, minimum):
            raise DebiasError(f"{f.name} {value} is below {minimum}", f"use {f.name} >= {minimum}")
        if maximum is not None and above(value, maximum):
            raise DebiasError(f"{f.name} {value} is above {maximum}", f"use {f.name} <= {maximum}")


check_minimums = check_bounds  # the name the configs used before upper bounds existed
