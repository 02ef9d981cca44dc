"""Causal scoring of sentences that share a prefix, with the shared prefix computed once.

A CrowS-Pairs pair, or the three filled sentences of a StereoSet item, start the same way (``[BOS]`` plus the
words before the edit). Such a group is packed into one sequence, ``prefix + suffix_1 + suffix_2 + ...``, with a
tree attention mask (a suffix token sees the prefix and the earlier tokens of its own suffix) and position ids
that restart each suffix where the prefix ends. Every token gets exactly the logits it gets when its sentence is
run alone (checked once per model against plain forwards; a model where it does not hold falls back to them), and
StereoSet needs about 40% fewer token computations.

Only for ``bos="context"`` scoring without a prompt-learning adapter (those bring their own attention masks).
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from peft_debias.models.placement import model_device

logger = logging.getLogger(__name__)

_CHECKED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class PackedGroup:
    """One packed sequence: ids, positions, segment of each token (-1 = shared prefix) and, per scored token,
    ``(member, index of the logits row that predicts it, target id)``."""

    ids: list[int]
    positions: list[int]
    segments: list[int]
    scored: list[tuple[int, int, int]]


def pack(sequences: Sequence[Sequence[int]]) -> PackedGroup:
    """Pack sequences (each starting with the same start token) that share a prefix."""
    shortest = min(len(s) for s in sequences)
    common = 0  # the longest common prefix (a member that is all prefix is scored from the prefix rows alone)
    while common < shortest and all(s[common] == sequences[0][common] for s in sequences):
        common += 1
    ids, positions, segments = list(sequences[0][:common]), list(range(common)), [-1] * common
    scored: list[tuple[int, int, int]] = []
    for member, seq in enumerate(sequences):
        start = len(ids)
        ids += seq[common:]
        positions += range(common, len(seq))
        segments += [member] * (len(seq) - common)

        def row(q: int, start: int = start) -> int:
            return q if q < common else start + q - common

        scored += [(member, row(p - 1), seq[p]) for p in range(1, len(seq))]
    return PackedGroup(ids, positions, segments, scored)


def tree_mask(segments: torch.Tensor) -> torch.Tensor:
    """``(L, L)`` bool: token i may attend to token k (k <= i, and k in the prefix or in i's own suffix)."""
    index = torch.arange(len(segments), device=segments.device)
    earlier = index[None, :] <= index[:, None]
    visible = (segments[None, :] == -1) | (segments[None, :] == segments[:, None])
    return earlier & visible


def batch(groups: Sequence[PackedGroup], pad_id: int, dtype: torch.dtype, device: torch.device) -> dict:
    """Model inputs for packed groups: right-padded ids, position ids and an additive 4-D attention mask."""
    width = max(len(g.ids) for g in groups)
    ids = torch.full((len(groups), width), pad_id, dtype=torch.long)
    positions = torch.zeros((len(groups), width), dtype=torch.long)
    allowed = torch.eye(width, dtype=torch.bool).repeat(len(groups), 1, 1)  # padding sees itself only
    for r, g in enumerate(groups):
        n = len(g.ids)
        ids[r, :n] = torch.tensor(g.ids)
        positions[r, :n] = torch.tensor(g.positions)
        allowed[r, :n, :n] = tree_mask(torch.tensor(g.segments))
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return {
        "input_ids": ids.to(device),
        "position_ids": positions.to(device),
        "attention_mask": mask[:, None].to(device),
    }


def packing_works(model: Any, start: int, vocab_size: int) -> bool:
    """Whether ``model`` gives packed sequences exactly the logits of plain ones (checked once per model)."""
    try:
        return _CHECKED[model]
    except (KeyError, TypeError):
        pass
    device = model_device(model)
    tokens = [t % max(vocab_size, 2) for t in (11, 12, 13, 14, 15)]
    a, b = [start, tokens[0], tokens[1], tokens[2]], [start, tokens[0], tokens[3], tokens[4], tokens[1]]
    ok = False
    try:
        with torch.inference_mode():
            group = pack([a, b])
            dtype = next(model.parameters()).dtype
            packed = model(**batch([group], 0, dtype, device)).logits[0].float()
            for member, seq in enumerate((a, b)):
                alone = model(input_ids=torch.tensor([seq], device=device)).logits[0].float()
                rows = [row for m, row, _ in group.scored if m == member]
                ok = bool(torch.allclose(packed[rows], alone[: len(seq) - 1], atol=1e-4, rtol=1e-4))
                if not ok:
                    break
    except Exception as err:  # an architecture without 4-D mask / position id support
        logger.info("packed causal scoring unavailable for %s: %s", type(model).__name__, err)
        ok = False
    with contextlib.suppress(TypeError):  # a model object that cannot be weakly referenced: check every time
        _CHECKED[model] = ok
    if not ok:
        logger.info("packed causal scoring disabled for %s; scoring sentences one by one", type(model).__name__)
    return ok
