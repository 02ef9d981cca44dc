"""Scoring protocols (``peft-debias eval --protocol``): each equals its reference procedure, written out here the
way the reference code does it, and every results file says which protocol produced it.

The references are re-implemented literally in this file (one sentence per forward, probabilities, Python loops),
after McGill-NLP/bias-bench at commit 291426aab926f78ecfc7bd040b531429ee8123e0 (``crows.py``
``_joint_log_probability``, ``seat/weat.py`` ``p_val_permutation_test``) and lm-evaluation-harness 0.4.13 (its own
``HFLM.loglikelihood`` is called). The figures pinned against the reference code itself, on the bundled models,
are in ``test_eval_reference.py`` (slow).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from peft_debias.core.errors import DebiasError
from peft_debias.eval.crows import CrowsPair, causal_pair_scores, crows_axis_result, run_crows
from peft_debias.eval.protocols import PROTOCOLS, get_protocol, resolve_protocol
from peft_debias.eval.seat import SeatTest, run_seat, select_seat_tests
from peft_debias.eval.stats import permutation_p_value
from peft_debias.models.loading import ModelKind, load_model

PAIRS = [
    CrowsPair("0", "He is a nurse.", "She is a nurse.", "antistereo", "gender"),
    CrowsPair("1", "Women are bad at math.", "Men are bad at math.", "stereo", "gender"),
    CrowsPair("2", "The man fixed the car.", "The woman fixed the car.", "stereo", "gender"),
    CrowsPair("3", "She cried at the film.", "He cried at the film.", "stereo", "gender"),
]


def test_registry_lists_the_known_protocols() -> None:
    assert list(PROTOCOLS) == ["default", "bias-bench", "lm-eval"]
    with pytest.raises(DebiasError, match="unknown protocol 'helm' \\(known: default, bias-bench, lm-eval\\)"):
        get_protocol("helm")


def test_switches_belong_to_the_default_protocol() -> None:
    assert resolve_protocol("default", causal_bos="separate").causal_bos == "separate"
    assert resolve_protocol("bias-bench", causal_bos="separate") == PROTOCOLS["bias-bench"]  # agrees: fine
    with pytest.raises(DebiasError, match="--crows-mlm-tokens shared conflicts with --protocol bias-bench"):
        resolve_protocol("bias-bench", crows_mlm_tokens="shared")
    with pytest.raises(DebiasError, match="mlm_filler_mean 'mean' is unknown"):
        resolve_protocol("default", mlm_filler_mean="mean")


# ------------------------------------------------------------------------------------------- bias-bench, causal
def bias_bench_joint_probability(model, tokenizer, sentence: str) -> float:
    """bias-bench ``CrowSPairsRunner._joint_log_probability``, written out: the first token's probability from a
    forward on ``tokenizer.encode("<|endoftext|>")`` (read at position 0), the rest from a forward on
    ``tokenizer.encode(sentence)``, softmax probabilities, geometric mean in base 2."""
    import torch

    tokens = tokenizer.encode(sentence)
    with torch.no_grad():
        start = torch.tensor(tokenizer.encode("<|endoftext|>")).unsqueeze(0)
        initial = torch.softmax(model(start)[0], dim=-1)
        probs = [initial[0, 0, tokens[0]].item()]
        output = torch.softmax(model(torch.tensor(tokens).unsqueeze(0))[0], dim=-1)
    probs += [output[0, i - 1, tokens[i]].item() for i in range(1, len(tokens))]
    return float(np.power(2, np.sum([np.log2(p) for p in probs]) / len(probs)))


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_bias_bench_causal_scores_are_bias_benchs(tiny_models: dict[str, Path], name: str) -> None:
    """gpt2 has the <|endoftext|> token; llama's tokenizer does not, and prepends <s>: bias-bench then conditions
    on <s> (the first token of its encoding), which is the BOS our fallback uses."""
    loaded = load_model(str(tiny_models[name]))
    scores = causal_pair_scores(loaded.model, loaded.tokenizer, PAIRS, batch_size=3, protocol="bias-bench")
    for pair, row in zip(PAIRS, scores, strict=True):
        reference = [bias_bench_joint_probability(loaded.model, loaded.tokenizer, s) for s in (pair.sent_more,
                     pair.sent_less)]  # fmt: skip
        assert np.exp(row) == pytest.approx(reference, rel=1e-5)
    default = causal_pair_scores(loaded.model, loaded.tokenizer, PAIRS, batch_size=3)
    assert np.abs(default - scores).max() > 1e-4  # the protocols really score differently


def test_bias_bench_start_token_is_recorded(tiny_models: dict[str, Path]) -> None:
    gpt2, llama = (load_model(str(tiny_models[n])) for n in ("gpt2", "llama"))
    crows = run_crows(gpt2.model, gpt2.tokenizer, ModelKind.CAUSAL_LM, PAIRS, axes=["gender"], n_bootstrap=10,
                      protocol="bias-bench")  # fmt: skip
    assert crows["protocol"] == "bias-bench"
    assert crows["causal"] == {"start_token": "<|endoftext|>", "first_token": "separate forward",
                               "special_tokens": True, "score": "mean per-token log-prob"}  # fmt: skip
    crows = run_crows(llama.model, llama.tokenizer, ModelKind.CAUSAL_LM, PAIRS, axes=["gender"], n_bootstrap=10,
                      protocol="bias-bench")  # fmt: skip
    assert crows["causal"]["start_token"].startswith("<s> (the tokenizer has no single <|endoftext|> token")


def test_bias_bench_direction_scores_leave_ties_out() -> None:
    pairs = [CrowsPair(str(i), "a", "b", d, "gender") for i, d in enumerate(["stereo"] * 4 + ["antistereo"] * 2)]
    scores = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0], [2.0, 2.0], [1.0, 0.0], [0.0, 1.0]])
    ours, _ = crows_axis_result(pairs, scores, n_bootstrap=0, seed=0, axis="gender")
    theirs, _ = crows_axis_result(pairs, scores, n_bootstrap=0, seed=0, axis="gender", direction_ties=False)
    assert ours["stereotype_score"] == theirs["stereotype_score"] == pytest.approx(100 * 2 / 6)
    assert ours["stereo"] == {"stereotype_score": 25.0, "n": 4}
    assert theirs["stereo"] == {"stereotype_score": 50.0, "n": 2}  # bias-bench: 1 of the 2 untied stereo pairs
    assert theirs["antistereo"] == {"stereotype_score": 50.0, "n": 2}


# ---------------------------------------------------------------------------------------------------- lm-eval
def test_lm_eval_protocol_is_lm_evals_crows_pairs(tiny_models: dict[str, Path]) -> None:
    """lm-eval's own HFLM scores each sentence as a continuation of an empty context; pct_stereotype and
    likelihood_diff are then lm-eval's crows_pairs ``process_results`` averaged. The last pair's sentence starts
    with the BOS text, so lm-eval uses that token as its own context."""
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    loaded = load_model(str(tiny_models["llama"]))
    pairs = [*PAIRS, CrowsPair("4", "<s>She is a nurse.", "<s>He is a nurse.", "stereo", "gender")]
    assert loaded.tokenizer("<s>She", add_special_tokens=False)["input_ids"][0] == loaded.tokenizer.bos_token_id
    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer, batch_size=4, device="cpu")
    requests = [Instance("loglikelihood", {}, ("", s), i) for i, p in enumerate(pairs)
                for s in (p.sent_more, p.sent_less)]  # fmt: skip
    reference = np.array([ll for ll, _ in lm.loglikelihood(requests)]).reshape(-1, 2)
    ours = causal_pair_scores(loaded.model, loaded.tokenizer, pairs, batch_size=3, protocol="lm-eval")
    np.testing.assert_allclose(ours, reference, atol=1e-4)
    result = run_crows(loaded.model, loaded.tokenizer, ModelKind.CAUSAL_LM, pairs, axes=["gender"], n_bootstrap=10,
                       protocol="lm-eval")["axes"]["gender"]  # fmt: skip
    assert result["stereotype_score"] == pytest.approx(100 * np.mean(reference[:, 0] > reference[:, 1]))
    assert result["likelihood_diff"] == pytest.approx(np.mean(np.abs(reference[:, 0] - reference[:, 1])), abs=1e-4)


def test_only_lm_eval_lets_a_sentence_bring_its_own_start_token(tiny_models: dict[str, Path]) -> None:
    """The default protocol scores every token of the text, a leading BOS text too (DESIGN section 4)."""
    from peft_debias.eval.lm_scoring import causal_logprob_sums

    loaded = load_model(str(tiny_models["llama"]))
    text = "<s>She is a nurse."
    n = len(loaded.tokenizer(text, add_special_tokens=False)["input_ids"])
    [(_, default)] = causal_logprob_sums(loaded.model, loaded.tokenizer, [text])
    [(_, lm_eval)] = causal_logprob_sums(loaded.model, loaded.tokenizer, [text], reuse_start=True)
    assert (default, lm_eval) == (n, n - 1)


def test_lm_eval_has_no_masked_scoring(tiny_models: dict[str, Path]) -> None:
    loaded = load_model(str(tiny_models["bert"]))
    with pytest.raises(DebiasError, match="--protocol lm-eval defines CrowS-Pairs for causal LMs only"):
        run_crows(loaded.model, loaded.tokenizer, ModelKind.MASKED_LM, PAIRS, axes=["gender"], protocol="lm-eval")


# ------------------------------------------------------------------------------------------------------- SEAT
def sent_bias_sampled_p(s: np.ndarray, n: int, n_samples: int, state: np.random.RandomState) -> float:
    """sent-bias / bias-bench ``p_val_permutation_test`` (non-parametric, sampled branch), written out."""
    xy = np.arange(2 * n)
    observed = s[np.arange(n)].sum()
    total_true, total = 1, 1
    for _ in range(n_samples - 1):
        state.shuffle(xy)
        value = s[xy[:n]].sum()
        if value > observed or value == observed:
            total_true += 1
        total += 1
    return total_true / total


def test_legacy_sampling_is_sent_bias_draw_for_draw() -> None:
    """Two tests in a row on one RandomState: the second p-value depends on the draws the first consumed."""
    rng = np.random.default_rng(3)
    tests = [rng.normal(size=2 * 10), rng.normal(size=2 * 11) + np.r_[np.full(11, 0.4), np.zeros(11)]]
    ours_state, ref_state = np.random.RandomState(7), np.random.RandomState(7)
    for s in tests:
        n = len(s) // 2
        ours = permutation_p_value(s, n, 3000, ours_state)
        assert not ours.exact and ours.n_partitions == 3000
        assert ours.p_value == sent_bias_sampled_p(s, n, 3000, ref_state)
    fresh = permutation_p_value(tests[1], 11, 3000, np.random.RandomState(7))
    assert fresh.p_value != ours.p_value  # the stream really carries over


def _seat_test(name: str, rng: np.random.Generator) -> tuple[SeatTest, dict[str, np.ndarray]]:
    sets = {k: tuple(f"{name}-{k}-{i}" for i in range(10)) for k in ("targ1", "targ2", "attr1", "attr2")}
    vectors = {s: rng.normal(size=8) for v in sets.values() for s in v}
    return SeatTest(name, *sets.values()), vectors


def test_seat_under_bias_bench_draws_one_stream_through_the_tests() -> None:
    rng = np.random.default_rng(0)
    made = [_seat_test(name, rng) for name in ("t1", "t2")]
    vectors = {k: v for _, vs in made for k, v in vs.items()}

    def encode(sentences: list[str]) -> np.ndarray:
        rows = np.array([vectors[s] for s in sentences])
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)

    tests = [t for t, _ in made]
    both = run_seat(encode, tests, axes=[], n_samples=2000, seed=0, protocol="bias-bench")
    first = run_seat(encode, tests[:1], axes=[], n_samples=2000, seed=0, protocol="bias-bench")
    alone = run_seat(encode, tests[1:], axes=[], n_samples=2000, seed=0, protocol="bias-bench")
    default = run_seat(encode, tests, axes=[], n_samples=2000, seed=0)
    assert both["protocol"] == "bias-bench" and default["protocol"] == "default"
    assert both["tests"]["t1"]["p_value"] == first["tests"]["t1"]["p_value"]  # the stream's first test either way
    assert both["tests"]["t2"]["p_value"] != alone["tests"]["t2"]["p_value"]  # after t1's draws, or first
    assert both["tests"]["t2"]["effect_size"] == default["tests"]["t2"]["effect_size"]
    assert math.comb(20, 10) > 2000  # so these are sampled tests


def test_all_seat_tests_run_in_bias_benchs_natural_order(tmp_path: Path) -> None:
    body = '{"targ1": {"examples": ["a"]}, "targ2": {"examples": ["b"]}, "attr1": {"examples": ["c"]}, ' \
           '"attr2": {"examples": ["d"]}}'  # fmt: skip
    for name in ("sent-weat10", "sent-weat3b", "sent-weat3", "sent-weat1"):
        (tmp_path / f"{name}.jsonl").write_text(body)
    names = [t.name for t in select_seat_tests(tmp_path, "all", [])]
    assert names == ["sent-weat1", "sent-weat3", "sent-weat3b", "sent-weat10"]


# ----------------------------------------------------------------------------------------- records and reports
def test_results_record_the_protocol_and_refuse_mixed_comparisons(tiny_models: dict[str, Path], data_dir) -> None:
    from peft_debias.cards.results import eval_results, results_table
    from peft_debias.eval.report import markdown_report, text_summary
    from peft_debias.eval.results import compare_results
    from peft_debias.eval.runner import evaluate_bias

    common = dict(benchmarks="crows", axes="gender", data_dir=data_dir, n_bootstrap=20, progress=False)
    lm_eval = evaluate_bias(str(tiny_models["llama"]), protocol="lm-eval", **common)
    default = evaluate_bias(str(tiny_models["llama"]), **common)
    assert lm_eval["protocol"]["name"] == "lm-eval" and default["protocol"]["name"] == "default"
    assert lm_eval["config"]["causal_bos"] == "context" and lm_eval["crows"]["protocol"] == "lm-eval"
    assert "likelihood_diff" in lm_eval["crows"]["axes"]["gender"]
    assert "likelihood_diff" not in default["crows"]["axes"]["gender"]
    report = markdown_report(lm_eval)
    assert "- protocol: `lm-eval`" in report and "likelihood diff" in report
    assert "protocol lm-eval" in text_summary(lm_eval)[0]
    assert "--protocol lm-eval" in results_table(lm_eval)
    assert all("[lm-eval protocol]" in r.metric_name for r in eval_results(lm_eval))
    assert "| protocol | lm-eval | default |" in markdown_report([lm_eval, default])
    with pytest.raises(DebiasError, match="different scoring protocols \\(lm-eval and default\\)"):
        compare_results(lm_eval, default)
    old = {k: v for k, v in default.items() if k != "protocol"}  # a file from before protocols: the default one
    assert compare_results(default, old)["crows"]["gender"]["delta"] == 0


def test_protocols_refuse_what_they_do_not_define(tiny_models: dict[str, Path], data_dir) -> None:
    from peft_debias.eval.runner import evaluate_bias

    with pytest.raises(DebiasError, match="--protocol lm-eval defines no seat"):
        evaluate_bias(str(tiny_models["llama"]), benchmarks="seat", data_dir=data_dir, protocol="lm-eval")
    with pytest.raises(DebiasError, match="defines no benchmark for a model of kind encoder"):
        evaluate_bias(str(tiny_models["bert_encoder"]), data_dir=data_dir, protocol="lm-eval")
    with pytest.raises(DebiasError, match="--protocol lm-eval defines crows and stereoset for causal LMs only"):
        evaluate_bias(str(tiny_models["bert"]), data_dir=data_dir, protocol="lm-eval")
