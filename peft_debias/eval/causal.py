"""Causal sentence scores under a scoring protocol (:mod:`peft_debias.eval.protocols`), for CrowS-Pairs and
StereoSet: which token the first token is conditioned on, whether it is scored in context or from a separate
forward, and whether a sentence's score is its mean per-token log-prob or its summed log-likelihood."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from peft_debias.eval.lm_scoring import causal_logprob_sums, start_token_id
from peft_debias.eval.protocols import ENDOFTEXT, Protocol

logger = logging.getLogger(__name__)


def protocol_start(tokenizer: Any, protocol: Protocol) -> tuple[int, str]:
    """The token a causal sentence's first token is conditioned on under ``protocol``, and its name for the record.

    ``bias-bench`` conditions on ``tokenizer.encode("<|endoftext|>")``; a tokenizer without that single token gets
    its BOS (EOS if none), and the name says so.
    """
    fallback = start_token_id(tokenizer)
    name = str(tokenizer.convert_ids_to_tokens(fallback))
    if protocol.causal_start != "endoftext":
        return fallback, name
    ids = tokenizer.encode(ENDOFTEXT)
    if len(ids) == 1 and tokenizer.convert_ids_to_tokens(ids[0]) == ENDOFTEXT:
        return int(ids[0]), ENDOFTEXT
    return fallback, f"{name} (the tokenizer has no single {ENDOFTEXT} token, so its BOS stands in for it)"


def causal_scores(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    protocol: Protocol,
    groups: Sequence[Sequence[int]] | None = None,
    batch_size: int = 32,
    progress: bool | None = None,
) -> np.ndarray:
    """One score per text under ``protocol``: the mean per-token log-prob, or the summed log-likelihood
    (``causal_total="sum"``, lm-eval); NaN for a text with no scored token. See :func:`causal_logprob_sums`."""
    start, _ = protocol_start(tokenizer, protocol)
    scored = causal_logprob_sums(
        model,
        tokenizer,
        texts,
        batch_size=batch_size,
        bos=protocol.causal_bos,
        groups=groups,
        progress=progress,
        start=start,
        special_tokens=protocol.causal_specials,
        reuse_start=protocol.causal_reuse_start,
    )
    total = protocol.causal_total == "sum"
    return np.array([(s if total else s / n) if n else np.nan for s, n in scored], dtype=np.float64)


def causal_record(tokenizer: Any, protocol: Protocol) -> dict[str, Any]:
    """How causal sentences were scored, for a results file (a warning when bias-bench's start token is missing)."""
    start = protocol_start(tokenizer, protocol)[1]
    if protocol.causal_start == "endoftext" and start != ENDOFTEXT:
        logger.warning("--protocol %s: first tokens are conditioned on %s", protocol.name, start)
    return {
        "start_token": start,
        "first_token": "separate forward" if protocol.causal_bos == "separate" else "in context",
        "special_tokens": protocol.causal_specials,
        "score": "summed log-likelihood" if protocol.causal_total == "sum" else "mean per-token log-prob",
    }
