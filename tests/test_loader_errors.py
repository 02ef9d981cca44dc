"""load_debias_adapter on bad input: every failure is one DebiasError line, and the model is left as it was."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, BertForMaskedLM

from peft_debias.core.errors import DebiasError
from peft_debias.loader.attach import load_debias_adapter

from support.loader import (
    one_torch_thread,  # noqa: F401 - autouse fixture
    trained_adapter,
)
from support.tiny_models import SEED, _bert_config, _bert_tokenizer


@pytest.fixture(scope="module")
def adapter(tiny_models, tmp_path_factory):
    def get(model: str, method: str, axis: str = "gender") -> Path:
        return trained_adapter(tiny_models, tmp_path_factory, model, method, axis)

    return get


@pytest.fixture(scope="module")
def other_berts(tmp_path_factory) -> dict[str, Path]:
    """``reseeded``: the tiny BERT's shapes with other weights; ``wide``: hidden size 64 instead of 32."""
    root, tok = tmp_path_factory.mktemp("other_berts"), _bert_tokenizer()
    torch.manual_seed(SEED + 1)
    reseeded = BertForMaskedLM(_bert_config(len(tok), tok.pad_token_id))
    config = _bert_config(len(tok), tok.pad_token_id)
    config.hidden_size, config.intermediate_size = 64, 128
    torch.manual_seed(SEED)
    wide = BertForMaskedLM(config)
    out = {}
    for name, model in (("reseeded", reseeded), ("wide", wide)):
        model.save_pretrained(root / name)
        tok.save_pretrained(root / name)
        out[name] = root / name
    return out


def bert(path) -> torch.nn.Module:
    return AutoModelForMaskedLM.from_pretrained(str(path))


def error_of(*args, **kwargs) -> str:
    with pytest.raises(DebiasError) as info:
        load_debias_adapter(*args, **kwargs)
    text = str(info.value)
    assert "\n" not in text and "; " in text, text  # one line: problem; fix
    return text


def untouched(model: torch.nn.Module) -> bool:
    return not any(isinstance(m, BaseTunerLayer) for m in model.modules()) and all(
        p.requires_grad for p in model.parameters()
    )


def test_wrong_base_is_refused_unless_allowed(tiny_models, adapter, other_berts) -> None:
    model = bert(other_berts["reseeded"])
    text = error_of(model, adapter("bert", "lora"))
    assert "was trained on" in text and "backbone fingerprint" in text and "allow_base_mismatch" in text
    assert untouched(model)
    assert load_debias_adapter(model, adapter("bert", "lora"), allow_base_mismatch=True).peft_config


def test_wrong_base_by_id_for_a_plain_peft_adapter(tiny_models, adapter, other_berts, tmp_path) -> None:
    plain = shutil.copytree(adapter("bert", "lora"), tmp_path / "plain")
    (plain / "debias_config.json").unlink()
    config = json.loads((plain / "adapter_config.json").read_text())  # as stock peft writes it: the base's folder
    config["base_model_name_or_path"] = str(tiny_models["bert"])
    (plain / "adapter_config.json").write_text(json.dumps(config))
    assert "was trained on" in error_of(bert(other_berts["reseeded"]), plain)
    assert load_debias_adapter(bert(tiny_models["bert"]), plain, mode="inference").peft_config


@pytest.mark.parametrize(
    "method,tensor,shapes",
    [
        ("lora", "base_model.model.bert.encoder.layer.0.attention.self.query.lora_A.weight", "(8, 32)"),
        ("prompt", "prompt_embeddings", "(4, 32)"),
        ("prefix", "prompt_embeddings", "(4, 128)"),
    ],
)
def test_shape_mismatch_names_the_tensor_and_both_shapes(adapter, other_berts, method, tensor, shapes) -> None:
    model = bert(other_berts["wide"])
    text = error_of(model, adapter("bert", method), allow_base_mismatch=True)
    assert f"shape mismatch for adapter tensor {tensor} " in text and f"the file has {shapes}" in text, text
    assert "BertForMaskedLM needs (" in text
    assert untouched(model)


@pytest.mark.parametrize("method", ["prefix", "prompt"])
def test_merging_a_prompt_learning_adapter_is_refused(tiny_models, adapter, method) -> None:
    model = bert(tiny_models["bert"])
    text = error_of(model, adapter("bert", method), mode="merge")
    assert "cannot be merged" in text and "mode='freeze' or mode='inference'" in text
    assert untouched(model)


def test_unknown_path_or_repo(tiny_models, tmp_path, hub_offline) -> None:
    model = bert(tiny_models["bert"])
    assert "not found" in error_of(model, tmp_path / "nope")
    assert "not found" in error_of(model, "./not/a/folder")
    assert "neither a local folder nor in the Hub cache" in error_of(model, "nobody/no-such-adapter")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupted_safetensors(tiny_models, adapter, tmp_path, damage) -> None:
    folder = shutil.copytree(adapter("bert", "lora"), tmp_path / "a")
    weights = folder / "adapter_model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\x00\xff" * 64, "empty": b""}[damage])
    assert "is corrupted or truncated" in error_of(bert(tiny_models["bert"]), folder)


def test_pickle_weights_only_with_allow_pickle(tiny_models, adapter, tmp_path) -> None:
    folder = shutil.copytree(adapter("bert", "lora"), tmp_path / "a")
    weights = load_file(str(folder / "adapter_model.safetensors"))
    (folder / "adapter_model.safetensors").unlink()
    torch.save(weights, folder / "adapter_model.bin")
    assert "refused as unpickling can run code" in error_of(bert(tiny_models["bert"]), folder)
    assert load_debias_adapter(bert(tiny_models["bert"]), folder, allow_pickle=True).peft_config


def test_not_an_adapter_folder(tiny_models, adapter, tmp_path) -> None:
    model = bert(tiny_models["bert"])
    assert "holds a model, not an adapter" in error_of(model, tiny_models["bert"])
    broken = shutil.copytree(adapter("bert", "lora"), tmp_path / "a")
    (broken / "adapter_config.json").write_text("{not json")
    assert "is not valid JSON" in error_of(model, broken)
    file_instead = tmp_path / "file.txt"
    file_instead.write_text("x")
    assert "is a file, not a folder" in error_of(model, file_instead)


def test_missing_or_extra_adapter_tensor(tiny_models, adapter, tmp_path) -> None:
    model = bert(tiny_models["bert"])
    folder = shutil.copytree(adapter("bert", "lora"), tmp_path / "a")
    weights = load_file(str(folder / "adapter_model.safetensors"))
    dropped = sorted(weights)[0]
    save_file({k: v for k, v in weights.items() if k != dropped}, str(folder / "adapter_model.safetensors"))
    assert f"expects adapter tensor {dropped} " in error_of(model, folder)
    assert untouched(model)
    extra = "base_model.model.bert.encoder.layer.9.attention.self.query.lora_A.weight"
    save_file({**weights, extra: torch.zeros(8, 32)}, str(folder / "adapter_model.safetensors"))
    assert f"adapter tensor {extra} of {folder} has no place in BertForMaskedLM" in error_of(model, folder)
    assert untouched(model)


def test_bad_arguments(tiny_models, adapter) -> None:
    model, folder = bert(tiny_models["bert"]), adapter("bert", "lora")
    assert "unknown mode 'frozen'" in error_of(model, folder, mode="frozen")
    assert "2 adapter names for 1 adapters" in error_of(model, folder, adapter_name=["a", "b"])
    assert "invalid adapter name 'a.b'" in error_of(model, folder, adapter_name="a.b")
    assert "both be named 'x'" in error_of(model, [folder, folder], adapter_name=["x", "x"])
    assert "no adapter given" in error_of(model, [])
    assert untouched(model)


def test_stacking_that_peft_cannot_run(tiny_models, adapter) -> None:
    model = bert(tiny_models["bert"])
    prefixes = [adapter("bert", "prefix", "gender"), adapter("bert", "prefix", "race")]
    assert "2 prompt-learning adapters" in error_of(model, prefixes)
    text = error_of(model, [adapter("bert", "lora"), adapter("bert", "prefix", "race")])
    assert "different PEFT types (LORA, PREFIX_TUNING)" in text
    text = error_of(model, [adapter("bert", "lora"), adapter("bert", "ia3", "race")], mode="inference")
    assert "different PEFT types" in text and "mode='merge'" in text
    assert untouched(model)
    merged = load_debias_adapter(model, [adapter("bert", "lora"), adapter("bert", "ia3", "race")], mode="merge")
    assert untouched(merged)  # LoRA then IA3, merged in order into plain weights


def test_merge_needs_a_plain_model(tiny_models, adapter) -> None:
    peft_model = load_debias_adapter(bert(tiny_models["bert"]), adapter("bert", "lora"), mode="inference")
    assert "merge mode needs the plain transformers model" in error_of(peft_model, adapter("bert", "lora"), "merge")


def test_adapter_that_does_not_fit_the_architecture(tiny_models, adapter) -> None:
    model = AutoModelForCausalLM.from_pretrained(str(tiny_models["llama"]))
    text = error_of(model, adapter("bert", "lora"), allow_base_mismatch=True)
    assert "does not fit LlamaForCausalLM" in text and "Target modules" in text
    assert untouched(model)


def test_debias_config_must_be_an_object(tiny_models, adapter, tmp_path) -> None:
    folder = shutil.copytree(adapter("bert", "lora"), tmp_path / "a")
    (folder / "debias_config.json").write_text(json.dumps(["not", "an", "object"]))
    assert "is not a JSON object" in error_of(bert(tiny_models["bert"]), folder)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_adapter_tensors_are_refused(tiny_models, adapter, tmp_path, value) -> None:
    """One check for every adapter reader (attach, merge, publish's load check, eval): a diverged adapter is named
    with its file and tensor instead of giving NaN scores; the model is left untouched."""
    broken = shutil.copytree(adapter("bert", "lora"), tmp_path / "broken")
    tensors = load_file(str(broken / "adapter_model.safetensors"))
    name = sorted(tensors)[-1]
    tensors[name][0, 0] = value
    save_file(tensors, str(broken / "adapter_model.safetensors"))
    model = bert(tiny_models["bert"])
    text = error_of(model, broken, mode="inference", allow_base_mismatch=True)
    assert f"adapter file {broken / 'adapter_model.safetensors'} has non-finite values in tensor {name}" in text
    assert "(1 of " in text and untouched(model)
