"""Batched model scoring for the benchmarks: causal log-probs, masked-token log-probs, mean-pooled embeddings.

All three work on plain transformers models and on PEFT-wrapped ones, prompt learning included: prompt tuning
prepends virtual tokens to the sequence, so the model's outputs are longer than the input; every position is
offset by ``output length - input length`` (zero for LoRA and prefix tuning).

Speed: sequences are sorted by length and padded per batch (attention masks exclude the padding), in batches
bounded by a padded-token budget (:mod:`peft_debias.eval.batching`), and the LM head runs only at the scored
positions, in fp32 for a bf16 model (:mod:`peft_debias.eval.lm_head`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from peft_debias.core.errors import DebiasError
from peft_debias.eval.batching import DEFAULT_HEAD_TOKENS, DEFAULT_MAX_TOKENS, resolve_budget, token_budget_batches
from peft_debias.eval.lm_head import (
    HeadRows,
    HeadWeight,
    fp32_head_weight,
    head_log_softmax,
    head_only_at,
    model_inputs,
)
from peft_debias.eval.packed import batch as packed_batch
from peft_debias.eval.packed import pack, packing_works
from peft_debias.models.placement import model_device


def virtual_tokens(model: Any) -> int:
    """Number of virtual tokens of an active PEFT prompt-learning adapter (prefix / prompt / p-tuning), else 0."""
    configs = getattr(model, "peft_config", None)
    if not configs:
        return 0
    config = configs.get(getattr(model, "active_adapter", None) or "", None)
    if config is None or not getattr(config, "is_prompt_learning", False):
        return 0
    return int(getattr(config, "num_virtual_tokens", 0) or 0)


def max_sequence_length(model: Any, tokenizer: Any) -> int:
    """Longest input (in tokens) the model takes, leaving room for a prompt-learning adapter's virtual tokens."""
    limits = []
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            limits.append(value)
            break
    tok_max = getattr(tokenizer, "model_max_length", None)
    if isinstance(tok_max, int) and 0 < tok_max < 1_000_000:
        limits.append(tok_max)
    limit = min(limits) if limits else 512
    return max(8, limit - virtual_tokens(model))


def start_token_id(tokenizer: Any) -> int:
    """The token the first token of a sentence is conditioned on: BOS, else EOS."""
    for value in (tokenizer.bos_token_id, tokenizer.eos_token_id):
        if value is not None:
            return int(value)
    raise DebiasError(
        "the tokenizer has neither a BOS nor an EOS token to condition a sentence's first token on",
        "use a causal LM whose tokenizer defines bos_token or eos_token",
    )


def mask_token_id(tokenizer: Any, model_name: str = "the model") -> int:
    """The tokenizer's mask token id; a clear error for a tokenizer without one."""
    if getattr(tokenizer, "mask_token_id", None) is None:
        raise DebiasError(
            f"the tokenizer of {model_name} has no mask token, so masked-LM scoring is impossible",
            "score it as a causal LM (--kind causal_lm) or run seat",
        )
    return int(tokenizer.mask_token_id)


def pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and attention mask (padding at the end also keeps causal positions right)."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, seq in enumerate(seqs):
        ids[i, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[i, : len(seq)] = 1
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def causal_logprob_sums(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int = 32,
    bos: str = "context",
    groups: Sequence[Sequence[int]] | None = None,
    progress: bool | None = None,
    start: int | None = None,
    special_tokens: bool = False,
    reuse_start: bool = False,
    max_tokens: int | None = None,
) -> list[tuple[float, int]]:
    """``(sum of token log-probs, token count)`` of each text under a causal LM; mean = sum / count.

    The text's tokens (no special tokens added) are all scored, the first one conditioned on the BOS token
    (EOS if there is none), as in bias-bench's CrowS-Pairs / StereoSet causal scoring. ``bos="context"``
    feeds ``[BOS] + tokens`` in one forward, so every token also sees BOS (the natural input of a model trained
    with one). ``bos="separate"`` follows bias-bench's structure: the first token's probability comes from a
    forward on the start token alone and the rest from a forward on the tokens without it.

    ``start`` replaces the start token (bias-bench's ``<|endoftext|>``: :mod:`peft_debias.eval.protocols`);
    ``special_tokens`` encodes each text with the tokenizer's special tokens, as ``tokenizer.encode(text)`` does.
    ``reuse_start``: a text whose tokens already start with the start token takes that token as its context
    instead of a second one, and its first token is not scored (lm-eval's rule for an empty context).

    ``groups`` (lists of text indices, e.g. the two sentences of a CrowS-Pairs pair) are scored packed, their
    shared prefix computed once (:mod:`peft_debias.eval.packed`), with the same numbers.

    Batches are length-sorted and bounded by ``max_tokens`` padded tokens (default :data:`DEFAULT_HEAD_TOKENS`)
    and ``batch_size`` rows (:func:`token_budget_batches`). A model loaded in a lower precision gets its LM head
    and log-softmax in fp32 (:func:`fp32_head_weight`).
    """
    if bos not in ("context", "separate"):
        raise DebiasError(f"unknown causal BOS mode {bos!r}", "use 'context' or 'separate'")
    start = start_token_id(tokenizer) if start is None else int(start)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start
    limit = max_sequence_length(model, tokenizer)
    device = model_device(model)
    body = [tokenizer(t, add_special_tokens=special_tokens)["input_ids"] for t in texts]
    if any(len(b) + 1 > limit for b in body):
        raise DebiasError(
            f"a sentence is longer than the model's {limit}-token limit",
            "shorten it or use a model with a longer context",
        )
    head = fp32_head_weight(model)
    budget = resolve_budget(max_tokens, DEFAULT_HEAD_TOKENS)
    first: torch.Tensor | None = None  # bos="separate": log-probs of the first token given BOS alone
    if bos == "separate":
        one = torch.tensor([[start]], device=device)
        zero = torch.zeros(1, dtype=torch.long, device=device)
        first = head_log_softmax(model, one, torch.ones_like(one), zero, zero, head)[0].double().cpu()
    # separate: the text's forward holds no start token; lm-eval: a text that starts with it keeps it as context
    seqs = [list(b) if bos == "separate" or (reuse_start and b[:1] == [start]) else [start, *b] for b in body]
    vocab = getattr(getattr(model, "config", None), "vocab_size", None) or len(tokenizer)
    if groups is not None and bos == "context" and not virtual_tokens(model) and packing_works(model, start, vocab):
        return _packed_sums(model, seqs, groups, pad, (batch_size, budget), progress, head)
    scored = [i for i in range(len(texts)) if len(seqs[i]) > 1]
    out: list[tuple[float, int]] = [(0.0, 0)] * len(texts)
    lengths_all = [len(seqs[i]) for i in scored]
    for part in token_budget_batches(
        lengths_all, max_tokens=budget, max_rows=batch_size, desc="causal scoring", progress=progress
    ):
        idx = [scored[j] for j in part]
        ids, mask = pad_batch([seqs[i] for i in idx], pad, device)
        lengths = mask.sum(1)
        valid = torch.arange(ids.shape[1] - 1, device=device)[None, :] < (lengths[:, None] - 1)
        rows, cols = valid.nonzero(as_tuple=True)
        logp = head_log_softmax(model, ids, mask, rows, cols, head)
        lp = logp.gather(-1, ids[rows, cols + 1][:, None]).squeeze(-1).double().cpu()
        sums = torch.zeros(len(idx), dtype=torch.float64).index_add_(0, rows.cpu(), lp)
        for r, i in enumerate(idx):
            out[i] = (float(sums[r]), int(lengths[r]) - 1)
    if first is not None:
        for i, b in enumerate(body):
            if b:
                total, count = out[i]
                out[i] = (total + float(first[b[0]]), count + 1)
    return out


def _packed_sums(
    model: Any,
    seqs: list[list[int]],
    groups: Sequence[Sequence[int]],
    pad: int,
    limits: tuple[int, int],
    progress: bool | None,
    head: HeadWeight,
) -> list[tuple[float, int]]:
    """Packed groups in batches of at most ``limits = (sentences, padded tokens)``."""
    seen: set[int] = set()
    members: list[list[int]] = []
    for group in [*groups, *([i] for i in range(len(seqs)))]:  # then every text not in a group, alone
        kept = [i for i in group if i not in seen and len(seqs[i]) > 1]
        seen.update(kept)
        if kept:
            members.append(kept)
    packed = [pack([seqs[i] for i in m]) for m in members]
    device, dtype = model_device(model), next(model.parameters()).dtype
    batch_size, budget = limits
    per_batch = max(1, batch_size * len(members) // max(1, sum(len(m) for m in members)))
    sums = torch.zeros(len(seqs), dtype=torch.float64)
    for idx in token_budget_batches(
        [len(p.ids) for p in packed],
        max_tokens=budget,
        max_rows=per_batch,
        desc="causal scoring (packed)",
        progress=progress,
    ):
        inputs = packed_batch([packed[k] for k in idx], pad, dtype, device)
        cells: dict[tuple[int, int], int] = {}  # (batch row, logits row) -> row of the head output
        which, targets, owners = [], [], []
        for r, k in enumerate(idx):
            for member, row, target in packed[k].scored:
                which.append(cells.setdefault((r, row), len(cells)))
                targets.append(target)
                owners.append(members[k][member])
        rows = torch.tensor([r for r, _ in cells], device=device)
        cols = torch.tensor([c for _, c in cells], device=device)
        logp = head_log_softmax(
            model, inputs["input_ids"], inputs["attention_mask"], rows, cols, head, position_ids=inputs["position_ids"]
        )
        picked = logp[torch.tensor(which, device=device), torch.tensor(targets, device=device)].double().cpu()
        sums.index_add_(0, torch.tensor(owners), picked)
    return [(float(sums[i]), max(len(s) - 1, 0)) for i, s in enumerate(seqs)]


@torch.inference_mode()
def masked_logprobs(
    model: Any,
    tokenizer: Any,
    sequences: Sequence[Sequence[int]],
    rows: Sequence[tuple[int, int, int]],
    *,
    batch_size: int = 64,
    progress: bool | None = None,
    desc: str = "masked scoring",
    max_tokens: int | None = None,
) -> np.ndarray:
    """For each row ``(sequence index, position, target id)``: ``log p(target)`` at that position when it is masked.

    Each distinct ``(sequence, position)`` is one copy of the sequence with that single position replaced by the
    mask token, run once however many rows (targets) read it; copies of many sequences share a batch (sorted
    by length, at most ``batch_size`` copies and ``max_tokens`` padded tokens, default
    :data:`DEFAULT_HEAD_TOKENS`), and the LM head runs only at the masked positions (in fp32, see
    :func:`fp32_head_weight`).
    """
    mask_id = mask_token_id(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else mask_id
    device = model_device(model)
    limit = max_sequence_length(model, tokenizer)
    if any(len(s) > limit for s in sequences):
        raise DebiasError(
            f"a sentence is longer than the model's {limit}-token limit",
            "shorten it or use a model with a longer context",
        )
    copies: dict[tuple[int, int], int] = {}
    for seq, pos, _ in rows:
        copies.setdefault((seq, pos), len(copies))
    keys = list(copies)
    readers: list[list[int]] = [[] for _ in keys]
    for r, (seq, pos, _) in enumerate(rows):
        readers[copies[(seq, pos)]].append(r)
    out = np.zeros(len(rows), dtype=np.float64)
    head = fp32_head_weight(model)
    budget = resolve_budget(max_tokens, DEFAULT_HEAD_TOKENS)
    lengths = [len(sequences[seq]) for seq, _ in keys]
    for idx in token_budget_batches(lengths, max_tokens=budget, max_rows=batch_size, desc=desc, progress=progress):
        batch = []
        for k in idx:
            seq = list(sequences[keys[k][0]])
            seq[keys[k][1]] = mask_id
            batch.append(seq)
        ids, mask = pad_batch(batch, pad, device)
        cols = torch.tensor([keys[k][1] for k in idx], device=device)
        logp = head_log_softmax(model, ids, mask, torch.arange(len(idx), device=device), cols, head)
        which = [(j, r) for j, k in enumerate(idx) for r in readers[k]]
        picked = logp[[j for j, _ in which], [rows[r][2] for _, r in which]]
        out[[r for _, r in which]] = picked.double().cpu().numpy()
    return out


@torch.inference_mode()
def mean_pooled_embeddings(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    batch_size: int | None = None,
    progress: bool | None = None,
    max_tokens: int | None = None,
) -> np.ndarray:
    """Mean over tokens (padding and virtual tokens excluded) of the last hidden state, one float64 row per text.

    As in SEAT (May et al. 2019; bias-bench ``seat.py``): the tokenizer's special tokens are included, the
    last layer is averaged, and the vectors are L2-normalised. For causal LMs the same mean pooling is used.
    Batches are length-sorted, at most ``max_tokens`` padded tokens (default :data:`DEFAULT_MAX_TOKENS`) and
    ``batch_size`` rows (None: no row cap) each.
    """
    device = model_device(model)
    limit = max_sequence_length(model, tokenizer)
    rows: list[np.ndarray | None] = [None] * len(texts)
    encoded = [tokenizer(t, truncation=True, max_length=limit)["input_ids"] for t in texts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    empty = torch.zeros(0, dtype=torch.long, device=device)
    lengths = [len(e) for e in encoded]
    # A bare encoder returns its last hidden state; a model with an LM head returns logits, so ask for the layers.
    all_layers = callable(getattr(model, "get_output_embeddings", None)) and model.get_output_embeddings() is not None
    for idx in token_budget_batches(
        lengths,
        max_tokens=resolve_budget(max_tokens, DEFAULT_MAX_TOKENS),
        max_rows=batch_size,
        desc="encoding",
        progress=progress,
    ):
        ids, mask = pad_batch([encoded[i] for i in idx], pad, device)  # right padding, also for causal LMs
        with head_only_at(model, HeadRows(ids.shape[1], empty, empty)):  # no LM head needed: no positions
            result = model(**model_inputs(ids, mask), output_hidden_states=all_layers)
        hidden = getattr(result, "last_hidden_state", None)
        if hidden is None:
            hidden = result.hidden_states[-1]
        hidden = hidden[:, hidden.shape[1] - ids.shape[1] :].double()
        weights = mask.unsqueeze(-1).double()
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
        pooled = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        for r, i in enumerate(idx):
            rows[i] = pooled[r]
    return np.stack(rows) if rows else np.zeros((0, 0))  # type: ignore[arg-type]
