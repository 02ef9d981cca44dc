"""Adapters in the evaluation: LoRA (attached or merged), prefix and prompt tuning on masked and causal LMs,
several adapters at once, and adapters that do not fit the model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model

from peft_debias.core.errors import DebiasError
from peft_debias.eval.crows import CrowsPair, causal_pair_scores, masked_pair_scores, shared_token_positions
from peft_debias.eval.handle import resolve_model
from peft_debias.eval.lm_scoring import mean_pooled_embeddings
from peft_debias.models.loading import load_model

from support.eval_helpers import manual_causal_mean, manual_masked_logprob, single_thread  # noqa: F401

PAIRS = [
    CrowsPair("0", "He is a doctor.", "She is a doctor.", "antistereo", "gender"),
    CrowsPair("1", "The woman stayed home while the man went to work.", "The man stayed home.", "stereo", "gender"),
]
TEXTS = ["He is a doctor.", "The woman stayed home while the man went to work.", "Hi"]


def _save_adapter(base: Path, config, dest: Path) -> Path:
    loaded = load_model(str(base))
    torch.manual_seed(0)
    peft_model = get_peft_model(loaded.model, config)
    peft_model.save_pretrained(dest)
    return dest


def _lora(task: TaskType, modules: list[str]) -> LoraConfig:
    # init_lora_weights=False: random B, so the adapter changes the outputs
    return LoraConfig(task_type=task, r=4, lora_alpha=8, target_modules=modules, init_lora_weights=False)


@pytest.fixture(scope="module")
def adapters(tiny_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("adapters")
    fe, clm = TaskType.FEATURE_EXTRACTION, TaskType.CAUSAL_LM
    return {
        "bert_lora": _save_adapter(tiny_models["bert"], _lora(fe, ["query", "value"]), root / "bert_lora"),
        "bert_lora2": _save_adapter(tiny_models["bert"], _lora(fe, ["key"]), root / "bert_lora2"),
        "bert_prompt": _save_adapter(
            tiny_models["bert"], PromptTuningConfig(task_type=fe, num_virtual_tokens=3), root / "bert_prompt"
        ),
        "bert_prefix": _save_adapter(
            tiny_models["bert"], PrefixTuningConfig(task_type=fe, num_virtual_tokens=3), root / "bert_prefix"
        ),
        "llama_prefix": _save_adapter(
            tiny_models["llama"], PrefixTuningConfig(task_type=clm, num_virtual_tokens=4), root / "llama_prefix"
        ),
        "llama_prompt": _save_adapter(
            tiny_models["llama"], PromptTuningConfig(task_type=clm, num_virtual_tokens=4), root / "llama_prompt"
        ),
    }


def _manual_masked(model, tok, pair: CrowsPair, offset: int) -> tuple[float, float]:
    ids = [tok(s)["input_ids"] for s in (pair.sent_more, pair.sent_less)]
    left, right = shared_token_positions(*ids)
    return tuple(
        float(np.mean([manual_masked_logprob(model, seq, p, tok.mask_token_id, offset) for p in pos[1:-1]]))
        for seq, pos in ((ids[0], left), (ids[1], right))
    )


def test_lora_attached_equals_merged_model(tiny_models, adapters, tmp_path: Path) -> None:
    base = resolve_model(str(tiny_models["bert"]))
    with_lora = resolve_model(str(tiny_models["bert"]), adapters=[str(adapters["bert_lora"])])
    assert with_lora.adapters == [
        {"path": str(adapters["bert_lora"]), "peft_type": "LORA", "task_type": "FEATURE_EXTRACTION", "merged": False}
    ]
    merged = with_lora.model.merge_and_unload()
    merged.save_pretrained(tmp_path / "merged")
    with_lora.tokenizer.save_pretrained(tmp_path / "merged")
    attached = resolve_model(str(tiny_models["bert"]), adapters=[str(adapters["bert_lora"])])
    from_folder = resolve_model(str(tmp_path / "merged"))
    a = masked_pair_scores(attached.model, attached.tokenizer, PAIRS)
    b = masked_pair_scores(from_folder.model, from_folder.tokenizer, PAIRS)
    c = masked_pair_scores(base.model, base.tokenizer, PAIRS)
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert not np.allclose(a, c, atol=1e-4)  # the adapter does something


def test_prompt_tuning_on_a_masked_lm_offsets_positions(tiny_models, adapters) -> None:
    handle = resolve_model(str(tiny_models["bert"]), adapters=[str(adapters["bert_prompt"])])
    scores = masked_pair_scores(handle.model, handle.tokenizer, PAIRS)
    for pair, row in zip(PAIRS, scores, strict=True):
        assert row == pytest.approx(_manual_masked(handle.model, handle.tokenizer, pair, offset=3), abs=1e-5)
    # SEAT: the virtual tokens are left out of the mean
    emb = mean_pooled_embeddings(handle.model, handle.tokenizer, TEXTS, batch_size=2)
    with torch.no_grad():
        for row, text in zip(emb, TEXTS, strict=True):
            out = handle.model(**handle.tokenizer(text, return_tensors="pt"), output_hidden_states=True)
            hidden = out.hidden_states[-1][0, 3:].mean(0)
            np.testing.assert_allclose(row, (hidden / hidden.norm()).numpy(), atol=1e-5)


def test_prefix_tuning_on_a_masked_lm(tiny_models, adapters) -> None:
    handle = resolve_model(str(tiny_models["bert"]), adapters=[str(adapters["bert_prefix"])])
    scores = masked_pair_scores(handle.model, handle.tokenizer, PAIRS, batch_size=5)
    for pair, row in zip(PAIRS, scores, strict=True):
        assert row == pytest.approx(_manual_masked(handle.model, handle.tokenizer, pair, offset=0), abs=1e-5)


@pytest.mark.parametrize("adapter", ["llama_prefix", "llama_prompt"])
def test_prompt_learning_on_a_causal_lm(tiny_models, adapters, adapter: str) -> None:
    handle = resolve_model(str(tiny_models["llama"]), adapters=[str(adapters[adapter])])
    scores = causal_pair_scores(handle.model, handle.tokenizer, PAIRS, batch_size=4)  # padded batch
    base = resolve_model(str(tiny_models["llama"]))
    assert not np.allclose(scores, causal_pair_scores(base.model, base.tokenizer, PAIRS), atol=1e-4)
    for pair, row in zip(PAIRS, scores, strict=True):
        expected = [manual_causal_mean(handle.model, handle.tokenizer, s) for s in (pair.sent_more, pair.sent_less)]
        assert row == pytest.approx(expected, abs=1e-5)


def test_several_adapters_merge_lora_and_attach_the_prompt(tiny_models, adapters) -> None:
    handle = resolve_model(
        str(tiny_models["bert"]),
        adapters=[str(adapters["bert_prompt"]), str(adapters["bert_lora"]), str(adapters["bert_lora2"])],
    )
    assert [(a["path"], a["merged"]) for a in handle.adapters] == [
        (str(adapters["bert_lora"]), True),
        (str(adapters["bert_lora2"]), True),
        (str(adapters["bert_prompt"]), False),
    ]
    assert handle.model.peft_config["adapter2"].peft_type.value == "PROMPT_TUNING"
    scores = masked_pair_scores(handle.model, handle.tokenizer, PAIRS)
    assert np.isfinite(scores).all()
    with pytest.raises(DebiasError, match="2 prompt-learning adapters given"):
        resolve_model(str(tiny_models["bert"]), adapters=[str(adapters["bert_prompt"]), str(adapters["bert_prefix"])])


def test_adapters_that_do_not_fit(tiny_models, adapters, tmp_path: Path) -> None:
    # trained on BertForMaskedLM (keys under "bert."), loaded on a bare BertModel: would load silently at init
    with pytest.raises(DebiasError, match="does not fit the model: 8 of 8 saved weights have no place"):
        resolve_model(str(tiny_models["bert_encoder"]), adapters=[str(adapters["bert_lora"])], allow_base_mismatch=True)
    with pytest.raises(DebiasError, match="does not load on the model"):
        resolve_model(str(tiny_models["gpt2"]), adapters=[str(adapters["bert_lora"])], allow_base_mismatch=True)
    with pytest.raises(DebiasError, match=r"was trained on \S*bert but the given model is \S*gpt2.*--allow-base-mis"):
        resolve_model(str(tiny_models["gpt2"]), adapters=[str(adapters["bert_lora"])])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DebiasError, match=r"has no adapter_config\.json"):
        resolve_model(str(tiny_models["bert"]), adapters=[str(tmp_path / "empty")])
    with pytest.raises(DebiasError, match="not found"):
        resolve_model(str(tiny_models["bert"]), adapters=[str(tmp_path / "missing" / "x")])


def test_an_adapter_of_another_base_is_refused_unless_allowed(
    tiny_models, tmp_path_factory, tmp_path, monkeypatch
) -> None:
    """The base check of merge and publish, in eval: an adapter trained on the tiny llama, evaluated on a copy with
    other weights (same architecture, so it would load silently), is refused; ``--allow-base-mismatch`` evaluates
    it anyway (a warning), giving the same figures as the library call."""
    import json

    from peft_debias.cli.main import main
    from peft_debias.eval.runner import evaluate_bias

    from support.loader import trained_adapter
    from support.tiny_models import CORPUS
    from support.vector import perturb

    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "error")  # main() would set it for the rest of the session
    adapter = str(trained_adapter(tiny_models, tmp_path_factory, "llama", "lora"))
    other = str(perturb(tiny_models["llama"], tmp_path / "other", noise=0.05))
    text = tmp_path / "ppl.txt"
    text.write_text("\n".join(CORPUS) + "\n")
    options = dict(benchmarks="perplexity", ppl_file=str(text), adapters=[adapter], progress=False)
    with pytest.raises(DebiasError, match=r"was trained on .* backbone fingerprint .*--allow-base-mismatch"):
        evaluate_bias(other, **options)
    allowed = evaluate_bias(other, allow_base_mismatch=True, **options)
    assert allowed["adapters"][0]["path"] == adapter and np.isfinite(allowed["perplexity"]["perplexity"])
    assert evaluate_bias(str(tiny_models["llama"]), **options)["perplexity"]["perplexity"] != pytest.approx(
        allowed["perplexity"]["perplexity"]
    )
    out = tmp_path / "r.json"
    argv = ["eval", "--model", other, "--adapter", adapter, "--benchmarks", "perplexity", "--ppl-file", str(text),
            "--no-progress", "--output", str(out)]  # fmt: skip
    assert main(argv) == 2 and not out.exists()
    assert main([*argv, "--allow-base-mismatch"]) == 0
    saved = json.loads(out.read_text())
    assert saved["perplexity"]["perplexity"] == pytest.approx(allowed["perplexity"]["perplexity"])
