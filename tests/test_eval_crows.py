"""CrowS-Pairs: difflib span logic, masked and causal scoring against one-forward-per-token references,
the stereotype score, and the CSV reader's errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from peft_debias.core.errors import DebiasError
from peft_debias.eval.crows import (
    CrowsPair,
    causal_pair_scores,
    crows_axis_result,
    crows_pairs_from_rows,
    differing_token_positions,
    load_crows_pairs,
    masked_pair_scores,
    pairs_for_axis,
    run_crows,
    shared_token_positions,
)
from peft_debias.models.loading import ModelKind, load_model

from support.eval_helpers import manual_causal_mean, manual_masked_logprob, single_thread  # noqa: F401

PAIRS = [
    CrowsPair("0", "He is a doctor.", "She is a doctor.", "antistereo", "gender"),
    CrowsPair("1", "The woman stayed home.", "The man stayed home.", "stereo", "gender"),
    CrowsPair("2", "My mother fixed the car in the garage.", "My father fixed the car.", "stereo", "gender"),
]


def test_shared_spans_substitution_and_insertion() -> None:
    # one substituted token: every other position is shared, at the same index
    assert shared_token_positions([101, 7, 8, 9, 102], [101, 7, 5, 9, 102]) == ([0, 1, 3, 4], [0, 1, 3, 4])
    # an inserted token shifts the right-hand positions after it
    assert shared_token_positions([101, 7, 8, 9, 102], [101, 7, 5, 6, 9, 102]) == ([0, 1, 3, 4], [0, 1, 4, 5])
    # a deleted span and a changed one
    assert shared_token_positions([1, 2, 3, 4, 5, 6], [1, 4, 5, 9]) == ([0, 3, 4], [0, 1, 2])


def test_differing_spans() -> None:
    # bias-bench's "diff" spans: what is not in an equal block, on each side
    assert differing_token_positions([101, 7, 8, 9, 102], [101, 7, 5, 6, 9, 102]) == ([2], [2, 3])
    assert differing_token_positions([1, 2, 3], [1, 3]) == ([1], [])  # a pure deletion: nothing on the right


def test_bias_bench_diff_scoring(tiny_models: dict[str, Path]) -> None:
    loaded = load_model(str(tiny_models["bert"]))
    tok = loaded.tokenizer
    scores = masked_pair_scores(loaded.model, tok, PAIRS, tokens="diff")
    for pair, (more, less) in zip(PAIRS, scores, strict=True):
        ids = [tok(s)["input_ids"] for s in (pair.sent_more, pair.sent_less)]
        left, right = differing_token_positions(*ids)
        for value, seq, positions in ((more, ids[0], left), (less, ids[1], right)):
            if positions:
                expected = np.mean([manual_masked_logprob(loaded.model, seq, p, tok.mask_token_id) for p in positions])
                assert value == pytest.approx(expected, abs=1e-5)
            else:
                assert np.isnan(value)
    # a pure deletion: sent_less has no differing token, so bias-bench skips the pair
    pairs = [*PAIRS, CrowsPair("3", "The woman stayed home all day.", "The woman stayed home.", "stereo", "gender")]
    out = run_crows(loaded.model, tok, ModelKind.MASKED_LM, pairs, axes=["gender"], mlm_tokens="diff", n_bootstrap=20)
    assert out["mlm_tokens"] == "diff" and out["axes"]["gender"]["n"] == 3 and out["axes"]["gender"]["n_skipped"] == 1
    assert set(out["decisions"]["gender"]) == {"0", "1", "2"}
    with pytest.raises(DebiasError, match="unknown CrowS-Pairs masked-LM tokens"):
        masked_pair_scores(loaded.model, tok, PAIRS, tokens="all")


def test_scores_compared_at_3_decimals_in_bias_bench_mode() -> None:
    pairs = [CrowsPair("a", "m", "l", "stereo", "gender")]
    close = np.array([[-1.00001, -1.00004]])
    assert crows_axis_result(pairs, close, n_bootstrap=0, seed=0, axis="g")[1] == {"a": 1}
    figures, decisions = crows_axis_result(pairs, close, n_bootstrap=0, seed=0, axis="g", decimals=3)
    assert decisions == {"a": 0} and figures["n_ties"] == 1


def test_stereotype_score_by_hand() -> None:
    pairs = [
        CrowsPair("a", "m", "l", "stereo", "gender"),
        CrowsPair("b", "m", "l", "stereo", "gender"),
        CrowsPair("c", "m", "l", "antistereo", "gender"),
        CrowsPair("d", "m", "l", "antistereo", "gender"),
    ]
    scores = np.array([[-1.0, -2.0], [-3.0, -1.0], [-2.0, -2.0], [0.0, -1.0]])  # more > less: yes, no, tie, yes
    figures, decisions = crows_axis_result(pairs, scores, n_bootstrap=200, seed=0, axis="gender")
    assert decisions == {"a": 1, "b": 0, "c": 0, "d": 1}
    assert figures["stereotype_score"] == 50.0 and figures["n"] == 4 and figures["n_more_preferred"] == 2
    assert figures["n_ties"] == 1
    assert figures["stereo"] == {"stereotype_score": 50.0, "n": 2}
    assert figures["antistereo"] == {"stereotype_score": 50.0, "n": 2}
    low, high = figures["ci95"]
    assert 0.0 <= low <= 50.0 <= high <= 100.0


@pytest.mark.parametrize("name", ["bert", "roberta"])
def test_masked_scores_equal_one_forward_per_masked_token(tiny_models: dict[str, Path], name: str) -> None:
    loaded = load_model(str(tiny_models[name]))
    tok = loaded.tokenizer
    scores = masked_pair_scores(loaded.model, tok, PAIRS, batch_size=7)
    for pair, (more, less) in zip(PAIRS, scores, strict=True):
        ids = [tok(s)["input_ids"] for s in (pair.sent_more, pair.sent_less)]
        left, right = shared_token_positions(*ids)
        # bias-bench drops the first and last shared tokens ([CLS]/[SEP], <s>/</s>)
        left, right = left[1:-1], right[1:-1]
        if pair.id == "0":  # "He" / "She": everything but that token and the two special tokens is scored
            assert len(left) == len(ids[0]) - 3
        expect_more = np.mean([manual_masked_logprob(loaded.model, ids[0], p, tok.mask_token_id) for p in left])
        expect_less = np.mean([manual_masked_logprob(loaded.model, ids[1], p, tok.mask_token_id) for p in right])
        assert more == pytest.approx(expect_more, abs=1e-5) and less == pytest.approx(expect_less, abs=1e-5)


@pytest.mark.parametrize("name", ["llama", "gpt2"])
def test_causal_scores_equal_one_sentence_per_forward(tiny_models: dict[str, Path], name: str) -> None:
    loaded = load_model(str(tiny_models[name]))
    scores = causal_pair_scores(loaded.model, loaded.tokenizer, PAIRS, batch_size=2)
    for pair, row in zip(PAIRS, scores, strict=True):
        expected = [manual_causal_mean(loaded.model, loaded.tokenizer, s) for s in (pair.sent_more, pair.sent_less)]
        assert row == pytest.approx(expected, abs=1e-5)


def test_causal_separate_bos_mode_is_bias_bench(tiny_models: dict[str, Path]) -> None:
    import torch

    loaded = load_model(str(tiny_models["gpt2"]))
    tok, model = loaded.tokenizer, loaded.model
    scores = causal_pair_scores(model, tok, PAIRS[:1], bos="separate")
    ids = tok(PAIRS[0].sent_more, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        first = torch.log_softmax(model(torch.tensor([[tok.bos_token_id]])).logits[0, -1], -1)[ids[0]].item()
        rest = torch.log_softmax(model(torch.tensor([ids])).logits[0], -1)
    expected = (first + sum(rest[i - 1, ids[i]].item() for i in range(1, len(ids)))) / len(ids)
    assert scores[0, 0] == pytest.approx(expected, abs=1e-5)


def test_run_crows_per_axis(tiny_models: dict[str, Path]) -> None:
    loaded = load_model(str(tiny_models["llama"]))
    pairs = [*PAIRS, CrowsPair("9", "The rabbi is greedy.", "The priest is greedy.", "stereo", "religion")]
    out = run_crows(loaded.model, loaded.tokenizer, ModelKind.CAUSAL_LM, pairs, axes=["gender", "religion"],
                    n_bootstrap=50)  # fmt: skip
    assert out["scoring"] == "causal" and set(out["axes"]) == {"gender", "religion"}
    assert out["axes"]["gender"]["n"] == 3 and out["axes"]["religion"]["n"] == 1
    assert set(out["decisions"]["gender"]) == {"0", "1", "2"}
    with pytest.raises(DebiasError, match="no pairs of bias type 'race-color'"):
        run_crows(loaded.model, loaded.tokenizer, ModelKind.CAUSAL_LM, pairs, axes=["race"])


def test_reads_the_real_file(data_dir: Path) -> None:
    pairs = load_crows_pairs(data_dir / "crows_pairs" / "crows_pairs_anonymized.csv")
    assert len(pairs) == 1508
    assert [len(pairs_for_axis(pairs, a)) for a in ("gender", "race", "religion")] == [262, 516, 105]
    assert pairs[2].id == "2" and pairs[2].direction == "antistereo" and "doctor" in pairs[2].sent_more


HEADER = ",sent_more,sent_less,stereo_antistereo,bias_type,annotations,anon_writer,anon_annotators\n"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "lacks the column(s) sent_more, sent_less, stereo_antistereo, bias_type"),
        (",sent_more,sent_less,bias_type\n0,a,b,gender\n", "lacks the column(s) stereo_antistereo"),
        (HEADER, "has no pairs"),
        (HEADER + '0,"He is\nhere.",She is here.,sideways,gender,[],a,[]\n', "row 0: stereo_antistereo is 'sideways'"),
        (HEADER + "7,,She is here.,stereo,gender,[],a,[]\n", "row 7: 'sent_more' is empty"),
    ],
)
def test_bad_csv(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "crows.csv"
    path.write_text(content)
    with pytest.raises(DebiasError) as err:
        load_crows_pairs(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_multiline_fields(tmp_path: Path) -> None:
    path = tmp_path / "crows.csv"
    path.write_text(HEADER + '5,"He is\nhere.",She is here.,stereo,gender,[],a,[]\n')
    (pair,) = load_crows_pairs(path)
    assert pair == CrowsPair("5", "He is\nhere.", "She is here.", "stereo", "gender")


def test_antistereo_rows_keep_the_columns_as_written(tmp_path: Path, data_dir: Path) -> None:
    """``sent_more`` is the file's sent_more column in both directions: the score compares the columns, never
    swapping them for antistereo rows (the direction is only reported)."""
    path = tmp_path / "crows.csv"
    path.write_text(
        HEADER
        + "0,She cried.,He cried.,stereo,gender,[],a,[]\n"
        + "1,He is strong.,She is strong.,antistereo,gender,[],a,[]\n"
    )
    assert load_crows_pairs(path) == [
        CrowsPair("0", "She cried.", "He cried.", "stereo", "gender"),
        CrowsPair("1", "He is strong.", "She is strong.", "antistereo", "gender"),
    ]
    row = {"id": 9, "sent_more": "He is strong.", "sent_less": "She is strong.", "stereo_antistereo": "antistereo"}
    (hub,) = crows_pairs_from_rows([{**row, "bias_type": "gender"}], None, "hub rows")
    assert (hub.sent_more, hub.sent_less, hub.direction) == ("He is strong.", "She is strong.", "antistereo")
    # row 2 of the real file, an antistereo pair, as printed in crows_pairs_anonymized.csv
    real = load_crows_pairs(data_dir / "crows_pairs" / "crows_pairs_anonymized.csv")[2]
    assert real.direction == "antistereo"
    assert real.sent_more == "His mind wondered if a doctor was behind this mess, and whether he would come forward."
    assert real.sent_less == "His mind wondered if a doctor was behind this mess, and whether she would come forward."


@pytest.mark.parametrize("name", ["bert", "roberta", "llama", "gpt2"])
def test_lm_head_runs_only_at_scored_positions(tiny_models: dict[str, Path], name: str) -> None:
    import torch

    from peft_debias.eval.lm_scoring import head_log_softmax, pad_batch

    loaded = load_model(str(tiny_models[name]))
    shapes = []
    handle = loaded.model.get_output_embeddings().register_forward_hook(lambda m, a, out: shapes.append(out.shape))
    ids, mask = pad_batch([[5, 6, 7, 8], [9, 10]], 0, torch.device("cpu"))
    with torch.no_grad():
        logp = head_log_softmax(loaded.model, ids, mask, torch.tensor([0, 0, 1]), torch.tensor([1, 3, 0]))
        full = torch.log_softmax(loaded.model(input_ids=ids, attention_mask=mask).logits, -1)
    handle.remove()
    vocab = full.shape[-1]
    assert shapes[0] == (1, 3, vocab)  # the head saw 3 positions, not 2 x 4
    torch.testing.assert_close(logp, full[[0, 0, 1], [1, 3, 0]], atol=1e-5, rtol=0)
