"""Straightforward reference implementations, written the way bias-bench / sent-bias are: one sentence per forward,
one forward per masked token, Python loops for the cosine table and the permutation test.

They exist to be compared side by side with :mod:`peft_debias.eval` in ``bench_eval.py`` (same model, same data,
same process): the figures must agree, and the timings show what batching and vectorisation buy. Not used by the
package.
"""

from __future__ import annotations

import difflib
import itertools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch


# --------------------------------------------------------------------------------------------------- SEAT
@torch.no_grad()
def seat_encode(model: Any, tokenizer: Any, texts: Sequence[str]) -> dict[str, np.ndarray]:
    """bias-bench ``_encode``: each sentence alone, mean of the last hidden state, L2-normalised, keyed by text.

    (bias-bench runs it with autograd on; this reference uses ``no_grad``, which only makes it faster.)
    """
    encodings = {}
    for text in texts:
        inputs = tokenizer(text, return_tensors="pt")
        outputs = model(**inputs, output_hidden_states=True)
        hidden = getattr(outputs, "last_hidden_state", None)
        if hidden is None:
            hidden = outputs.hidden_states[-1]
        vector = hidden.mean(dim=1)[0]
        vector = vector / vector.norm()
        encodings[text] = vector.numpy().astype(np.float64)
    return encodings


def _cosine(u: np.ndarray, v: np.ndarray) -> float:
    return float(np.dot(u, v) / math.sqrt(np.dot(u, u) * np.dot(v, v)))


def seat_test(
    test: dict[str, Any], encodings: dict[str, np.ndarray], n_samples: int, rng: np.random.Generator
) -> tuple[float, float]:
    """sent-bias ``run_test`` on a test file's JSON object: effect size and one-sided permutation p-value."""
    x, y, a, b = (
        [encodings[s] for s in dict.fromkeys(test[k]["examples"])] for k in ("targ1", "targ2", "attr1", "attr2")
    )
    targets = x + y
    attributes = a + b
    cos = [[_cosine(w, v) for v in attributes] for w in targets]  # the cosine lookup table, cell by cell
    s = np.array([np.mean(row[: len(a)]) - np.mean(row[len(a) :]) for row in cos])
    effect = (np.mean(s[: len(x)]) - np.mean(s[len(x) :])) / np.std(s, ddof=1)
    size = len(x)
    observed = s[:size].sum()
    tol = 1e-10 * np.abs(s).sum()
    indices = np.arange(2 * size)
    partitions = math.comb(2 * size, size)
    if partitions <= n_samples:
        hits = total = 0
        for subset in itertools.combinations(indices, size):
            value = s[list(subset)].sum()
            if value >= observed - tol:
                hits += 1
            total += 1
        return float(effect), hits / total
    hits, total = 1, 1  # the observed partition, as sent-bias does
    for _ in range(n_samples - 1):
        rng.shuffle(indices)
        value = s[indices[:size]].sum()
        if value > observed or abs(value - observed) <= tol:
            hits += 1
        total += 1
    return float(effect), hits / total


# ---------------------------------------------------------------------------------------------- CrowS-Pairs
def get_span(ids1: Sequence[int], ids2: Sequence[int]) -> tuple[list[int], list[int]]:
    """bias-bench ``get_span``: positions in difflib's ``equal`` blocks."""
    matcher = difflib.SequenceMatcher(None, [str(x) for x in ids1], [str(x) for x in ids2])
    template1, template2 = [], []
    for op in matcher.get_opcodes():
        if op[0] == "equal":
            template1 += list(range(op[1], op[2]))
            template2 += list(range(op[3], op[4]))
    return template1, template2


@torch.no_grad()
def crows_masked_pair(model: Any, tokenizer: Any, sent1: str, sent2: str) -> tuple[float, float]:
    """The CrowS-Pairs scoring of DESIGN section 4, written like the original ``mask_unigram`` of Nangia et al.:
    mask each shared token (not the first and last: CLS/SEP), one forward each.

    Returns the mean log-prob of each sentence's shared tokens (the original sums; same count for both sentences).
    """
    ids1 = tokenizer.encode(sent1, return_tensors="pt")
    ids2 = tokenizer.encode(sent2, return_tensors="pt")
    template1, template2 = get_span(ids1[0], ids2[0])
    mask_id = tokenizer.mask_token_id
    score1 = score2 = 0.0
    count = 0
    for i in range(1, len(template1) - 1):
        for ids, template, side in ((ids1, template1, 1), (ids2, template2, 2)):
            masked = ids.clone()
            masked[0][template[i]] = mask_id
            logits = model(masked).logits[0, template[i]]
            value = torch.log_softmax(logits, dim=0)[ids[0][template[i]]].item()
            if side == 1:
                score1 += value
            else:
                score2 += value
        count += 1
    return (score1 / count, score2 / count) if count else (float("nan"), float("nan"))


# -------------------------------------------------------------------------------------------------- causal
@torch.no_grad()
def causal_mean_logprob(model: Any, tokenizer: Any, sentence: str, bos: str = "context") -> float:
    """Mean per-token log-prob of one sentence, first token conditioned on BOS; one sentence per forward.

    (bias-bench takes a softmax, then log2 of each probability; log-softmax is the same up to float error and
    cannot underflow to -inf.)

    ``bos="separate"`` is bias-bench's ``_joint_log_probability``: a forward on BOS alone (repeated per sentence,
    as there) for the first token, and a forward on the sentence without BOS for the rest.
    """
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    tokens = tokenizer(sentence, add_special_tokens=False)["input_ids"]
    if bos == "separate":
        first = torch.log_softmax(model(torch.tensor([[start]])).logits[0, -1], dim=-1)[tokens[0]].item()
        logp = torch.log_softmax(model(torch.tensor([tokens])).logits[0], dim=-1)
        values = [first] + [logp[i - 1, tokens[i]].item() for i in range(1, len(tokens))]
        return float(np.mean(values))
    ids = torch.tensor([[start, *tokens]])
    logp = torch.log_softmax(model(ids).logits[0], dim=-1)
    return float(np.mean([logp[i - 1, ids[0, i]].item() for i in range(1, ids.shape[1])]))


# ------------------------------------------------------------------------------------------------ StereoSet
@torch.no_grad()
def stereoset_causal_items(model: Any, tokenizer: Any, items: Sequence[Any], bos: str = "context") -> np.ndarray:
    """StereoSet intrasentence causal scoring the way bias-bench's runner walks the data: item by item, each of
    its three filled sentences (stereotype, anti-stereotype, unrelated) in its own forward; ``(n, 3)`` mean
    per-token log-probs.

    ``bos="separate"`` takes the first token's log-probs from one BOS-only forward made once for the whole run
    (bias-bench's ``initial_token_probabilities``), then scores each sentence without BOS.
    """
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    initial = torch.log_softmax(model(torch.tensor([[start]])).logits[0, -1], dim=-1)
    scores = np.zeros((len(items), 3))
    for row, item in enumerate(items):
        for col, sentence in enumerate(item.sentences):
            tokens = tokenizer(sentence, add_special_tokens=False)["input_ids"]
            if bos == "separate":
                logp = torch.log_softmax(model(torch.tensor([tokens])).logits[0], dim=-1)
                values = [initial[tokens[0]].item()] + [logp[i - 1, tokens[i]].item() for i in range(1, len(tokens))]
            else:
                ids = [start, *tokens]
                logp = torch.log_softmax(model(torch.tensor([ids])).logits[0], dim=-1)
                values = [logp[i - 1, ids[i]].item() for i in range(1, len(ids))]
            scores[row, col] = float(np.mean(values))
    return scores
