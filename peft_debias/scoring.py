"""Batched model scoring shared by the evaluation suite and the demo.

* :func:`causal_logprobs`: per-sentence sum and count of token log-probs under a causal LM, the first token
  conditioned on the BOS token (EOS if the tokenizer has none), as in bias-bench's CrowS-Pairs / StereoSet
  causal scoring. Mean per-token log-prob = sum / count.
* :func:`sentence_embeddings`: mean over tokens of the last hidden state (padding excluded), L2-normalised,
  as in SEAT (May et al. 2019).

Sentences are sorted by length and padded per batch, so a batch wastes little compute on padding.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def max_positions(model, tokenizer=None, cap: int = 1 << 20) -> int:
    """The longest input the model accepts (position embeddings; tokenizer limit), at most ``cap``."""
    limits = [cap, getattr(getattr(model, "config", None), "max_position_embeddings", None) or cap]
    if tokenizer is not None and 0 < getattr(tokenizer, "model_max_length", cap) < cap:
        limits.append(tokenizer.model_max_length)
    return int(min(limits))


def _start_token(tokenizer) -> int:
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    if start is None:
        raise ValueError("tokenizer has neither a BOS nor an EOS token to condition the first token on")
    return int(start)


@torch.inference_mode()
def causal_logprobs(model, tokenizer, texts: Sequence[str], batch_size: int = 32) -> list[tuple[float, int]]:
    """``(sum of log-probs, number of tokens)`` of each text under a causal LM (BOS-conditioned first token)."""
    start = _start_token(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start
    limit = max_positions(model, tokenizer)
    encoded = [[start, *tokenizer(t, add_special_tokens=False)["input_ids"]][:limit] for t in texts]
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    device = _device(model)
    results: list[tuple[float, int]] = [(0.0, 0)] * len(texts)
    for lo in range(0, len(order), batch_size):
        idx = order[lo : lo + batch_size]
        width = max(len(encoded[i]) for i in idx)
        ids = torch.full((len(idx), width), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids[row, : len(encoded[i])] = torch.tensor(encoded[i])
            mask[row, : len(encoded[i])] = 1
        ids, mask = ids.to(device), mask.to(device)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        logp = logp * mask[:, 1:]
        sums, counts = logp.sum(-1).tolist(), mask[:, 1:].sum(-1).tolist()
        for row, i in enumerate(idx):
            results[i] = (float(sums[row]), int(counts[row]))
    return results


@torch.inference_mode()
def sentence_embeddings(
    model, tokenizer, texts: Sequence[str], batch_size: int = 64, max_length: int = 256
) -> torch.Tensor:
    """Mean-pooled (padding excluded), L2-normalised last-layer embeddings, one row per text (float32, CPU)."""
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
    device = _device(model)
    limit = min(max_length, max_positions(model, tokenizer))
    out = torch.empty(0)
    rows: dict[int, torch.Tensor] = {}
    for lo in range(0, len(order), batch_size):
        idx = order[lo : lo + batch_size]
        batch = tokenizer(
            [texts[i] for i in idx], padding=True, truncation=True, max_length=limit, return_tensors="pt"
        ).to(device)
        result = model(**batch, output_hidden_states=True)
        hidden = result.hidden_states[-1] if getattr(result, "hidden_states", None) else result.last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
        pooled = torch.nn.functional.normalize(pooled.float(), dim=-1).cpu()
        for row, i in enumerate(idx):
            rows[i] = pooled[row]
    if rows:
        out = torch.stack([rows[i] for i in range(len(texts))])
    return out
