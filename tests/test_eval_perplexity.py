"""Perplexity: sliding windows score every token once and match a direct computation; pseudo-perplexity
matches one forward per masked token; text reading errors."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from peft_debias.core.errors import DebiasError
from peft_debias.eval.batching import batch_token_budget
from peft_debias.eval.lm_head import fp32_head_weight, head_log_softmax, head_target_logprobs
from peft_debias.eval.lm_scoring import pad_batch
from peft_debias.eval.perplexity import (
    causal_nll,
    masked_nll,
    read_text,
    run_perplexity,
    special_token_frame,
    text_token_ids,
)
from peft_debias.models.loading import ModelKind, load_model

from support.eval_helpers import manual_masked_logprob, single_thread  # noqa: F401

TEXT = (
    "The king and the queen visited the hospital. My brother is a nurse and my sister is a pilot. "
    "The scientist explained her theory to the students. Children learn quickly when they are curious. "
) * 3


@torch.no_grad()
def _direct_nll(model, ids: list[int], start: int, context: int) -> float:
    """NLL with each token predicted from at most ``context`` previous tokens (BOS first), one forward each."""
    seq = [start, *ids]
    total = 0.0
    for pos in range(1, len(seq)):
        window = seq[max(0, pos - context) : pos + 1]
        logits = model(input_ids=torch.tensor([window])).logits[0, -2]
        total -= torch.log_softmax(logits, -1)[seq[pos]].item()
    return total


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_one_window_equals_direct_computation(tiny_models: dict[str, Path], name: str) -> None:
    loaded = load_model(str(tiny_models[name]))
    tok = loaded.tokenizer
    ids = text_token_ids(tok, TEXT, 40)
    assert len(ids) == 40
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    nll, n = causal_nll(loaded.model, tok, ids, window=64, stride=32)
    assert n == 40
    assert nll == pytest.approx(_direct_nll(loaded.model, ids, start, 64), rel=1e-5)


def test_sliding_windows_score_each_token_once(tiny_models: dict[str, Path]) -> None:
    loaded = load_model(str(tiny_models["llama"]))
    tok = loaded.tokenizer
    ids = text_token_ids(tok, TEXT, 60)
    start = tok.bos_token_id
    # window 16, stride 8: after the first window each token sees the 8..15 tokens before it in its window
    nll, n = causal_nll(loaded.model, tok, ids, window=16, stride=8, batch_size=3)
    assert n == 60
    expected = 0.0
    seq = [start, *ids]
    with torch.no_grad():
        begin, scored = 0, 0
        while scored < len(seq) - 1:
            end = min(begin + 16, len(seq))
            logp = torch.log_softmax(loaded.model(input_ids=torch.tensor([seq[begin:end]])).logits[0], -1)
            for pos in range(max(scored + 1, begin + 1), end):
                expected -= logp[pos - 1 - begin, seq[pos]].item()
            scored, begin = end - 1, begin + 8
    assert nll == pytest.approx(expected, rel=1e-5)
    # the batch size does not change the figure
    assert causal_nll(loaded.model, tok, ids, window=16, stride=8, batch_size=1)[0] == pytest.approx(nll, rel=1e-6)
    with pytest.raises(DebiasError, match="stride"):
        causal_nll(loaded.model, tok, ids, window=16, stride=16)


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_pseudo_perplexity_by_hand(tiny_models: dict[str, Path], name: str) -> None:
    loaded = load_model(str(tiny_models[name]))
    tok = loaded.tokenizer
    ids = text_token_ids(tok, TEXT, 25)
    prefix, suffix = special_token_frame(tok)
    assert prefix == [tok.cls_token_id] and suffix == [tok.sep_token_id]
    nll, n = masked_nll(loaded.model, tok, ids, window=12)  # chunks of 10 tokens + [CLS] / [SEP]
    assert n == 25
    expected = 0.0
    for lo in range(0, 25, 10):
        seq = [*prefix, *ids[lo : lo + 10], *suffix]
        for p in range(1, len(seq) - 1):
            expected -= manual_masked_logprob(loaded.model, seq, p, tok.mask_token_id)
    assert nll == pytest.approx(expected, rel=1e-5)


def test_run_perplexity(tiny_models: dict[str, Path]) -> None:
    causal = load_model(str(tiny_models["gpt2"]))
    out = run_perplexity(causal.model, causal.tokenizer, ModelKind.CAUSAL_LM, TEXT, max_tokens=50, source="t")
    assert out["kind"] == "perplexity" and out["n_tokens"] == 50 and out["text"] == "t"
    assert out["window"] == 128 and out["stride"] == 64  # capped by the tiny model's 128 positions
    assert out["perplexity"] == pytest.approx(math.exp(out["nll"]))
    masked = load_model(str(tiny_models["bert"]))
    out = run_perplexity(masked.model, masked.tokenizer, ModelKind.MASKED_LM, TEXT, max_tokens=30)
    assert out["kind"] == "pseudo_perplexity" and out["n_tokens"] == 30 and out["stride"] is None
    # a random tiny model is close to uniform over its ~400-token vocabulary
    assert 50 < out["perplexity"] < 5000


def test_run_perplexity_is_the_mean_over_the_scored_tokens(tiny_models: dict[str, Path]) -> None:
    """exp(total NLL / token count) against one forward per token (causal) or per masked token (masked)."""
    causal = load_model(str(tiny_models["gpt2"]))
    tok = causal.tokenizer
    out = run_perplexity(causal.model, tok, ModelKind.CAUSAL_LM, TEXT, max_tokens=50)
    ids = text_token_ids(tok, TEXT, 50)
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    total = _direct_nll(causal.model, ids, start, 128)  # 51 tokens with BOS: one window, full context
    assert out["nll"] == pytest.approx(total / 50, rel=1e-5)
    assert out["perplexity"] == pytest.approx(math.exp(total / 50), rel=1e-5)
    masked = load_model(str(tiny_models["bert"]))
    tok = masked.tokenizer
    out = run_perplexity(masked.model, tok, ModelKind.MASKED_LM, TEXT, max_tokens=30)
    seq = [tok.cls_token_id, *text_token_ids(tok, TEXT, 30), tok.sep_token_id]  # 32 <= the 128-token window
    total = -sum(manual_masked_logprob(masked.model, seq, p, tok.mask_token_id) for p in range(1, 31))
    assert out["nll"] == pytest.approx(total / 30, rel=1e-5)
    assert out["perplexity"] == pytest.approx(math.exp(total / 30), rel=1e-5)


@pytest.mark.parametrize(("name", "dtype"), [("llama", torch.float32), ("gpt2", torch.bfloat16)])
def test_target_logprobs_equal_the_full_log_softmax(tiny_models: dict[str, Path], name: str, dtype) -> None:
    """The vocabulary-sliced head gives the full fp32 log-softmax's values at the targets, the head itself (a
    bf16 one too, tied to the embeddings) multiplying no row."""
    model = load_model(str(tiny_models[name]), dtype=dtype).model
    ids, mask = pad_batch([[5, 6, 7, 8, 9], [9, 10, 11]], 0, torch.device("cpu"))
    rows, cols, targets = torch.tensor([0, 0, 1, 1]), torch.tensor([1, 4, 0, 2]), torch.tensor([3, 17, 0, 250])
    seen = []
    handle = model.get_output_embeddings().register_forward_hook(lambda m, a, out: seen.append(a[0].shape[1]))
    with torch.inference_mode():
        got = head_target_logprobs(model, ids, mask, rows, cols, targets, chunk=7)  # slices that end mid-vocabulary
        full = head_log_softmax(model, ids, mask, rows, cols, fp32_head_weight(model))
    handle.remove()
    assert seen[0] == 0  # head_target_logprobs's forward: the model's own head multiplied no row
    assert got.dtype == torch.float32 and got.shape == (4,)
    torch.testing.assert_close(got, full.gather(-1, targets[:, None])[:, 0], atol=1e-5, rtol=1e-5)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tied == (name == "gpt2")  # the tiny gpt2 ties its head to the embeddings and stays tied


def test_causal_windows_per_forward_follow_the_head_token_budget(tiny_models: dict[str, Path]) -> None:
    loaded = load_model(str(tiny_models["llama"]))
    ids = text_token_ids(loaded.tokenizer, TEXT, 60)
    widths: list[tuple[int, int]] = []
    handle = loaded.model.register_forward_pre_hook(
        lambda m, a, k: widths.append(tuple(k["input_ids"].shape)), with_kwargs=True
    )
    with batch_token_budget(32):  # two 16-token windows per forward
        out = run_perplexity(loaded.model, loaded.tokenizer, ModelKind.CAUSAL_LM, TEXT, max_tokens=60, window=16)
    handle.remove()
    assert widths and all(rows * width <= 32 for rows, width in widths) and max(r for r, _ in widths) == 2
    nll, n = causal_nll(loaded.model, loaded.tokenizer, ids, window=16, stride=8, batch_size=7)
    assert out["n_tokens"] == n == 60 and out["nll"] == pytest.approx(nll / n, rel=1e-6)


def test_text_token_ids_reads_only_what_it_needs(tiny_models: dict[str, Path]) -> None:
    tok = load_model(str(tiny_models["llama"])).tokenizer
    seen = []

    def counting(text, **kwargs):
        seen.append(len(text))
        return tok(text, **kwargs)

    long_text = "The man went to work. " * 50_000  # 1.1 M characters
    ids = text_token_ids(counting, long_text, 100)
    assert ids == tok(long_text[:5_000], add_special_tokens=False)["input_ids"][:100]
    assert max(seen) < 10_000  # only a prefix was tokenized
    assert len(text_token_ids(counting, "short text", 100)) < 100  # all of a short text


def test_read_text(tmp_path: Path) -> None:
    (tmp_path / "crlf.txt").write_bytes(b"\xef\xbb\xbfone\r\ntwo\r\n")
    assert read_text(tmp_path / "crlf.txt") == "one\ntwo\n"
    for name, content, message in [
        ("empty.txt", b"  \n", "is empty"),
        ("binary.txt", b"\x00\x01abc", "is binary"),
        ("latin1.txt", b"caf\xe9", "is not UTF-8"),
    ]:
        (tmp_path / name).write_bytes(content)
        with pytest.raises(DebiasError, match=message):
            read_text(tmp_path / name)
    with pytest.raises(DebiasError, match="not found"):
        read_text(tmp_path / "missing.txt")
