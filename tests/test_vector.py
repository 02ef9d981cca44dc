"""Bias vectors: exact streamed arithmetic, exclusions, dtypes, sharded output, tied weights, algebra, artifact."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

from peft_debias import BiasVector
from peft_debias.core.errors import DebiasError
from peft_debias.vector.terms import EXCLUDE_PRESETS, is_excluded

from support.vector import cast, dense_debias, load_all, perturb, write_toy


@pytest.fixture(scope="module")
def pair(tiny_models, tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """(base, biased) folders for the tiny llama and bert."""
    root = tmp_path_factory.mktemp("pairs")
    return {name: (tiny_models[name], perturb(tiny_models[name], root / name, seed=7)) for name in ("llama", "bert")}


def test_hand_computed_arithmetic(tmp_path: Path) -> None:
    pre = write_toy(tmp_path / "pre", {"w": torch.tensor([[1.0, 2.0], [3.0, 4.0]]), "ln.weight": torch.ones(2)})
    biased = write_toy(
        tmp_path / "biased", {"w": torch.tensor([[2.0, 2.0], [3.0, 6.0]]), "ln.weight": 3 * torch.ones(2)}
    )
    vector = BiasVector.from_models(pre, biased, axis="gender")
    assert vector.keys() == ["w"] and vector.meta.excluded_tensors == ["ln.weight"]
    assert torch.equal(vector.tensor("w"), torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    vector.apply_to(pre, scale=-0.5, output=tmp_path / "out", progress=False)
    out = load_all(tmp_path / "out")
    # 1 - 0.5*1 = 0.5, 2 - 0 = 2, 3 - 0 = 3, 4 - 0.5*2 = 3; the LayerNorm keeps the base value
    assert torch.equal(out["w"], torch.tensor([[0.5, 2.0], [3.0, 3.0]]))
    assert torch.equal(out["ln.weight"], torch.ones(2))
    # the same model written as maths: (-0.5 * v) applied with scale 1, or -(v * 0.5)
    (-0.5 * vector).apply_to(pre, output=tmp_path / "out2", progress=False)
    (-(vector * 0.5)).apply_to(pre, output=tmp_path / "out3", progress=False)
    for other in ("out2", "out3"):
        assert torch.equal(load_all(tmp_path / other)["w"], out["w"])
    # lambda 2: 1 - 2 = -1, 4 - 4 = 0
    vector.apply_to(pre, scale=-2, output=tmp_path / "out4", progress=False)
    assert torch.equal(load_all(tmp_path / "out4")["w"], torch.tensor([[-1.0, 2.0], [3.0, 0.0]]))


@pytest.mark.parametrize("name", ["llama", "bert"])
def test_streamed_merge_is_bit_exact(pair, tmp_path: Path, name: str) -> None:
    pre_dir, biased_dir = pair[name]
    lam = 0.37
    vector = BiasVector.from_models(pre_dir, biased_dir, exclude=None)
    vector.apply_to(pre_dir, scale=-lam, output=tmp_path / "out", progress=False, shard_size="30KB")
    pre, biased, out = load_all(pre_dir), load_all(biased_dir), load_all(tmp_path / "out")
    expected = dense_debias(pre, biased, lam)
    assert out.keys() == pre.keys()
    for key in pre:
        assert out[key].dtype == pre[key].dtype
        assert torch.equal(out[key], expected[key]), key


def test_bf16_stays_bf16_and_exact(pair, tmp_path: Path) -> None:
    pre_dir = cast(pair["llama"][0], tmp_path / "pre16", torch.bfloat16)
    biased_dir = cast(pair["llama"][1], tmp_path / "biased16", torch.bfloat16)
    biased32 = pair["llama"][1]  # a float32 biased model against a bf16 base also works
    for label, biased_src in (("bf16", biased_dir), ("fp32", biased32)):
        vector = BiasVector.from_models(pre_dir, biased_src)
        vector.apply_to(pre_dir, scale=-1.5, output=tmp_path / label, progress=False)
        pre, biased, out = load_all(pre_dir), load_all(biased_src), load_all(tmp_path / label)
        for key in pre:
            assert out[key].dtype == torch.bfloat16
            if key in vector:
                expected = (pre[key].float() - 1.5 * (biased[key].float() - pre[key].float())).to(torch.bfloat16)
                assert torch.equal(out[key], expected), key
            else:
                assert torch.equal(out[key], pre[key]), key


def test_sharded_output_loads_with_auto_classes(pair, tmp_path: Path) -> None:
    pre_dir, biased_dir = pair["llama"]
    vector = BiasVector.from_models(pre_dir, biased_dir, axis="gender")
    result = vector.apply_to(pre_dir, scale=-1.0, output=tmp_path / "out", shard_size="20KB", progress=False)
    out = tmp_path / "out"
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 3 and (out / "model.safetensors.index.json").is_file()
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == shards
    model = AutoModelForCausalLM.from_pretrained(out)
    expected = load_all(out)
    for key, value in model.state_dict().items():
        assert torch.equal(value, expected[key]), key
    assert AutoTokenizer.from_pretrained(out)("she is a doctor")["input_ids"]
    info = json.loads((out / "debias_config.json").read_text())
    assert info["artifact"] == "debiased_model" and info["lambda"] == 1.0 and info["axis"] == "gender"
    assert ModelCard.load(out / "README.md").data.tags[:2] == ["debiasing", "bias-vector"]
    assert result.changed == len(vector) and result.tensors == len(expected)


def test_sharded_input_is_read_through_its_index(pair, tmp_path: Path) -> None:
    pre_dir, _ = pair["bert"]
    model = AutoModelForMaskedLM.from_pretrained(pre_dir)
    model.save_pretrained(tmp_path / "pre", max_shard_size="40KB")
    AutoTokenizer.from_pretrained(pre_dir).save_pretrained(tmp_path / "pre")
    assert (tmp_path / "pre" / "model.safetensors.index.json").is_file()
    perturb(tmp_path / "pre", tmp_path / "biased", seed=3)
    vector = BiasVector.from_models(tmp_path / "pre", tmp_path / "biased")
    vector.apply_to(tmp_path / "pre", scale=-0.5, output=tmp_path / "out", progress=False)
    pre, biased, out = load_all(tmp_path / "pre"), load_all(tmp_path / "biased"), load_all(tmp_path / "out")
    expected = dense_debias(pre, biased, 0.5)
    for key in pre:
        assert torch.equal(out[key], expected[key] if key in vector else pre[key]), key


def test_exclusions(pair) -> None:
    pre_dir, biased_dir = pair["bert"]
    names = list(load_all(pre_dir))
    default = BiasVector.from_models(pre_dir, biased_dir)
    norms = [n for n in names if "LayerNorm" in n]
    assert norms and not any(n in default for n in norms)
    assert sorted(default.meta.excluded_tensors) == sorted(norms)
    everything = BiasVector.from_models(pre_dir, biased_dir, exclude=None)
    assert len(everything) == len(names)
    more = BiasVector.from_models(pre_dir, biased_dir, exclude=["layernorm", "embeddings", "biases"])
    assert not any("embeddings" in n or n.endswith(".bias") or "LayerNorm" in n for n in more)
    assert any("attention.self.query.weight" in n for n in more)
    custom = BiasVector.from_models(pre_dir, biased_dir, exclude=[r"layer\.1\."])
    assert not any(".layer.1." in n for n in custom) and any(".layer.0." in n for n in custom)
    with pytest.raises(DebiasError, match="neither a preset nor a valid regex"):
        BiasVector.from_models(pre_dir, biased_dir, exclude=["("])


@pytest.mark.parametrize(
    ("name", "excluded"),
    [
        ("model.layers.0.input_layernorm.weight", True),
        ("model.norm.weight", True),
        ("transformer.h.0.ln_1.bias", True),
        ("transformer.ln_f.weight", True),
        ("bert.encoder.layer.0.output.LayerNorm.weight", True),
        ("model.layers.0.self_attn.q_proj.weight", False),
        ("transformer.h.0.attn.c_attn.weight", False),
        ("lm_head.weight", False),
    ],
)
def test_layernorm_preset_names(name: str, excluded: bool) -> None:
    assert is_excluded(name, [EXCLUDE_PRESETS["layernorm"]]) is excluded


def test_tied_output_embedding_follows_input(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(6, 4, generator=gen)
    tensors = {"model.embed_tokens.weight": emb, "lm_head.weight": emb.clone(), "model.x.weight": torch.randn(4, 4)}
    pre = write_toy(tmp_path / "pre", tensors, tie_word_embeddings=True, vocab_size=6)
    biased = perturb(pre, tmp_path / "biased", seed=1)  # noise differs between the two copies of the embedding
    vector = BiasVector.from_models(pre, biased)
    assert "lm_head.weight" not in vector and vector.meta.tied == {"lm_head.weight": "model.embed_tokens.weight"}
    vector.apply_to(pre, scale=-1.0, output=tmp_path / "out", progress=False)
    out = load_all(tmp_path / "out")
    assert torch.equal(out["lm_head.weight"], out["model.embed_tokens.weight"])
    assert not torch.equal(out["model.embed_tokens.weight"], emb)
    # excluding the input embedding keeps both at the base value
    kept = BiasVector.from_models(pre, biased, exclude=[r"embed_tokens"])
    kept.apply_to(pre, scale=-1.0, output=tmp_path / "out2", progress=False)
    out2 = load_all(tmp_path / "out2")
    assert torch.equal(out2["lm_head.weight"], emb) and torch.equal(out2["model.embed_tokens.weight"], emb)


def test_tied_real_model_stays_tied(tiny_models, tmp_path: Path) -> None:
    model = AutoModelForCausalLM.from_pretrained(tiny_models["llama"])
    model.config.tie_word_embeddings = True
    tied = AutoModelForCausalLM.from_config(model.config)
    tied.save_pretrained(tmp_path / "pre")
    assert "lm_head.weight" not in load_all(tmp_path / "pre")  # stored once
    perturb(tmp_path / "pre", tmp_path / "biased")
    BiasVector.from_models(tmp_path / "pre", tmp_path / "biased").apply_to(
        tmp_path / "pre", scale=-1.0, output=tmp_path / "out", progress=False
    )
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()


def test_algebra_matches_definitions(pair) -> None:
    pre_dir, biased_dir = pair["llama"]
    v = BiasVector.from_models(pre_dir, biased_dir, exclude=None)
    w = BiasVector.from_models(pre_dir, perturb(pre_dir, biased_dir.parent / "other", seed=11), exclude=None)
    key = "model.layers.0.self_attn.q_proj.weight"
    a, b = v.tensor(key), w.tensor(key)
    assert torch.equal((-v).tensor(key), -a)
    assert torch.equal((v * 0.3).tensor(key), a * 0.3)
    assert torch.equal((0.3 * v).tensor(key), a * 0.3)
    assert torch.equal((v / 4).tensor(key), a * 0.25)
    assert torch.equal((v + w).tensor(key), a + b)
    assert torch.equal((v - w).tensor(key), a - b)
    assert torch.equal(sum([v, w]).tensor(key), a + b)
    assert torch.equal((2 * v - 0.5 * w).tensor(key), 2 * a - 0.5 * b)
    assert v.dot(w) == pytest.approx(sum(float((v.tensor(k).double() * w.tensor(k).double()).sum()) for k in v))
    assert v.norm() == pytest.approx(v.dot(v) ** 0.5)
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(DebiasError, match="not a finite number"):
            _ = v * bad
    with pytest.raises(DebiasError, match="by zero"):
        _ = v / 0


def test_in_memory_models_and_apply_in_place(pair, tmp_path: Path) -> None:
    pre_dir, biased_dir = pair["llama"]
    pre = AutoModelForCausalLM.from_pretrained(pre_dir)
    biased = AutoModelForCausalLM.from_pretrained(biased_dir)
    vector = BiasVector.from_models(pre, biased).materialize()  # detached from the models
    target = AutoModelForCausalLM.from_pretrained(pre_dir)
    assert vector.apply_to(target, scale=-0.8) is target
    BiasVector.from_models(pre_dir, biased_dir).apply_to(pre_dir, scale=-0.8, output=tmp_path / "out", progress=False)
    streamed = load_all(tmp_path / "out")
    for key, value in target.state_dict().items():
        assert torch.equal(value, streamed[key]), key


def test_save_load_roundtrip_and_artifact(pair, tmp_path: Path, hub_offline) -> None:
    pre_dir, biased_dir = pair["bert"]
    vector = BiasVector.from_models(pre_dir, biased_dir, axis="gender")
    vector.save(tmp_path / "vec", shard_size="40KB", progress=False)
    files = sorted(p.name for p in (tmp_path / "vec").iterdir())
    assert "bias_vector.json" in files and "README.md" in files and "vector.safetensors.index.json" in files
    info = json.loads((tmp_path / "vec" / "bias_vector.json").read_text())
    assert info["format_version"] == 1 and info["artifact"] == "bias_vector" and info["axis"] == "gender"
    assert info["base"]["weights_fingerprint"] and info["base"]["fingerprint_method"] == "safetensors"
    assert info["exclude"] == [EXCLUDE_PRESETS["layernorm"]] and info["excluded_tensors"]
    assert info["sources"][0]["type"] == "models" and info["tensors"] == len(vector)
    assert info["norm"] == pytest.approx(vector.norm(), rel=1e-6)
    card = ModelCard.load(tmp_path / "vec" / "README.md")
    assert "bias-vector" in card.data.tags and "not a model" in card.text
    loaded = BiasVector.from_pretrained(tmp_path / "vec")
    assert loaded.keys() == vector.keys() and loaded.meta.axis == "gender"
    for key in vector:
        assert torch.equal(loaded.tensor(key), vector.tensor(key)), key
    # the saved vector applies to the base exactly like the original one
    loaded.apply_to(pre_dir, scale=-1.0, output=tmp_path / "a", progress=False)
    vector.apply_to(pre_dir, scale=-1.0, output=tmp_path / "b", progress=False)
    a, b = load_all(tmp_path / "a"), load_all(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(DebiasError, match="HF_HUB_OFFLINE"):
        BiasVector.from_pretrained("someone/not-cached-bias-vector")


def test_other_base_weights_warn(pair, tmp_path: Path, caplog) -> None:
    pre_dir, biased_dir = pair["llama"]
    BiasVector.from_models(pre_dir, biased_dir).save(tmp_path / "vec", progress=False)
    other = perturb(pre_dir, tmp_path / "other", seed=99)
    with caplog.at_level(logging.WARNING, logger="peft_debias"):
        result = BiasVector.load(tmp_path / "vec").apply_to(other, scale=-1, output=tmp_path / "o", progress=False)
    assert result.base_matches_vector is False and "not from these base weights" in caplog.text
    same = BiasVector.load(tmp_path / "vec").apply_to(pre_dir, scale=-1, output=tmp_path / "s", progress=False)
    assert same.base_matches_vector is True
