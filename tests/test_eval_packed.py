"""Packed causal scoring: a group's shared prefix computed once gives the numbers of one sentence per forward."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from peft_debias.eval import packed
from peft_debias.eval.lm_scoring import causal_logprob_sums
from peft_debias.models.loading import load_model

from support.eval_helpers import manual_causal_mean, single_thread  # noqa: F401


def test_pack_by_hand() -> None:
    group = packed.pack([[1, 5, 6, 7], [1, 5, 8], [1, 5]])
    # prefix [1, 5], then suffixes [6, 7] and [8]; the third member is all prefix
    assert group.ids == [1, 5, 6, 7, 8]
    assert group.positions == [0, 1, 2, 3, 2]
    assert group.segments == [-1, -1, 0, 0, 1]
    # (member, logits row predicting the token, token): member 1's "8" is predicted from row 1 (the "5")
    assert group.scored == [(0, 0, 5), (0, 1, 6), (0, 2, 7), (1, 0, 5), (1, 1, 8), (2, 0, 5)]
    mask = packed.tree_mask(torch.tensor(group.segments))
    expected = [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [1, 1, 1, 1, 0],
        [1, 1, 0, 0, 1],  # the "8" sees the prefix and itself, not the other suffix
    ]
    assert mask.int().tolist() == expected


def test_batch_pads_with_self_attention_only() -> None:
    groups = [packed.pack([[1, 2, 3], [1, 4]]), packed.pack([[1, 9]])]
    inputs = packed.batch(groups, 0, torch.float32, torch.device("cpu"))
    assert inputs["input_ids"].tolist() == [[1, 2, 3, 4], [1, 9, 0, 0]]
    assert inputs["position_ids"].tolist() == [[0, 1, 2, 1], [0, 1, 0, 0]]
    allowed = inputs["attention_mask"][:, 0] == 0
    assert allowed[1].int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_packed_scores_equal_plain_ones(tiny_models: dict[str, Path], name: str) -> None:
    loaded = load_model(str(tiny_models[name]))
    model, tok = loaded.model, loaded.tokenizer
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    assert packed.packing_works(model, start, model.config.vocab_size)
    texts = [
        "The man went to work.",
        "The woman went to work.",
        "The man",  # all prefix of the first
        "Children learn quickly.",
        "The man went to work.",  # a repeat, in two groups
    ]
    groups = [[0, 1, 2], [3], [4, 0]]
    grouped = causal_logprob_sums(model, tok, texts, groups=groups, batch_size=2)
    plain = causal_logprob_sums(model, tok, texts)
    for (a, n), (b, m), text in zip(grouped, plain, texts, strict=True):
        assert n == m and a == pytest.approx(b, abs=1e-4)
        assert a / n == pytest.approx(manual_causal_mean(model, tok, text), abs=1e-5)


def test_a_model_that_cannot_pack_falls_back(tiny_models: dict[str, Path]) -> None:
    loaded = load_model(str(tiny_models["llama"]))

    class NoPositions(torch.nn.Module):
        """Ignores position ids and 4-D masks: packing would give wrong numbers."""

        def __init__(self, inner) -> None:
            super().__init__()
            self.inner, self.config = inner, inner.config

        def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
            return self.inner(input_ids=input_ids)

    wrapped = NoPositions(loaded.model)
    assert not packed.packing_works(wrapped, 1, loaded.model.config.vocab_size)
    # grouped texts are still scored, one plain sequence each: the numbers of one unbatched forward per text
    texts = ["The man went to work.", "The woman went to work.", "The man"]
    sums = causal_logprob_sums(wrapped, loaded.tokenizer, texts, groups=[[0, 1, 2]], batch_size=3)
    for (total, n), text in zip(sums, texts, strict=True):
        assert total / n == pytest.approx(manual_causal_mean(loaded.model, loaded.tokenizer, text), abs=1e-5)
