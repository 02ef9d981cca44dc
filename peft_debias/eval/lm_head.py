"""The LM head at the scored positions only, in fp32 when the model is not.

The head (the vocabulary projection, as costly as a small encoder's whole body) is evaluated only at the positions
that are scored: a forward pre-hook on ``model.get_output_embeddings()`` hands it just those hidden states. A
model whose head cannot be hooked falls back to full logits, with the same numbers. For a model loaded in bf16 the
pre-hook hands the head no row at all and a forward hook puts in its place the logits computed in fp32 from an fp32
copy of the head's weight (:func:`fp32_head_weight`): the log-softmax is fp32 too, the model's own parameters
(a head tied to the input embeddings included) are untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

HeadWeight = tuple[torch.Tensor, torch.Tensor | None] | None  # an fp32 copy of the head's weight and bias


class HeadRows:
    """Forward hooks on the LM head: keep only the hidden states at ``(rows, cols)`` of the input grid.

    With ``weight`` (an fp32 copy of the head's weight, for a model loaded in a lower precision) the head's own
    low-precision product is skipped (it gets no rows) and the logits at those positions are computed in fp32.
    """

    def __init__(self, width: int, rows: torch.Tensor, cols: torch.Tensor, weight: HeadWeight = None) -> None:
        self.width, self.rows, self.cols, self.fired = width, rows, cols, False
        self.weight, self.picked = weight, None

    def __call__(self, module: torch.nn.Module, args: tuple) -> tuple:
        hidden = args[0]
        if self.fired or hidden.dim() != 3:  # only the first call, on (batch, length, hidden)
            return args
        self.fired = True
        offset = hidden.shape[1] - self.width
        picked = hidden[self.rows, self.cols + offset].unsqueeze(0)
        if self.weight is None:
            return (picked, *args[1:])
        self.picked = picked
        return (picked[:, :0], *args[1:])

    def after(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        """Forward hook: the fp32 logits of the kept positions in place of the head's (empty) output."""
        if self.picked is None:
            return None
        picked, self.picked = self.picked, None
        weight, bias = self.weight  # type: ignore[misc]
        return torch.nn.functional.linear(picked.float(), weight, bias)


def fp32_head_weight(model: Any) -> HeadWeight:
    """An fp32 copy of the LM head's weight (and bias) when the head is a low-precision ``Linear``, else None.

    The copy is separate from the model's parameters: a head tied to the input embeddings stays tied and the
    embedding lookup keeps the model's dtype.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear) or head.weight.dtype == torch.float32:
        return None
    bias = head.bias.detach().float() if head.bias is not None else None
    return head.weight.detach().float(), bias


@contextlib.contextmanager
def head_only_at(model: Any, hook: HeadRows) -> Iterator[None]:
    """Within the block, ``hook`` is installed on the model's LM head (when it has one)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    handles = []
    if isinstance(head, torch.nn.Module):
        handles.append(head.register_forward_pre_hook(hook))
        if hook.weight is not None:
            handles.append(head.register_forward_hook(hook.after))
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def model_inputs(ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The keyword inputs of a forward on right-padded ``ids`` and their attention ``mask``."""
    # No token_type_ids: BERT-style models default to zeros (one segment), and PEFT prompt learning rejects them.
    return {"input_ids": ids, "attention_mask": mask}


def head_log_softmax(
    model: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    head_weight: HeadWeight = None,
    **extra: Any,
) -> torch.Tensor:
    """Log-softmax over the vocabulary at the input positions ``(rows[k], cols[k])``: a ``(k, vocab)`` fp32 tensor.

    ``head_weight`` (from :func:`fp32_head_weight`) computes the head in fp32 for a low-precision model.
    ``extra`` goes to the model too (the packed path passes ``position_ids`` and a 4-D ``mask``).
    """
    hook = HeadRows(ids.shape[1], rows, cols, head_weight)
    with head_only_at(model, hook):
        logits = model(**model_inputs(ids, mask), **extra).logits
    if hook.fired:
        picked = logits[0]
    else:  # the head could not be hooked: full logits, offset past any virtual tokens
        offset = logits.shape[1] - ids.shape[1]
        picked = logits[rows, cols + offset]
    return torch.log_softmax(picked.float(), dim=-1)
