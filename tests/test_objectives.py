"""Objectives: masking rules, difflib alignment for the counterfactual loss, training rows and methods."""

from __future__ import annotations

import pytest
import torch

from peft_debias.core.errors import DebiasError
from peft_debias.models.loading import ModelKind, load_model
from peft_debias.models.methods import LORA_TARGETS, MethodOptions, build_peft_config, get_method
from peft_debias.train.data import RowStream
from peft_debias.train.data import training_rows as _rows
from peft_debias.train.objectives import (
    ObjectiveConfig,
    _aligned_positions,
    check_objective,
    collate,
    compute_loss,
    default_objective,
    mask_tokens,
    token_alignment,
)


@pytest.fixture(scope="module")
def bert(tiny_models):
    return load_model(str(tiny_models["bert"]))


def test_masking_rate_specials_and_determinism(bert) -> None:
    texts = ["he is a doctor and she is a nurse at the hospital today"] * 64
    enc = bert.tokenizer(texts, padding=True, return_tensors="pt", return_special_tokens_mask=True)
    batches = []
    for _ in range(2):
        batch = {k: v.clone() for k, v in enc.items()}
        mask_tokens(batch, bert.tokenizer, ObjectiveConfig(), torch.Generator().manual_seed(7))
        batches.append(batch)
    assert torch.equal(batches[0]["input_ids"], batches[1]["input_ids"])  # same generator, same masks
    labels = batches[0]["labels"]
    masked = labels != -100
    assert not masked[enc["special_tokens_mask"].bool()].any()  # [CLS]/[SEP] never masked
    rate = masked.sum() / (~enc["special_tokens_mask"].bool()).sum()
    assert 0.10 < rate < 0.20
    assert torch.equal(labels[masked], enc["input_ids"][masked])  # labels hold the original tokens
    mask_share = (batches[0]["input_ids"][masked] == bert.tokenizer.mask_token_id).float().mean()
    assert 0.7 < mask_share < 0.9  # 80% [MASK], the rest random or kept


def test_whole_word_masking_masks_all_pieces_of_a_word(bert) -> None:
    text = "the nurse administered unbelievably complicated medication"
    cfg = ObjectiveConfig(whole_word_mask=True, mlm_probability=0.5)
    batch = collate(
        [{"text": text}] * 16, "mlm", bert.tokenizer, ModelKind.MASKED_LM, cfg, torch.Generator().manual_seed(1)
    )
    words = batch["word_ids"]
    assert (words[0] >= 0).sum() > len(text.split())  # some words are split into several pieces
    masked = batch["labels"] != -100
    for row in range(16):
        for word in words[row].unique():
            if word < 0:
                continue
            pieces = masked[row][words[row] == word]
            assert pieces.all() or not pieces.any()


def test_aligned_positions_skip_the_swapped_words() -> None:
    # BOS he went home / BOS she went home : next tokens "went", "home" are shared, "he"/"she" are not
    a, b = torch.tensor([0, 11, 20, 30]), torch.tensor([0, 12, 20, 30])
    assert _aligned_positions(a, 4, b, 4) == ([1, 2], [1, 2])
    # a swapped word that tokenises into two pieces shifts the alignment: BOS her book / BOS h is book
    a, b = torch.tensor([0, 5, 40]), torch.tensor([0, 6, 7, 40])
    assert _aligned_positions(a, 3, b, 4) == ([1], [2])


def _pair_batch(llama, rows):
    return collate(
        rows,
        "counterfactual",
        llama.tokenizer,
        ModelKind.CAUSAL_LM,
        ObjectiveConfig(),
        torch.Generator().manual_seed(0),
    )


def test_counterfactual_loss_is_zero_for_identical_pairs(tiny_models) -> None:
    llama = load_model(str(tiny_models["llama"]))
    batch = _pair_batch(llama, [{"text": "he is a doctor", "counterfactual": "he is a doctor"}])
    _, parts = compute_loss(llama.model, batch, "counterfactual", ModelKind.CAUSAL_LM, ObjectiveConfig())
    assert parts["invariance"] == pytest.approx(0.0, abs=1e-6)
    batch = _pair_batch(llama, [{"text": "he is a doctor", "counterfactual": "she is a doctor"}])
    assert (
        compute_loss(llama.model, batch, "counterfactual", ModelKind.CAUSAL_LM, ObjectiveConfig())[1]["invariance"] > 0
    )


def test_training_rows_with_and_without_cda() -> None:
    ds = {
        "text": ["He ran.", "The rabbi sang."],
        "counterfactuals": [["She ran."], ["The priest sang.", "The imam sang."]],
    }
    assert _rows(ds, "clm", True) == [
        {"text": t} for t in ["He ran.", "She ran.", "The rabbi sang.", "The priest sang.", "The imam sang."]
    ]
    assert _rows(ds, "clm", False) == [{"text": "He ran."}, {"text": "The rabbi sang."}]
    assert _rows(ds, "counterfactual", True)[1:] == [
        {"text": "The rabbi sang.", "counterfactual": "The priest sang."},
        {"text": "The rabbi sang.", "counterfactual": "The imam sang."},
    ]
    assert _rows(ds, "counterfactual", False)[0] == {"text": "He ran.", "counterfactual": "He ran."}


def test_row_stream_is_a_seeded_permutation_per_epoch() -> None:
    stream = RowStream(5, seed=3)
    first, second = stream.take(0, 5), stream.take(5, 5)
    assert sorted(first) == sorted(second) == list(range(5)) and first != second
    assert RowStream(5, seed=3).take(3, 4) == (first + second)[3:7]


def test_objective_and_method_registries() -> None:
    assert default_objective(ModelKind.ENCODER) == "counterfactual"
    with pytest.raises(DebiasError, match="objective 'clm' does not fit a masked_lm model"):
        check_objective("clm", ModelKind.MASKED_LM)
    with pytest.raises(DebiasError, match=r"unknown method 'x' \(known: lora, prefix, prompt, ia3\)"):
        get_method("x")
    config = build_peft_config("lora", ModelKind.MASKED_LM, "bert")
    assert config.task_type.value == "FEATURE_EXTRACTION" and set(config.target_modules) == {"query", "value"}
    assert build_peft_config("prefix", ModelKind.CAUSAL_LM, "llama").task_type.value == "CAUSAL_LM"
    assert LORA_TARGETS["llama"] == ["q_proj", "v_proj"]
    with pytest.raises(DebiasError, match="no default LoRA target modules for model type 'mamba'"):
        build_peft_config("lora", ModelKind.CAUSAL_LM, "mamba")


def _sentence_logprob(model, tokenizer, text: str) -> float:
    """log P(text | BOS), computed token by token from the model's logits (independently of the objective)."""
    ids = [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]]
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    return sum(float(torch.log_softmax(logits[t - 1], -1)[ids[t]]) for t in range(1, len(ids)))


def test_likelihood_invariance_is_the_squared_log_likelihood_gap(tiny_models) -> None:
    llama = load_model(str(tiny_models["llama"]))
    pairs = [("he is a doctor", "she is a doctor"), ("my father cooks dinner", "my mother cooks dinner")]
    batch = _pair_batch(llama, [{"text": a, "counterfactual": b} for a, b in pairs])
    gaps = [
        _sentence_logprob(llama.model, llama.tokenizer, a) - _sentence_logprob(llama.model, llama.tokenizer, b)
        for a, b in pairs
    ]
    expected = sum(g * g for g in gaps) / len(gaps)
    cfg = ObjectiveConfig(beta=0.5, invariance="likelihood")
    with torch.no_grad():
        loss, parts = compute_loss(llama.model, batch, "counterfactual", ModelKind.CAUSAL_LM, cfg)
    assert expected > 0 and parts["invariance"] == pytest.approx(expected, rel=1e-4)
    assert float(loss) == pytest.approx(parts["lm"] + 0.5 * expected, rel=1e-5)
    with torch.no_grad():
        kl = compute_loss(llama.model, batch, "counterfactual", ModelKind.CAUSAL_LM, ObjectiveConfig())[1]
        both = compute_loss(
            llama.model, batch, "counterfactual", ModelKind.CAUSAL_LM, ObjectiveConfig(invariance="both")
        )[1]
    assert both["invariance"] == pytest.approx(kl["invariance"] + expected, rel=1e-4)


def _gap(model, tokenizer, pair: tuple[str, str]) -> float:
    return abs(_sentence_logprob(model, tokenizer, pair[0]) - _sentence_logprob(model, tokenizer, pair[1]))


STEPS = 80


def test_likelihood_invariance_closes_the_gap_when_trained(tiny_models) -> None:
    """Steps on one pair: the parity term shrinks the log-likelihood gap; the LM loss alone does not."""
    from peft import get_peft_model

    def gap_after(beta: float) -> tuple[float, float]:
        llama = load_model(str(tiny_models["llama"]))
        torch.manual_seed(0)
        options = MethodOptions(r=4, alpha=8)
        model = get_peft_model(llama.model, build_peft_config("lora", ModelKind.CAUSAL_LM, "llama", options))
        pair = ("he is a doctor", "she is a doctor")
        batch = _pair_batch(llama, [{"text": pair[0], "counterfactual": pair[1]}])
        cfg = ObjectiveConfig(beta=beta, invariance="likelihood")
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        before = _gap(model, llama.tokenizer, pair)
        for _ in range(STEPS):
            opt.zero_grad()
            compute_loss(model, batch, "counterfactual", ModelKind.CAUSAL_LM, cfg)[0].backward()
            opt.step()
        return before, _gap(model, llama.tokenizer, pair)

    before, with_parity = gap_after(1.0)
    _, without = gap_after(0.0)
    assert before > 0.05
    assert with_parity < 0.5 * before and with_parity < 0.5 * without  # measured: 6.27 -> 2.50 vs 5.87


def test_invariance_choices_are_checked() -> None:
    check_objective("counterfactual", ModelKind.CAUSAL_LM, "likelihood")
    with pytest.raises(DebiasError, match=r"unknown invariance 'x' \(known: distribution, likelihood, both, tokens\)"):
        check_objective("counterfactual", ModelKind.CAUSAL_LM, "x")
    with pytest.raises(DebiasError, match="invariance 'likelihood' needs a causal LM"):
        check_objective("counterfactual", ModelKind.ENCODER, "likelihood")
    check_objective("counterfactual", ModelKind.ENCODER, "tokens")
    for kind in (ModelKind.CAUSAL_LM, ModelKind.MASKED_LM):
        with pytest.raises(DebiasError, match="invariance 'tokens' needs a bare encoder"):
            check_objective("counterfactual", kind, "tokens")


def test_control_pairs_take_one_forward_pass_and_match_the_lm_objective(tiny_models, monkeypatch) -> None:
    """A no-swap pair (a sentence with itself) costs one forward pass and trains exactly like ``clm``."""
    import peft_debias.train.objectives as objectives

    llama = load_model(str(tiny_models["llama"]))
    llama.model.train()
    text = ["he is a doctor at the clinic", "my father cooks"]
    gen = torch.Generator().manual_seed(0)
    pair = collate([{"text": t, "counterfactual": t} for t in text], "counterfactual", llama.tokenizer,
                   ModelKind.CAUSAL_LM, ObjectiveConfig(), gen)  # fmt: skip
    plain = collate([{"text": t} for t in text], "clm", llama.tokenizer, ModelKind.CAUSAL_LM, ObjectiveConfig(), gen)
    calls = []
    real = objectives._clm_logits_loss
    monkeypatch.setattr(objectives, "_clm_logits_loss", lambda m, b: calls.append(1) or real(m, b))
    cfg = ObjectiveConfig(invariance="both")
    grads = []
    for batch, objective in ((pair, "counterfactual"), (plain, "clm")):
        llama.model.zero_grad()
        compute_loss(llama.model, batch, objective, ModelKind.CAUSAL_LM, cfg)[0].backward()
        grads.append(torch.cat([p.grad.flatten() for p in llama.model.parameters() if p.grad is not None]))
    assert len(calls) == 2  # one pass for the pair, one for clm
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_base_regulariser_is_the_kl_to_the_frozen_base_and_leaves_a_control_at_the_base(tiny_models) -> None:
    from peft import get_peft_model

    llama = load_model(str(tiny_models["llama"]))
    torch.manual_seed(0)
    model = get_peft_model(llama.model, build_peft_config("lora", ModelKind.CAUSAL_LM, "llama", MethodOptions(r=4)))
    cfg = ObjectiveConfig(invariance="likelihood", regulariser="base")
    control = _pair_batch(llama, [{"text": "he is a doctor", "counterfactual": "he is a doctor"}])
    loss, parts = compute_loss(model, control, "counterfactual", ModelKind.CAUSAL_LM, cfg)
    loss.backward()
    assert parts["lm"] == pytest.approx(0.0, abs=1e-7) and parts["invariance"] == 0.0
    grads = [p.grad.abs().max() for p in model.parameters() if p.grad is not None]
    assert grads and max(grads) < 1e-6  # nothing to learn (the gradient of KL at its minimum, up to rounding)
    with torch.no_grad():  # move the adapter: the regulariser is KL(base || model), by hand
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
        treated = _pair_batch(llama, [{"text": "he is a doctor", "counterfactual": "she is a doctor"}])
        parts = compute_loss(model, treated, "counterfactual", ModelKind.CAUSAL_LM, cfg)[1]
        ids = treated["orig"]["input_ids"]
        log_p = torch.log_softmax(model(input_ids=ids).logits.double(), -1)
        with model.disable_adapter():
            log_q = torch.log_softmax(model(input_ids=ids).logits.double(), -1)
    expected = float((log_q.exp() * (log_q - log_p)).sum(-1).mean())
    assert expected > 1e-3 and parts["lm"] == pytest.approx(expected, rel=1e-4)


def test_regulariser_and_invariance_choices_are_checked() -> None:
    check_objective("counterfactual", ModelKind.CAUSAL_LM, "likelihood", "base")
    with pytest.raises(DebiasError, match=r"unknown regulariser 'l2' \(known: lm, base\)"):
        check_objective("counterfactual", ModelKind.CAUSAL_LM, "distribution", "l2")
    with pytest.raises(DebiasError, match="regulariser 'base' needs a causal LM"):
        check_objective("counterfactual", ModelKind.ENCODER, "distribution", "base")
    with pytest.raises(DebiasError, match="apply to the counterfactual objective only"):
        check_objective("clm", ModelKind.CAUSAL_LM, "likelihood")


# ------------------------------------------------------------------ token-level invariance (sentence encoders)


def test_token_alignment_pairs_context_positions_and_swapped_spans() -> None:
    # [CLS] he went home [SEP] / [CLS] she went home [SEP]
    same, swapped = token_alignment(torch.tensor([1, 11, 20, 30, 2, 0]), 5, torch.tensor([1, 12, 20, 30, 2]), 5)
    assert same == [(0, 0), (2, 2), (3, 3), (4, 4)] and swapped == [(range(1, 2), range(1, 2))]
    # a name of one piece against one of two pieces shifts the context after it
    same, swapped = token_alignment(torch.tensor([1, 5, 40, 2]), 4, torch.tensor([1, 6, 7, 40, 2]), 5)
    assert same == [(0, 0), (2, 3), (3, 4)] and swapped == [(range(1, 2), range(1, 3))]


def _encoder_lora(tiny_models, seed: int = 0):
    from peft import get_peft_model

    encoder = load_model(str(tiny_models["bert_encoder"]))
    assert encoder.kind is ModelKind.ENCODER
    torch.manual_seed(seed)
    options = MethodOptions(r=4)
    model = get_peft_model(encoder.model, build_peft_config("lora", ModelKind.ENCODER, "bert", options))
    model.train()
    return encoder, model


def _encoder_pairs(encoder, rows):
    return collate(rows, "counterfactual", encoder.tokenizer, ModelKind.ENCODER, ObjectiveConfig(),
                   torch.Generator().manual_seed(0))  # fmt: skip


def test_token_invariance_by_hand(tiny_models) -> None:
    encoder, model = _encoder_lora(tiny_models)
    with torch.no_grad():  # move the adapter away from the base so the regulariser is not 0
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    batch = _encoder_pairs(encoder, [{"text": "he is a doctor", "counterfactual": "she is a doctor"}])
    orig, cf = batch["orig"]["input_ids"][0], batch["cf"]["input_ids"][0]
    assert len(orig) == len(cf) and int((orig != cf).sum()) == 1  # one token swapped: he -> she
    swap = int((orig != cf).nonzero())
    cfg = ObjectiveConfig(invariance="tokens", beta=2.0)
    loss, parts = compute_loss(model, batch, "counterfactual", ModelKind.ENCODER, cfg)
    assert model.training  # the dropout-free passes restore training mode

    def dist(x, y):
        return 1 - torch.nn.functional.cosine_similarity(x, y, dim=-1)

    model.eval()
    with torch.no_grad():
        h_o = model(input_ids=orig[None]).last_hidden_state[0]
        h_c = model(input_ids=cf[None]).last_hidden_state[0]
        with model.disable_adapter():
            base = model(input_ids=orig[None]).last_hidden_state[0]
    context = [k for k in range(len(orig)) if k != swap]
    invariance = float(dist(h_o[context], h_c[context]).mean() + dist(h_o[swap], h_c[swap]))
    regulariser = float(dist(h_o[context], base[context]).mean())
    assert regulariser > 1e-3 and invariance > 1e-3
    assert parts["invariance"] == pytest.approx(invariance, rel=1e-4)
    assert parts["lm"] == pytest.approx(regulariser, rel=1e-4)
    assert float(loss.detach()) == pytest.approx(regulariser + 2.0 * invariance, rel=1e-4)


def test_token_invariance_control_has_nothing_to_learn(tiny_models) -> None:
    """A no-swap pair on a fresh adapter: zero loss and zero gradient although the encoder has dropout."""
    encoder, model = _encoder_lora(tiny_models)
    assert encoder.model.config.hidden_dropout_prob > 0
    control = _encoder_pairs(encoder, [{"text": t, "counterfactual": t} for t in ("he is a doctor", "my aunt sings")])
    cfg = ObjectiveConfig(invariance="tokens")
    loss, parts = compute_loss(model, control, "counterfactual", ModelKind.ENCODER, cfg)
    loss.backward()
    assert float(loss) == pytest.approx(0.0, abs=1e-6) and parts["invariance"] == pytest.approx(0.0, abs=1e-6)
    grads = [p.grad.abs().max() for p in model.parameters() if p.grad is not None]
    assert grads and max(grads) < 1e-5


def _swap_gap(model, batch, base: bool = False) -> float:
    import contextlib

    orig, cf = batch["orig"]["input_ids"], batch["cf"]["input_ids"]
    model.eval()
    with torch.no_grad(), model.disable_adapter() if base else contextlib.nullcontext():
        h_o, h_c = model(input_ids=orig).last_hidden_state, model(input_ids=cf).last_hidden_state
    model.train()
    swapped = orig != cf
    return float((1 - torch.nn.functional.cosine_similarity(h_o[swapped], h_c[swapped], dim=-1)).mean())


@pytest.mark.parametrize("beta", [1.0, 0.0])
def test_token_invariance_training_brings_the_swapped_words_together(tiny_models, beta: float) -> None:
    """From a moved adapter: the regulariser brings the context back to the base model's states; with the
    invariance the swapped words also meet, without it they stay apart."""
    encoder, model = _encoder_lora(tiny_models)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 1.0)
    batch = _encoder_pairs(encoder, [{"text": "he is a doctor", "counterfactual": "she is a doctor"},
                                     {"text": "my father sings", "counterfactual": "my mother sings"}])  # fmt: skip
    assert batch["orig"]["input_ids"].shape == batch["cf"]["input_ids"].shape
    base_gap = _swap_gap(model, batch, base=True)
    optimiser = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=2e-2)
    cfg = ObjectiveConfig(invariance="tokens", beta=beta)
    start = compute_loss(model, batch, "counterfactual", ModelKind.ENCODER, cfg)[1]["lm"]
    for _ in range(40):
        optimiser.zero_grad()
        loss, parts = compute_loss(model, batch, "counterfactual", ModelKind.ENCODER, cfg)
        loss.backward()
        optimiser.step()
    after = _swap_gap(model, batch)
    assert start > 0.01
    if beta:
        assert after < 0.3 * base_gap and parts["lm"] < 0.05  # the words meet, the context stays near the base
    else:
        assert after > 0.6 * base_gap and parts["lm"] < 0.2 * start  # back to the base model, words apart


def test_token_invariance_without_matching_tokens_is_finite(tiny_models) -> None:
    """A pair whose only tokens are swapped (no special tokens to match) still gives a finite loss."""
    encoder, model = _encoder_lora(tiny_models)
    ids = encoder.tokenizer.convert_tokens_to_ids(["he", "she"])
    pair = {side: {"input_ids": torch.tensor([[t]]), "attention_mask": torch.tensor([[1]])}
            for side, t in zip(("orig", "cf"), ids, strict=True)}  # fmt: skip
    loss, parts = compute_loss(model, pair, "counterfactual", ModelKind.ENCODER, ObjectiveConfig(invariance="tokens"))
    assert torch.isfinite(loss) and parts["lm"] == 0.0 and parts["invariance"] > 0
