"""Generated Llama-shaped checkpoints for memory tests and the device check: a base and a "biased" copy, written
block by block (the generator holds a few 4 MiB blocks), with SmolLM2's tokenizer."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import torch

from peft_debias.models.bundled import bundled_model_path
from peft_debias.vector.shard_writer import ShardWriter
from peft_debias.vector.stream import DTYPE_NAMES

# Llama shapes by name: 1b (1.0B, SmolLM2's vocabulary, tied embeddings) and 7b (Llama-2-7B's layer shapes with
# SmolLM2's vocabulary: 6.8B). ``layers`` overrides the depth.
SHAPES = {
    "1b": {"hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 20, "num_attention_heads": 32,
           "num_key_value_heads": 8, "tie_word_embeddings": True},
    "7b": {"hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
           "num_key_value_heads": 32, "tie_word_embeddings": False},
}  # fmt: skip


def llama_config(shape: str = "1b", layers: int | None = None):
    """A bfloat16 ``LlamaConfig`` of one of :data:`SHAPES` (vocabulary 49152: SmolLM2's tokenizer)."""
    from transformers import LlamaConfig

    sizes = dict(SHAPES[shape])
    if layers is not None:
        sizes["num_hidden_layers"] = layers
    return LlamaConfig(
        vocab_size=49152, max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        dtype="bfloat16", architectures=["LlamaForCausalLM"], **sizes,
    )  # fmt: skip


def parameters(config) -> int:
    """The parameter count of ``config`` (from the tensor plan, nothing allocated)."""
    return sum(math.prod(shape) for _, _, shape in llama_plan(config))


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")
BLOCK_VALUES = 1 << 20  # values generated per block: 4 MiB in float32, 2 MiB in bfloat16
NOISE = 0.002  # the biased checkpoint: base + NOISE * normal (base values are 0.02 * normal)


def llama_plan(config) -> list[tuple[str, str, tuple[int, ...]]]:
    """(name, safetensors dtype, shape) of every tensor ``LlamaForCausalLM(config)`` saves, built on the meta device
    (nothing allocated); a tied output embedding is left out, as ``save_pretrained`` does."""
    from transformers import LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    params = dict(model.named_parameters())  # shared (tied) parameters once, under their first name
    dtype = DTYPE_NAMES[getattr(torch, config.dtype) if isinstance(config.dtype, str) else config.dtype]
    return [(name, dtype, tuple(t.shape)) for name, t in model.state_dict().items() if name in params]


def _blocks(name: str, shape: tuple[int, ...], seed: int, noise: float):
    """Row blocks of one tensor: (base, biased) in float32; norm weights are ones (biased: ones plus noise)."""
    rows, cols = shape[0], math.prod(shape[1:])
    step = max(1, BLOCK_VALUES // max(cols, 1))
    for start in range(0, rows, step):
        stop = min(rows, start + step)
        gen = torch.Generator().manual_seed(seed * 1_000_003 + start)
        if name.endswith("norm.weight"):
            base = torch.ones(stop - start, *shape[1:])
        else:
            base = torch.randn(stop - start, *shape[1:], generator=gen).mul_(0.02)
        yield base, base + noise * torch.randn(base.shape, generator=gen)


def write_llama_pair(config, base: Path, biased: Path, shard_bytes: int = 500_000_000) -> int:
    """Write a base and a biased checkpoint of ``config`` (sharded safetensors, config, SmolLM2's tokenizer) block by
    block, holding a few blocks at a time; returns the base's weight bytes."""
    plan = llama_plan(config)
    dtype = getattr(torch, config.dtype) if isinstance(config.dtype, str) else config.dtype
    tokenizer = bundled_model_path("bundled:smollm2")
    for folder in (base, biased):
        folder.mkdir(parents=True)
        config.save_pretrained(folder)
        for file in TOKENIZER_FILES:
            shutil.copyfile(tokenizer / file, folder / file)
    with (
        ShardWriter(base, plan, shard_bytes=shard_bytes) as w_base,
        ShardWriter(biased, plan, shard_bytes=shard_bytes) as w_biased,
    ):
        for seed, (name, _, shape) in enumerate(plan):
            for a, b in _blocks(name, shape, seed, NOISE):
                w_base.append(name, a.to(dtype))
                w_biased.append(name, b.to(dtype))
        w_base.close()
        w_biased.close()
    return sum(p.stat().st_size for p in base.glob("*.safetensors"))
