"""LoRA bias vectors: ``-lam * scaling * B @ A`` (one factor scaled), merged or as a PEFT adapter."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from peft_debias import BiasVector
from peft_debias.core.errors import DebiasError

from support.vector import load_all


def make_lora(base: Path, out: Path, seed: int = 0, **config) -> Path:
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base)
    options = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "init_lora_weights": False}
    peft_model = get_peft_model(model, LoraConfig(**{**options, **config}))
    peft_model.save_pretrained(out)
    return out


def dense_lora_delta(adapter: Path) -> dict[str, torch.Tensor]:
    """The reference delta per base tensor, straight from the definition."""
    from safetensors.torch import load_file

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    out = {}
    for key, a in weights.items():
        if ".lora_A." not in key and not key.endswith("lora_embedding_A"):
            continue
        embedding = key.endswith("lora_embedding_A")
        b = weights[
            key.replace("lora_embedding_A", "lora_embedding_B") if embedding else key.replace("lora_A", "lora_B")
        ]
        module = key.removeprefix("base_model.model.").split(".lora_")[0]
        r = a.shape[0]
        alpha = cfg["alpha_pattern"].get(module.split(".")[-1], cfg["lora_alpha"])
        scaling = alpha / math.sqrt(r) if cfg["use_rslora"] else alpha / r
        delta = (b.float() @ a.float()) * scaling
        out[f"{module}.weight"] = delta.T if embedding or cfg["fan_in_fan_out"] else delta
    return out


@pytest.mark.parametrize(
    "variant",
    [{}, {"use_rslora": True}, {"alpha_pattern": {"v_proj": 32}}, {"target_modules": ["q_proj", "embed_tokens"]}],
    ids=["plain", "rslora", "alpha_pattern", "embedding"],
)
def test_merged_lora_vector_equals_dense_definition(tiny_models, tmp_path: Path, variant) -> None:
    base = tiny_models["llama"]
    adapter = make_lora(base, tmp_path / "adapter", **variant)
    vector = BiasVector.from_adapter(adapter, axis="gender")
    expected_delta = dense_lora_delta(adapter)
    assert sorted(vector.keys()) == sorted(expected_delta)
    lam = 0.7
    vector.apply_to(base, scale=-lam, output=tmp_path / "out", progress=False)
    pre, out = load_all(base), load_all(tmp_path / "out")
    for key in pre:
        if key in expected_delta:
            assert torch.equal(out[key], pre[key] - lam * expected_delta[key]), key
        else:
            assert torch.equal(out[key], pre[key]), key


def test_fan_in_fan_out_gpt2(tiny_models, tmp_path: Path) -> None:
    base = tiny_models["gpt2"]
    adapter = make_lora(base, tmp_path / "adapter", target_modules=["c_attn"], fan_in_fan_out=True)
    expected = dense_lora_delta(adapter)
    BiasVector.from_adapter(adapter).apply_to(base, scale=-2.0, output=tmp_path / "out", progress=False)
    pre, out = load_all(base), load_all(tmp_path / "out")
    assert expected and all(torch.equal(out[k], pre[k] - 2.0 * d) for k, d in expected.items())


def _logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(["she is a doctor", "the man went to work"], return_tensors="pt", padding=True)
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("use_rslora", [False, True])
def test_negated_adapter_loads_in_peft_and_equals_merge(tiny_models, tmp_path: Path, use_rslora: bool) -> None:
    base = tiny_models["llama"]
    adapter = make_lora(base, tmp_path / "adapter", use_rslora=use_rslora)
    vector = BiasVector.from_adapter(adapter, axis="gender")
    lam = 1.5
    vector.to_adapter(tmp_path / "negated", scale=-lam)
    vector.apply_to(base, scale=-lam, output=tmp_path / "merged", progress=False)
    info = json.loads((tmp_path / "negated" / "debias_config.json").read_text())
    assert info["artifact"] == "negated_adapter" and info["lambda"] == lam

    tokenizer = AutoTokenizer.from_pretrained(base)
    negated = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path / "negated")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert torch.allclose(_logits(negated, tokenizer), _logits(merged, tokenizer), atol=1e-5)

    # peft's own delta of the negated adapter is -lam times the biased adapter's (B scaled, A untouched)
    biased = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter)
    q = "base_model.model.model.layers.0.self_attn.q_proj"
    biased_delta = dict(biased.named_modules())[q].get_delta_weight("default")
    negated_delta = dict(negated.named_modules())[q].get_delta_weight("default")
    assert torch.allclose(negated_delta, -lam * biased_delta, atol=1e-7)
    # the mistake this avoids: scaling both factors gives +lam**2 B A, the bias amplified
    both = dict(biased.named_modules())[q]
    wrong = both.scaling["default"] * (-lam * both.lora_B["default"].weight) @ (-lam * both.lora_A["default"].weight)
    assert torch.allclose(wrong, lam**2 * biased_delta, atol=1e-6)
    assert not torch.allclose(wrong, negated_delta, atol=1e-3)

    # merging the negated adapter with peft gives our streamed model
    peft_merged = negated.merge_and_unload().state_dict()
    ours = load_all(tmp_path / "merged")
    assert all(torch.allclose(peft_merged[k], ours[k], atol=1e-6) for k in ours)


def test_refusals(tiny_models, tmp_path: Path) -> None:
    base = tiny_models["llama"]
    dora = make_lora(base, tmp_path / "dora", use_dora=True)
    with pytest.raises(DebiasError, match="DoRA"):
        BiasVector.from_adapter(dora)
    from peft import PrefixTuningConfig

    prefix = get_peft_model(
        AutoModelForCausalLM.from_pretrained(base), PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    )
    prefix.save_pretrained(tmp_path / "prefix")
    with pytest.raises(DebiasError, match="PREFIX_TUNING adapter, not LoRA"):
        BiasVector.from_adapter(tmp_path / "prefix")
    one = BiasVector.from_adapter(make_lora(base, tmp_path / "a", seed=1))
    two = BiasVector.from_adapter(make_lora(base, tmp_path / "b", seed=2))
    with pytest.raises(DebiasError, match="only a vector made from one LoRA adapter"):
        (one + two).to_adapter(tmp_path / "sum", scale=-1.0)
    assert not (tmp_path / "sum").exists()
    # a sum of LoRA vectors still merges
    (one + two).apply_to(base, scale=-1.0, output=tmp_path / "merged", progress=False)
    pre, out = load_all(base), load_all(tmp_path / "merged")
    d1, d2 = dense_lora_delta(tmp_path / "a"), dense_lora_delta(tmp_path / "b")
    for key, delta in d1.items():
        assert torch.allclose(out[key], pre[key] - (delta + d2[key]), atol=1e-6)


def test_excluded_modules_leave_the_adapter(tiny_models, tmp_path: Path) -> None:
    base = tiny_models["llama"]
    adapter = make_lora(base, tmp_path / "adapter")
    vector = BiasVector.from_adapter(adapter, exclude=[r"v_proj"])
    assert vector.keys() and all("q_proj" in k for k in vector)
    vector.to_adapter(tmp_path / "neg", scale=-1.0)
    from safetensors.torch import load_file

    keys = load_file(str(tmp_path / "neg" / "adapter_model.safetensors"))
    assert keys and not any("v_proj" in k for k in keys)
    negated = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path / "neg")
    assert not any("v_proj.lora" in name for name, _ in negated.named_modules())
    vector.apply_to(base, scale=-1.0, output=tmp_path / "merged", progress=False)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    tokenizer = AutoTokenizer.from_pretrained(base)
    assert torch.allclose(_logits(negated, tokenizer), _logits(merged, tokenizer), atol=1e-5)


@pytest.mark.e2e
def test_cli_negated_adapter(tiny_models, tmp_path: Path) -> None:
    import subprocess
    import sys

    base = tiny_models["llama"]
    adapter = make_lora(base, tmp_path / "adapter")
    result = subprocess.run(
        [sys.executable, "-m", "peft_debias", "vector", "--base", str(base), "--biased", str(adapter),
         "--lambda", "2", "--as-adapter", "--output", str(tmp_path / "neg")],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "negated LoRA adapter (lambda 2)" in result.stdout
    negated = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), tmp_path / "neg")
    expected = dense_lora_delta(adapter)
    merged = negated.merge_and_unload().state_dict()
    pre = load_all(base)
    for key, delta in expected.items():
        assert torch.allclose(merged[key], pre[key] - 2.0 * delta, atol=1e-6), key
