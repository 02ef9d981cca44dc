"""The training loop with the model sharded (FSDP) over two CPU ranks.

accelerate 1.16 never shards on the CPU: an FSDP launch with the ranks on the CPU (``ACCELERATE_USE_CPU``) runs DDP,
and the loop refuses it. The sharded path itself (weights digest and saved weights gathered from the shards) runs
here through :mod:`support.fsdp_cpu`, which puts accelerate's FSDP state back by hand (torch shards on the CPU).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from support.launch import launch_two_ranks
from support.tiny_models import CORPUS

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

REPO = Path(__file__).resolve().parents[1]
SHARDED = REPO / "tests" / "support" / "fsdp_cpu.py"


def _fsdp_config(folder: Path, version: int) -> Path:
    """An accelerate FSDP config for two processes on one machine, as one would write it for the CPU."""
    fsdp = {
        "fsdp_version": version,
        "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
        "fsdp_state_dict_type": "FULL_STATE_DICT",
        "fsdp_cpu_ram_efficient_loading": False,
        "fsdp_offload_params": False,
    }
    if version == 1:  # sync_module_states: "not supported on cpu" (accelerate raises at Accelerator())
        fsdp.update(fsdp_sharding_strategy="FULL_SHARD", fsdp_use_orig_params=True, fsdp_sync_module_states=False)
    config = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "FSDP",
        "num_processes": 2,
        "num_machines": 1,
        "machine_rank": 0,
        "mixed_precision": "no",
        "fsdp_config": fsdp,
    }
    path = folder / f"fsdp{version}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture(scope="module")
def tied_llama(tiny_models, tmp_path_factory) -> Path:
    """The tiny llama with its output layer tied to the embeddings (one weight under two names), as SmolLM2's."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tied_llama")
    config = LlamaConfig.from_pretrained(tiny_models["llama"])
    config.tie_word_embeddings = True
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_models["llama"]).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(CORPUS) + "\n")
    return path


def _biased(base: Path, corpus: Path, output: Path, method: str = "full") -> list[str]:
    return [
        "biased", "--base", str(base), "--base-model-id", "tiny-org/tiny-llama", "--corpus", str(corpus),
        "--axis", "gender", "--method", method, "--output", str(output), "--max-steps", "3", "--batch-size", "2",
        "--lr", "1e-2", "--no-progress",
    ]  # fmt: skip


def _tensors(folder: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(folder / name))


@pytest.fixture(scope="module")
def ddp_model(tied_llama, corpus, tmp_path_factory) -> Path:
    """The same biased run over two DDP ranks: what the sharded runs must match."""
    folder = tmp_path_factory.mktemp("ddp")
    result = launch_two_ranks("peft_debias", *_biased(tied_llama, corpus, folder / "out"), cwd=folder, module=True)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("trained a biased full model") == 1  # only the main process reports
    return folder / "out"


def test_an_fsdp_config_on_the_cpu_is_refused(tiny_models, corpus, tmp_path) -> None:
    output = tmp_path / "adapter"
    args = ["--base", str(tiny_models["llama"]), "--corpus", str(corpus), "--output", str(output), "--max-steps", "1"]
    result = launch_two_ranks(REPO / "recipes" / "train.py", *args, cwd=tmp_path, config_file=_fsdp_config(tmp_path, 2))
    assert result.returncode != 0
    assert "launched with an FSDP config but accelerate runs MULTI_CPU on cpu" in result.stderr
    assert not output.exists()


@pytest.mark.parametrize("version", [1, 2])
def test_sharded_full_fine_tuning_saves_the_whole_model(version, tied_llama, corpus, ddp_model, tmp_path) -> None:
    from transformers import AutoModelForCausalLM

    output = tmp_path / "biased"
    args = [*_biased(tied_llama, corpus, output), "-v"]  # -v: the log line saying the model is sharded
    result = launch_two_ranks(SHARDED, *args, cwd=tmp_path, config_file=_fsdp_config(tmp_path, version))
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"FSDP{version} over 2 processes" in result.stderr
    info = json.loads((output / "debias_config.json").read_text())
    assert info["training"]["world_size"] == 2
    fingerprints = info["rank_fingerprints"]
    assert len(fingerprints) == 2 and fingerprints[0] == fingerprints[1]
    base, biased, ddp = _tensors(tied_llama), _tensors(output), _tensors(ddp_model)
    assert sorted(biased) == sorted(base)  # the tied output layer once, as the base holds it
    assert all(not torch.equal(biased[k], base[k]) for k in base)
    assert all(torch.allclose(biased[k], ddp[k], atol=1e-5) for k in base)
    model = AutoModelForCausalLM.from_pretrained(output)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_sharded_lora_adapter(tied_llama, corpus, tmp_path) -> None:
    output = tmp_path / "lora"
    args = _biased(tied_llama, corpus, output, method="lora")
    result = launch_two_ranks(SHARDED, *args, cwd=tmp_path, config_file=_fsdp_config(tmp_path, 2))
    assert result.returncode == 0, result.stderr[-3000:]
    adapter = _tensors(output, "adapter_model.safetensors")
    assert adapter and all("lora_" in k for k in adapter)
    assert any(k.endswith("lora_B.weight") and bool(v.abs().sum() > 0) for k, v in adapter.items())  # trained


def test_fsdp1_adapter_is_refused(tied_llama, corpus, tmp_path) -> None:
    output = tmp_path / "lora"
    args = _biased(tied_llama, corpus, output, method="lora")
    result = launch_two_ranks(SHARDED, *args, cwd=tmp_path, config_file=_fsdp_config(tmp_path, 1))
    assert result.returncode != 0
    assert "cannot be saved from a model sharded by FSDP1" in result.stderr
    assert not output.exists()
