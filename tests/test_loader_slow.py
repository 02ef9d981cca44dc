"""The downstream loader on the real bundled models (slow: deselect with -m 'not slow')."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import BertForSequenceClassification

from peft_debias.loader.attach import adapter_parameters, load_debias_adapter
from peft_debias.models.loading import bundled_model_path, load_model
from peft_debias.train.adapter import train_adapter
from peft_debias.train.config import TrainConfig

from support.loader import one_torch_thread  # noqa: F401 - autouse fixture
from support.tiny_models import CORPUS

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(CORPUS) + "\n")
    return path


def _train(base: str, corpus: Path, output: Path, **kw):
    options = dict(method="lora", max_steps=3, batch_size=4, max_length=32, lr=1e-2, eval_every=0, save_every=0)
    options.update(kw)
    return train_adapter(TrainConfig(base=base, corpus=[str(corpus)], output=str(output), progress=False, **options))


def test_minilm_gender_lora_loads_into_a_sequence_classifier(corpus, tmp_path) -> None:
    output = tmp_path / "minilm-gender"
    _train("bundled:minilm", corpus, output, objective="counterfactual")
    info = json.loads((output / "debias_config.json").read_text())
    assert info["base_model"]["backbone_fingerprint"]
    classifier = BertForSequenceClassification.from_pretrained(str(bundled_model_path("bundled:minilm")), num_labels=2)
    model = load_debias_adapter(classifier, output, mode="freeze")  # the base check passes across heads
    saved = load_file(str(output / "adapter_model.safetensors"))
    assert all(k.startswith("base_model.model.encoder.") for k in saved)  # trained on the bare BertModel
    placed = {
        n.replace("base_model.model.bert.", "base_model.model.").replace(".gender.", "."): p
        for n, p in adapter_parameters(model)
    }
    assert set(placed) == set(saved) and len(saved) == 2 * 2 * 6  # (A, B) x (query, value) x 6 layers
    assert all(torch.equal(placed[k], v) for k, v in saved.items())
    assert all(not p.requires_grad for p in placed.values())
    assert model.base_model.model.classifier.weight.requires_grad


def test_smollm2_lora_merge_equals_unmerged(corpus, tmp_path) -> None:
    output = tmp_path / "smollm2-gender"
    result = _train("bundled:smollm2", corpus, output, max_steps=1, batch_size=2, max_length=16)
    loaded = load_model("bundled:smollm2")
    batch = loaded.tokenizer(["The nurse said that", "My father is a"], return_tensors="pt", padding=True)
    merged = load_debias_adapter(loaded.model, output, mode="merge")
    with torch.no_grad():
        unmerged_logits = result.model(**batch).logits
        merged_logits = merged(**batch).logits
    assert type(merged).__name__ == "LlamaForCausalLM"
    torch.testing.assert_close(merged_logits, unmerged_logits, atol=1e-4, rtol=0)


def test_minilm_downstream_on_winobias_saves_a_model_that_reloads_identically(corpus, data_dir, tmp_path) -> None:
    """The real MiniLM with a real frozen gender adapter through ``peft-debias downstream``: the saved folder is the
    whole fine-tuned classifier; ``load_downstream`` gives the predictions the run reported, the plain root
    (``AutoModelForSequenceClassification``, adapters left out) differs."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from peft_debias import load_downstream
    from peft_debias.cli.main import main
    from peft_debias.eval.winobias import load_winobias

    adapter = tmp_path / "minilm-gender"
    _train("bundled:minilm", corpus, adapter, objective="counterfactual", lr=5e-2)
    out = tmp_path / "downstream"
    argv = ["downstream", "--model", "bundled:minilm", "--adapter", str(adapter), "--task", "winobias"]
    assert main([*argv, "--data-dir", str(data_dir), "--output", str(out), "--max-steps", "6", "--lr", "1e-4"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["adapters_unchanged"] is True and metrics["n_train"] == 792 and metrics["n_test"] == 1584
    predicted = [json.loads(line)["prediction"] for line in (out / "predictions.jsonl").read_text().splitlines()]
    tokenizer = AutoTokenizer.from_pretrained(str(out / "model"))
    batch = tokenizer([i.text for i in load_winobias(data_dir, "test")[:64]], padding=True, return_tensors="pt")
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    model = load_downstream(out / "model")
    with torch.no_grad():
        logits = model(**inputs).logits
        plain = AutoModelForSequenceClassification.from_pretrained(str(out / "model")).eval()(**inputs).logits
    assert logits.argmax(-1).tolist() == predicted[:64]
    assert not torch.allclose(logits, plain)  # the adapter takes part: the root alone is another model
    card = (out / "model" / "README.md").read_text()
    assert "gender" in card and "load_downstream" in card
