"""Language-model quality: perplexity (causal LMs) or pseudo-perplexity (masked LMs) on a text.

Use text from outside the training corpus: training on WikiText lowers WikiText perplexity and hides real
damage (DESIGN section 5). The text's first ``max_tokens`` tokens are scored (no special tokens added).

* Causal: ``exp(mean NLL)`` over every token, the first conditioned on BOS (EOS if none). Sliding windows of
  ``window`` tokens advance by ``stride``; each window scores only the tokens no earlier window scored, so every
  token is predicted once, with at least ``window - stride`` tokens of context once past the first window.
  Windows are batched.
* Masked: pseudo-perplexity (Salazar et al. 2020), ``exp(-mean log p(token | rest))`` with each token masked once,
  in consecutive chunks of ``window`` tokens (special tokens added per chunk); all masked copies are batched.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from peft_debias.core.errors import DebiasError
from peft_debias.eval.batching import DEFAULT_HEAD_TOKENS, resolve_budget
from peft_debias.eval.lm_head import head_target_logprobs
from peft_debias.eval.lm_scoring import (
    masked_logprobs,
    max_sequence_length,
    model_device,
    pad_batch,
    start_token_id,
)
from peft_debias.models.loading import ModelKind

DEFAULT_MAX_TOKENS = {ModelKind.CAUSAL_LM: 20_000, ModelKind.MASKED_LM: 2_000}
DEFAULT_WINDOW = {ModelKind.CAUSAL_LM: 1024, ModelKind.MASKED_LM: 128}


# Characters read per requested token: far more than any tokenizer needs on real text (3-5 characters a token), so
# the first ``max_tokens`` tokens are always in what is read, while a large file is never read whole.
CHARS_PER_TOKEN = 64


def chars_needed(max_tokens: int | None) -> int:
    """How many characters of a text to read for ``max_tokens`` tokens (None: the largest default)."""
    return (max_tokens or max(DEFAULT_MAX_TOKENS.values())) * CHARS_PER_TOKEN + 4096


def read_text(path: str | Path, max_chars: int | None = None) -> str:
    """A UTF-8 text file's content (newlines normalised); a clear error for a missing, binary or empty file.

    With ``max_chars`` only the first ``max_chars`` characters are read, so memory stays bounded on a large file.
    """
    path = Path(path)
    if not path.is_file():
        raise DebiasError(f"perplexity text {path} not found", "pass an existing text file (--ppl-file)")
    with open(path, "rb") as fh:
        head = fh.read(65536)
    if b"\x00" in head:
        raise DebiasError(f"perplexity text {path} is binary", "pass a plain UTF-8 text file")
    try:
        with open(path, encoding="utf-8-sig", newline=None) as fh:  # universal newlines: \r\n and \r -> \n
            text = fh.read(-1 if max_chars is None else max_chars)
    except UnicodeDecodeError as err:
        raise DebiasError(f"perplexity text {path} is not UTF-8", "convert it to UTF-8") from err
    if not text.strip():
        raise DebiasError(f"perplexity text {path} is empty", "pass a file with text in it")
    return text


def text_token_ids(tokenizer: Any, text: str, max_tokens: int) -> list[int]:
    """The first ``max_tokens`` token ids of ``text`` (only as much text as needed is tokenized)."""
    chars = max_tokens * 6 + 64
    while True:
        ids = tokenizer(text[:chars], add_special_tokens=False, verbose=False)["input_ids"]
        if len(ids) > max_tokens or chars >= len(text):
            return list(ids[:max_tokens])
        chars *= 2


@torch.inference_mode()
def causal_nll(
    model: Any,
    tokenizer: Any,
    ids: list[int],
    *,
    window: int,
    stride: int,
    batch_size: int = 4,
    progress: bool | None = None,
) -> tuple[float, int]:
    """Total negative log-likelihood of ``ids`` (first token given BOS) and the number of tokens scored."""
    if not 0 < stride <= window - 1:
        raise DebiasError(
            f"perplexity stride {stride} must be between 1 and window - 1 ({window - 1})", "pass a smaller --ppl-stride"
        )
    seq = [start_token_id(tokenizer), *ids]
    spans: list[tuple[int, int, int]] = []  # (begin, end, first scored position), in seq coordinates
    begin, scored_to = 0, 0
    while scored_to < len(seq) - 1:
        end = min(begin + window, len(seq))
        spans.append((begin, end, max(scored_to + 1, begin + 1)))
        scored_to = end - 1
        begin += stride
    device = model_device(model)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else seq[0]
    total = 0.0
    groups = [spans[i : i + batch_size] for i in range(0, len(spans), batch_size)]
    for group in tqdm(groups, desc="perplexity", leave=False, disable=None if progress is None else not progress):
        x, mask = pad_batch([seq[b:e] for b, e, _ in group], pad, device)
        rows, cols, targets = [], [], []
        for r, (b, e, first) in enumerate(group):
            for pos in range(first, e):  # predict seq[pos] from position pos - 1 of the window
                rows.append(r)
                cols.append(pos - 1 - b)
                targets.append(seq[pos])
        rows_t, cols_t = torch.tensor(rows, device=device), torch.tensor(cols, device=device)
        # the head and its log-softmax in fp32 (a bf16 model's too), a slice of the vocabulary at a time
        logp = head_target_logprobs(model, x, mask, rows_t, cols_t, torch.tensor(targets, device=device))
        total -= float(logp.double().sum())
    return total, len(ids)


def special_token_frame(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The special tokens a tokenizer puts before and after one sequence (``[CLS]`` / ``[SEP]``, ``<s>`` / ``</s>``)."""
    probe = tokenizer("a", return_special_tokens_mask=True)
    ids, special = list(probe["input_ids"]), list(probe["special_tokens_mask"])
    content = [i for i, s in enumerate(special) if not s]
    if not content:
        return [], []
    return ids[: content[0]], ids[content[-1] + 1 :]


def masked_nll(
    model: Any, tokenizer: Any, ids: list[int], *, window: int, batch_size: int = 64, progress: bool | None = None
) -> tuple[float, int]:
    """Total pseudo-NLL of ``ids`` (each token masked once, chunks of ``window`` tokens) and the token count."""
    prefix, suffix = special_token_frame(tokenizer)
    size = max(1, window - len(prefix) - len(suffix))
    sequences, rows = [], []
    for lo in range(0, len(ids), size):
        chunk = ids[lo : lo + size]
        sequences.append([*prefix, *chunk, *suffix])
        rows += [(len(sequences) - 1, len(prefix) + p, t) for p, t in enumerate(chunk)]
    logp = masked_logprobs(
        model, tokenizer, sequences, rows, batch_size=batch_size, progress=progress, desc="pseudo-perplexity"
    )
    return -float(logp.sum()), len(rows)


def run_perplexity(
    model: Any,
    tokenizer: Any,
    kind: ModelKind,
    text: str,
    *,
    max_tokens: int | None = None,
    window: int | None = None,
    stride: int | None = None,
    batch_size: int = 32,
    progress: bool | None = None,
    source: str = "",
) -> dict[str, Any]:
    """Perplexity (causal) or pseudo-perplexity (masked) on the first ``max_tokens`` tokens of ``text``.

    Defaults: causal 20,000 tokens, window min(1024, model limit), stride window / 2; masked 2,000 tokens,
    window min(128, model limit). Causal windows go through the model at most ``batch_size`` at a time and within
    the LM-head token budget (:func:`~peft_debias.eval.batching.batch_token_budget`, default 1024 tokens: one
    window of 1024), as the other LM-head scorers.

    Returns ``{"perplexity", "kind", "nll", "n_tokens", "window", "stride", "text"}`` (``text`` names the text;
    the runner adds ``source`` with its file and sha256).
    """
    if kind not in DEFAULT_MAX_TOKENS:
        raise ValueError(f"perplexity needs a masked or causal LM, got {kind}")
    max_tokens = max_tokens or DEFAULT_MAX_TOKENS[kind]
    if max_tokens < 1:
        raise DebiasError(f"--ppl-max-tokens {max_tokens} must be positive", "pass a positive token count")
    limit = max_sequence_length(model, tokenizer)
    window = min(window or DEFAULT_WINDOW[kind], limit)
    ids = text_token_ids(tokenizer, text, max_tokens)
    if not ids:
        raise DebiasError(f"perplexity text {source or ''} has no tokens", "pass a file with text in it")
    if kind is ModelKind.CAUSAL_LM:
        stride = stride or max(1, window // 2)
        # windows per forward: at most batch_size, within the LM-head token budget (--max-batch-tokens, else 1024)
        batch = max(1, min(batch_size, resolve_budget(None, DEFAULT_HEAD_TOKENS) // window))
        nll, n = causal_nll(model, tokenizer, ids, window=window, stride=stride, batch_size=batch, progress=progress)
        name = "perplexity"
    else:
        stride = None
        nll, n = masked_nll(model, tokenizer, ids, window=window, batch_size=2 * batch_size, progress=progress)
        name = "pseudo_perplexity"
    return {
        "perplexity": math.exp(nll / n),
        "kind": name,
        "nll": nll / n,
        "n_tokens": n,
        "window": window,
        "stride": stride,
        "text": source,
    }
