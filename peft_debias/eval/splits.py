"""Deterministic halves of a benchmark's items: one to choose settings on, one to report.

Tuned settings (steps, learning rate, lambda) must not be chosen on the items that are then reported, and a
biased model trained on StereoSet stereotypes must not be scored on the same items. Each item is assigned to
``"select"`` or ``"report"`` by a hash of its id and a seed, so the assignment does not depend on the order of the
file, on which other items are present, or on the process: the same item always lands in the same half.

CrowS-Pairs items are keyed by the CSV's row id; StereoSet items by their template
(:func:`peft_debias.eval.stereoset.split_group`: bias type, target and context), because StereoSet repeats some
templates with other anti-stereotypes, and a stereotype sentence must not sit in both halves. The key is prefixed
with the benchmark name, so the two splits are independent.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from typing import TypeVar

from peft_debias.core.errors import DebiasError

SPLITS = ("select", "report")
T = TypeVar("T")


def check_split(split: str | None) -> str | None:
    """``split`` if it names a half (or is None); a one-line error otherwise."""
    if split is not None and split not in SPLITS:
        raise DebiasError(f"unknown item split {split!r}", f"use one of {', '.join(SPLITS)} (or none for all items)")
    return split


def split_of(benchmark: str, item_id: str, seed: int = 0) -> str:
    """The half (``"select"`` or ``"report"``) that item ``item_id`` of ``benchmark`` belongs to."""
    digest = hashlib.sha256(f"peft-debias-split\x1f{seed}\x1f{benchmark}\x1f{item_id}".encode()).digest()
    return SPLITS[digest[0] & 1]


def take_split(
    items: Iterable[T], split: str | None, *, benchmark: str, key: Callable[[T], str], seed: int = 0
) -> list[T]:
    """The items in half ``split`` (all of them when ``split`` is None), in their original order."""
    check_split(split)
    if split is None:
        return list(items)
    return [item for item in items if split_of(benchmark, key(item), seed) == split]
