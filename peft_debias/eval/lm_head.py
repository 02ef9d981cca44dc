"""The LM head at the scored positions only, in fp32 when the model is not.

The head (the vocabulary projection, as costly as a small encoder's whole body) is evaluated only at the positions
that are scored: a forward pre-hook on ``model.get_output_embeddings()`` hands it just those hidden states. A
model whose head cannot be hooked falls back to full logits, with the same numbers. For a model loaded in bf16 the
pre-hook hands the head no row at all and a forward hook puts in its place the logits computed in fp32 from an fp32
copy of the head's weight (:func:`fp32_head_weight`): the log-softmax is fp32 too, the model's own parameters
(a head tied to the input embeddings included) are untouched.

Scorers that need only the log-probability of one target token per position (causal perplexity) use
:func:`head_target_logprobs`: the head's weight is multiplied a slice of the vocabulary at a time (each slice cast
to fp32 on the fly), so neither an fp32 copy of the whole weight nor a (positions x vocabulary) logits tensor exists
(for a 1B bf16 model with a 49k vocabulary these were 384 MiB and 2 x 192 MiB per 1024-token window).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

HeadWeight = tuple[torch.Tensor, torch.Tensor | None] | None  # an fp32 copy of the head's weight and bias
VOCAB_CHUNK = 2048  # vocabulary rows per product in head_target_logprobs (8 MiB of fp32 logits per 1024 positions)


class HeadRows:
    """Forward hooks on the LM head: keep only the hidden states at ``(rows, cols)`` of the input grid.

    With ``weight`` (an fp32 copy of the head's weight, for a model loaded in a lower precision) the head's own
    low-precision product is skipped (it gets no rows) and the logits at those positions are computed in fp32.
    With ``keep`` the head gets no rows either and the kept hidden states stay in :attr:`picked` for the caller.
    """

    def __init__(
        self, width: int, rows: torch.Tensor, cols: torch.Tensor, weight: HeadWeight = None, *, keep: bool = False
    ) -> None:
        self.width, self.rows, self.cols, self.fired = width, rows, cols, False
        self.weight, self.picked, self.keep = weight, None, keep

    def __call__(self, module: torch.nn.Module, args: tuple) -> tuple:
        hidden = args[0]
        if self.fired or hidden.dim() != 3:  # only the first call, on (batch, length, hidden)
            return args
        self.fired = True
        offset = hidden.shape[1] - self.width
        picked = hidden[self.rows, self.cols + offset].unsqueeze(0)
        if self.weight is None and not self.keep:
            return (picked, *args[1:])
        self.picked = picked
        return (picked[:, :0], *args[1:])

    def after(self, module: torch.nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        """Forward hook: the fp32 logits of the kept positions in place of the head's (empty) output."""
        if self.picked is None or self.keep:
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
    if not isinstance(head, torch.nn.Linear) or head.weight.dtype == torch.float32 or head.weight.is_meta:
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
    return torch.log_softmax(_picked_logits(hook, logits, ids, rows, cols).float(), dim=-1)


def _picked_logits(
    hook: HeadRows, logits: torch.Tensor, ids: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """The logits at the scored positions: the hooked head's rows, else (no hook) picked from the full logits,
    offset past any virtual tokens."""
    if hook.fired:
        return logits[0]
    offset = logits.shape[1] - ids.shape[1]
    return logits[rows, cols + offset]


def head_target_logprobs(
    model: Any,
    ids: torch.Tensor,
    mask: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    targets: torch.Tensor,
    *,
    chunk: int = VOCAB_CHUNK,
) -> torch.Tensor:
    """``log p(targets[k])`` at the input positions ``(rows[k], cols[k])``: a ``(k,)`` fp32 tensor, equal up to
    rounding to ``head_log_softmax(..., fp32_head_weight(model)).gather(targets)``, in a fraction of the memory.

    The model runs with its LM head handed no rows; the kept hidden states then meet the head's weight ``chunk``
    vocabulary rows at a time, in fp32, and the log-sum-exp of the chunks gives the normaliser. A head that is not a
    plain ``Linear`` (e.g. wrapped by an adapter) falls back to :func:`head_log_softmax`.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(head) is not torch.nn.Linear or head.weight.is_meta:  # an offloaded head: its own forward loads it
        logp = head_log_softmax(model, ids, mask, rows, cols, fp32_head_weight(model))
        return logp.gather(-1, targets[:, None])[:, 0]
    hook = HeadRows(ids.shape[1], rows, cols, keep=True)
    with head_only_at(model, hook):
        logits = model(**model_inputs(ids, mask)).logits
    if hook.picked is None:  # the head was not called on the hidden states: full logits
        logp = torch.log_softmax(_picked_logits(hook, logits, ids, rows, cols).float(), dim=-1)
        return logp.gather(-1, targets[:, None])[:, 0]
    del logits
    hidden = hook.picked[0].to(head.weight.device).float()  # a device map may hold the head on another device
    return _chunked_target_logprobs(hidden, head.weight, head.bias, targets, chunk)


def _chunked_target_logprobs(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, chunk: int
) -> torch.Tensor:
    """``log_softmax(hidden @ weight.T + bias)[k, targets[k]]`` in fp32, a slice of ``chunk`` vocabulary rows at a
    time (each slice of a low-precision weight cast to fp32 on its own)."""
    vocab = weight.shape[0]
    target_logits = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
    normalisers = []
    for lo in range(0, vocab, chunk):
        hi = min(vocab, lo + chunk)
        part_bias = None if bias is None else bias[lo:hi].float()
        logits = torch.nn.functional.linear(hidden, weight[lo:hi].float(), part_bias)
        normalisers.append(torch.logsumexp(logits, dim=-1))
        inside = ((targets >= lo) & (targets < hi)).nonzero()[:, 0]
        target_logits[inside] = logits[inside, targets[inside] - lo]
        del logits
    return target_logits - torch.logsumexp(torch.stack(normalisers, dim=-1), dim=-1)
