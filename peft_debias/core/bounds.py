"""Lower bounds of numeric config fields, declared once in the field's metadata (``metadata={"min": 1}``).

The command-line option generated from the field (:mod:`peft_debias.cli.options`) and the config's own
``validate()`` read the same bound, so ``--log-every 0`` and ``TrainConfig(log_every=0)`` are refused alike.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from peft_debias.core.errors import DebiasError


def below(value: Any, minimum: float) -> bool:
    """Whether ``value`` is a number (not a bool) smaller than ``minimum``."""
    return isinstance(value, int | float) and not isinstance(value, bool) and value < minimum


def check_minimums(config: Any) -> None:
    """Raise a :class:`DebiasError` for the first field of the dataclass ``config`` below its ``"min"``."""
    for f in fields(config):
        minimum = f.metadata.get("min")
        value = getattr(config, f.name)
        if minimum is not None and below(value, minimum):
            raise DebiasError(f"{f.name} {value} is below {minimum}", f"use {f.name} >= {minimum}")
