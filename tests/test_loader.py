"""load_debias_adapter: freeze / merge / inference modes, several axes, cross-head loading, plain-peft compatibility."""

from __future__ import annotations

import re
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file
from transformers import (
    AutoModel,
    AutoModelForCausalLM,
    AutoModelForMaskedLM,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
)

from peft_debias.loader.attach import adapter_parameters, load_debias_adapter
from peft_debias.loader.checks import backbone_fingerprint
from peft_debias.models.loading import load_tokenizer

from support.loader import (
    adapter_snapshot,
    one_torch_thread,  # noqa: F401 - autouse fixture
    snapshot,
    trained_adapter,
)

METHODS = ["lora", "prefix", "prompt", "ia3"]
LM_HEAD = {"bert": AutoModelForMaskedLM, "bert_encoder": AutoModel, "llama": AutoModelForCausalLM}
HEADS_WITH_LABELS = (AutoModelForSequenceClassification, AutoModelForTokenClassification)


@pytest.fixture(scope="module")
def adapter(tiny_models, tmp_path_factory):
    def get(model: str, method: str, axis: str = "gender") -> Path:
        return trained_adapter(tiny_models, tmp_path_factory, model, method, axis)

    return get


def build(tiny_models, name: str, head=None):
    head = head or LM_HEAD.get(name, AutoModelForCausalLM)
    extra = {"num_labels": 3} if head in HEADS_WITH_LABELS else {}
    return head.from_pretrained(str(tiny_models[name]), **extra)


def inputs(tiny_models, name: str) -> dict[str, torch.Tensor]:
    tokenizer = load_tokenizer(str(tiny_models[name]))  # pad = eos where there is no pad token (gpt2)
    return tokenizer(
        ["he is a doctor", "she is a nurse at the hospital"],
        padding=True,
        return_tensors="pt",
        return_token_type_ids=False,
    )


def outputs(model, batch) -> torch.Tensor:
    with torch.no_grad():
        out = model(**batch)
    return out.logits if getattr(out, "logits", None) is not None else out.last_hidden_state


@pytest.mark.parametrize("method", METHODS)
def test_freeze_keeps_adapters_bit_identical_while_base_and_head_train(tiny_models, adapter, method) -> None:
    model = build(tiny_models, "bert", AutoModelForSequenceClassification)
    peft_model = load_debias_adapter(model, adapter("bert", method), mode="freeze")
    frozen = adapter_snapshot(peft_model)
    assert frozen, "the adapter parameters must be found"
    if method in ("prefix", "prompt"):
        assert any("prompt_encoder" in name for name in frozen)  # peft leaves these trainable; we freeze them
    assert not any(p.requires_grad for _, p in adapter_parameters(peft_model))
    rest = {n: p for n, p in peft_model.named_parameters() if n not in frozen}
    assert all(p.requires_grad for p in rest.values())
    before = snapshot(rest.items())
    # All parameters go to the optimizer on purpose: weight decay must not touch the frozen adapter either.
    optimizer = torch.optim.AdamW(peft_model.parameters(), lr=1e-2, weight_decay=0.1)
    batch, labels = inputs(tiny_models, "bert"), torch.tensor([0, 2])
    peft_model.train()
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(peft_model(**batch).logits, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = adapter_snapshot(peft_model)
    assert all(torch.equal(frozen[name], after[name]) for name in frozen)
    changed = {n for n, p in rest.items() if not torch.equal(p.detach(), before[n])}
    assert any("classifier" in n for n in changed) and any("encoder.layer.0." in n for n in changed)


# The adapter weights of each method by parameter name (peft's naming, independent of the loader), and how many
# the tiny BERT has: LoRA A and B on query and value of 2 layers, IA3 on key, value and 2 feed-forward projections
# of 2 layers, one prompt encoder embedding for prefix and prompt tuning.
ADAPTER_WEIGHTS = {
    "lora": (r"\.lora_[AB]\.gender\.weight$", 8),
    "prefix": (r"^prompt_encoder\.gender\.", 1),
    "prompt": (r"^prompt_encoder\.gender\.", 1),
    "ia3": (r"\.ia3_l\.gender$", 8),
}


@pytest.mark.parametrize("method", METHODS)
def test_freeze_flags_by_parameter_name(tiny_models, adapter, method) -> None:
    """Freeze: exactly the adapter weights (found by name) are frozen; every other parameter trains."""
    model = build(tiny_models, "bert", AutoModelForSequenceClassification)
    peft_model = load_debias_adapter(model, adapter("bert", method), mode="freeze")
    pattern, count = ADAPTER_WEIGHTS[method]
    flags = {name: p.requires_grad for name, p in peft_model.named_parameters()}
    adapter_weights = {name for name in flags if re.search(pattern, name)}
    assert len(adapter_weights) == count
    assert {name for name, trains in flags.items() if not trains} == adapter_weights
    if method == "lora":
        assert len([name for name in adapter_weights if ".lora_B." in name]) == 4

def test_freeze_layer_norm_option(tiny_models, adapter) -> None:
    peft_model = load_debias_adapter(
        build(tiny_models, "bert", AutoModelForSequenceClassification), adapter("bert", "lora"), freeze_layer_norm=True
    )
    norms = {n: p.requires_grad for n, p in peft_model.named_parameters() if "LayerNorm" in n}
    assert norms and not any(norms.values())
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert any("classifier" in n for n in trainable) and any("attention.self.query.base_layer" in n for n in trainable)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["bert", "llama"])
def test_inference_mode_matches_plain_peft_and_plain_peft_still_loads(tiny_models, adapter, name, method) -> None:
    folder, batch = adapter(name, method), inputs(tiny_models, name)
    ours = load_debias_adapter(build(tiny_models, name), folder, mode="inference")
    assert not ours.training and not any(p.requires_grad for p in ours.parameters())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain = PeftModel.from_pretrained(build(tiny_models, name), str(folder)).eval()
    assert not [w for w in caught if "missing adapter keys" in str(w.message)]
    torch.testing.assert_close(outputs(ours, batch), outputs(plain, batch), atol=1e-6, rtol=0)
    base = outputs(build(tiny_models, name).eval(), batch)
    ours_out = outputs(ours, batch)
    if method in ("prefix", "prompt") or ours_out.shape != base.shape:
        ours_out = ours_out[:, -base.shape[1] :]  # prompt tuning adds virtual-token positions in front
    assert not torch.allclose(ours_out, base, atol=1e-4), "the adapter must be active"


@pytest.mark.parametrize(
    "name,method,head",
    [
        ("bert", "lora", None),
        ("bert", "ia3", None),
        ("llama", "lora", None),
        ("llama", "ia3", None),
        ("gpt2", "lora", None),  # fan_in_fan_out Conv1D
        ("bert_encoder", "lora", AutoModelForSequenceClassification),  # cross-head merge
    ],
)
def test_merge_equals_unmerged(tiny_models, adapter, name, method, head) -> None:
    folder, batch = adapter(name, method), inputs(tiny_models, name)
    torch.manual_seed(0)
    unmerged_model = build(tiny_models, name, head)
    torch.manual_seed(0)
    fresh = build(tiny_models, name, head)  # same random head as unmerged_model
    unmerged = load_debias_adapter(unmerged_model, folder, mode="inference")
    merged = load_debias_adapter(fresh, folder, mode="merge")
    assert merged is fresh and not isinstance(merged, PeftModel)
    assert not any(isinstance(m, BaseTunerLayer) for m in merged.modules())
    assert all(p.requires_grad for p in merged.parameters()), "merge keeps the model's requires_grad flags"
    torch.testing.assert_close(outputs(merged, batch), outputs(unmerged, batch), atol=1e-5, rtol=0)
    torch.manual_seed(0)
    assert not torch.allclose(outputs(merged, batch), outputs(build(tiny_models, name, head).eval(), batch), atol=1e-4)


def test_two_axes_stacked_or_merged_in_order(tiny_models, adapter) -> None:
    folders = [adapter("bert", "lora", "gender"), adapter("bert", "lora", "race")]
    batch = inputs(tiny_models, "bert")
    stacked = load_debias_adapter(build(tiny_models, "bert"), folders, mode="freeze")
    assert sorted(stacked.peft_config) == ["gender", "race"] and stacked.active_adapters == ["gender", "race"]
    assert not any(p.requires_grad for _, p in adapter_parameters(stacked))  # set_adapter made them trainable
    assert {n.split(".")[-2] for n, _ in adapter_parameters(stacked)} == {"gender", "race"}
    stacked.eval()
    both = outputs(stacked, batch)
    gender_only = outputs(load_debias_adapter(build(tiny_models, "bert"), folders[0], mode="inference"), batch)
    assert not torch.allclose(both, gender_only, atol=1e-5), "the race adapter must contribute"
    merged = load_debias_adapter(build(tiny_models, "bert"), folders, mode="merge")
    torch.testing.assert_close(outputs(merged, batch), both, atol=1e-5, rtol=0)
    # Adding an axis to a model that already holds one gives the same stack.
    first = load_debias_adapter(build(tiny_models, "bert"), folders[0], mode="inference")
    again = load_debias_adapter(first, folders[1], mode="inference")
    assert again is first and again.active_adapters == ["gender", "race"]
    torch.testing.assert_close(outputs(again, batch), both, atol=1e-6, rtol=0)


def _core(key: str, prefix: str, adapter_name: str | None = None) -> str:
    """A LoRA/IA3 key without the peft wrapper, the backbone prefix and the adapter name."""
    key = key.removeprefix("base_model.model.").removeprefix(f"{prefix}.")
    return ".".join(part for part in key.split(".") if part != adapter_name)


CROSS = [
    ("bert", AutoModelForSequenceClassification),  # BertForMaskedLM -> keys already have bert.
    ("bert", AutoModelForTokenClassification),
    ("bert", AutoModel),  # -> keys must drop bert.
    ("bert_encoder", AutoModelForSequenceClassification),  # bare BertModel -> keys must gain bert.
    ("bert_encoder", AutoModelForMaskedLM),
    ("llama", AutoModelForSequenceClassification),
    ("llama", AutoModel),
]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name,head", CROSS, ids=[f"{n}-{h.__name__}" for n, h in CROSS])
def test_cross_head_load_puts_every_tensor_in_place(tiny_models, adapter, name, head, method) -> None:
    folder = adapter(name, method)
    model = build(tiny_models, name, head)
    assert backbone_fingerprint(model) == backbone_fingerprint(build(tiny_models, name))  # the base check passes
    peft_model = load_debias_adapter(model, folder, mode="inference")
    saved = load_file(str(folder / "adapter_model.safetensors"))
    placed = dict(adapter_parameters(peft_model))
    if method in ("prefix", "prompt"):
        assert list(placed) == ["prompt_encoder.gender.embedding.weight"]
        assert torch.equal(placed["prompt_encoder.gender.embedding.weight"], saved["prompt_embeddings"])
        return
    prefix = model.base_model_prefix
    in_model = {_core(n, prefix, "gender"): p for n, p in placed.items()}
    in_file = {_core(k, prefix): v for k, v in saved.items()}
    assert set(in_model) == set(in_file) and len(in_file) == len(saved)
    assert all(torch.equal(in_model[k], v) for k, v in in_file.items())
    assert any(v.abs().sum() > 0 for k, v in in_model.items() if "lora_B" in k or "ia3" in k)


def test_plain_peft_misses_cross_head_keys_silently(tiny_models, adapter) -> None:
    """The pitfall the loader exists for (DESIGN.md section 3): peft only warns and leaves LoRA at its init."""
    folder = adapter("bert_encoder", "lora")
    with pytest.warns(UserWarning, match="missing adapter keys"):
        plain = PeftModel.from_pretrained(
            build(tiny_models, "bert_encoder", AutoModelForSequenceClassification), folder
        )
    assert all(p.abs().sum() == 0 for n, p in plain.named_parameters() if "lora_B" in n)
    ours = load_debias_adapter(build(tiny_models, "bert_encoder", AutoModelForSequenceClassification), folder)
    assert all(p.abs().sum() > 0 for n, p in ours.named_parameters() if "lora_B" in n)


def test_explicit_adapter_names_and_plain_peft_folder(tiny_models, adapter, tmp_path) -> None:
    plain_folder = tmp_path / "plain"
    shutil.copytree(adapter("bert", "lora"), plain_folder)
    (plain_folder / "debias_config.json").unlink()  # a plain peft adapter: checked by its base_model_name_or_path
    model = load_debias_adapter(build(tiny_models, "bert"), plain_folder, adapter_name="mine", mode="inference")
    assert list(model.peft_config) == ["mine"]
    unnamed = load_debias_adapter(build(tiny_models, "bert"), plain_folder, mode="inference")
    assert list(unnamed.peft_config) == ["default"]
    same_axis = load_debias_adapter(build(tiny_models, "bert"), [adapter("bert", "lora")] * 2, mode="inference")
    assert same_axis.active_adapters == ["gender", "gender_2"]


def test_hub_repo_id_from_the_cache_offline(tiny_models, adapter, tmp_path, monkeypatch, hub_offline) -> None:
    import huggingface_hub.constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--gender-lora"
    shutil.copytree(adapter("bert", "lora"), repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    model = load_debias_adapter(build(tiny_models, "bert"), "someone/gender-lora", mode="inference")
    assert list(model.peft_config) == ["gender"]
