"""A bias vector streamed from sharded bfloat16 checkpoints on the Hub (the local Hub server), in a fresh process:
the output keeps bfloat16, equals ``pre - lambda * (biased - pre)`` computed in float32 and cast back, and loads in
transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from support.hub_models import serve_model
from support.hub_server import client_env, run_client
from support.vector import dense_debias, load_all, perturb

pytestmark = pytest.mark.e2e

PRE, BIASED = "test-org/tiny-llama-bf16", "test-org/tiny-llama-bf16-biased"


def _sharded_bf16(src: Path, dest: Path) -> Path:
    """``src`` saved again in bfloat16, in shards of about 100 kB (an index file names them)."""
    model = AutoModelForCausalLM.from_pretrained(str(src), dtype=torch.bfloat16)
    model.save_pretrained(str(dest), max_shard_size="100KB")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (src / name).is_file():
            (dest / name).write_bytes((src / name).read_bytes())
    return dest


def test_vector_streams_sharded_bf16_hub_checkpoints(tiny_models, hub_server, tmp_path: Path) -> None:
    pre = _sharded_bf16(tiny_models["llama"], tmp_path / "pre")
    biased = perturb(pre, tmp_path / "biased", seed=3, noise=0.05)
    assert (pre / "model.safetensors.index.json").is_file() and len(list(pre.glob("*.safetensors"))) > 1
    serve_model(hub_server, PRE, pre)
    serve_model(hub_server, BIASED, biased)
    out = tmp_path / "debiased"
    run = run_client(
        ["-m", "peft_debias", "vector", "--base", PRE, "--biased", BIASED, "--axis", "gender", "--lambda", "0.5",
         "--output", str(out), "--shard-size", "100KB", "--no-progress"],
        client_env(hub_server, tmp_path / "hf"),
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    got, want = load_all(out), dense_debias(load_all(pre), load_all(biased), 0.5)
    norms = {k for k in want if "norm" in k}  # LayerNorm / RMSNorm: left out of the vector by default
    assert len(list(out.glob("*.safetensors"))) > 1 and set(got) == set(want)
    for name, tensor in got.items():
        expected = load_all(pre)[name] if name in norms else want[name]
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, expected), name
    config = json.loads((out / "config.json").read_text())
    assert config["dtype"] == "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.bfloat16)  # transformers reads the shards
    assert torch.equal(model.get_input_embeddings().weight, got["model.embed_tokens.weight"])
