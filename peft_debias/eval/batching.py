"""Length-sorted batches bounded by a token budget: rows x longest row (the padded size of a forward) stays under it.

A fixed row count puts the longest sentences of a run into one huge batch (SEAT's longest are 15x its median);
a token budget keeps every forward about the same size, so peak memory follows the budget, not the data.
``--max-batch-tokens`` sets it for a whole evaluation (:func:`batch_token_budget`); ``--batch-size`` still caps
the rows of a batch.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence

from tqdm.auto import tqdm

# Padded tokens (rows x longest row) per forward when the caller sets no budget: big enough that short sentences
# fill wide batches (few forwards), small enough that a batch of the longest sentences stays small in memory.
DEFAULT_MAX_TOKENS = 2048
# The same for the scorers that run the LM head: its fp32 log-softmax is (scored positions x vocabulary) floats.
DEFAULT_HEAD_TOKENS = 1024


_BUDGET: contextvars.ContextVar[int | None] = contextvars.ContextVar("max_batch_tokens", default=None)


@contextlib.contextmanager
def batch_token_budget(max_tokens: int | None) -> Iterator[None]:
    """Within the block, scorers called without ``max_tokens`` use this budget (None: their defaults)."""
    token = _BUDGET.set(max_tokens)
    try:
        yield
    finally:
        _BUDGET.reset(token)


def resolve_budget(max_tokens: int | None, default: int) -> int:
    """The token budget of a call: its own, else the :func:`batch_token_budget` in force, else ``default``."""
    return max_tokens or _BUDGET.get() or default


def token_budget_batches(
    lengths: Sequence[int],
    *,
    max_tokens: int | None = None,
    max_rows: int | None = None,
    desc: str = "batches",
    progress: bool | None = False,
) -> Iterator[list[int]]:
    """Indices into ``lengths``, shortest first, in batches whose padded size ``rows x longest`` stays within
    ``max_tokens`` (default :data:`DEFAULT_MAX_TOKENS`) and whose row count stays within ``max_rows`` (no cap
    when None). A single item longer than the budget is a batch on its own.
    """
    budget = DEFAULT_MAX_TOKENS if max_tokens is None else max(1, int(max_tokens))
    cap = len(lengths) if max_rows is None else max(1, int(max_rows))
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:  # ascending: the newcomer is the longest of its batch
        if current and ((len(current) + 1) * max(1, lengths[i]) > budget or len(current) >= cap):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    yield from tqdm(batches, desc=desc, leave=False, disable=None if progress is None else not progress)
