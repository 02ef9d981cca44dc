"""Bias-vector merge: peft-debias's streaming ``vector`` command vs mergekit ``task_arithmetic``, and its scaling.

Part 1 (``--part mergekit``): a generated BERT-base-size checkpoint (110M float32 parameters, the tensors mergekit's
BertForMaskedLM architecture lists) in 5 shards and a "biased" copy (base + noise). Both tools compute
``base - lam * (biased - base)`` (mergekit: ``weight: -lam``, ``normalize: false``; ours with nothing excluded, so
the results are comparable) into 5 output shards. Runs alternate (mergekit, ours, mergekit, ours, ...) so machine
load hits both; each run is a fresh process whose wall time and peak RSS (``os.wait4``) are recorded. The outputs
are then compared tensor by tensor with ``torch.equal``. Targets: ours <= 0.5x mergekit's wall time, <= 0.6x its RSS.

Part 2 (``--part scale``): generated Llama-shaped float32 checkpoints of about 100M, 300M and 1B parameters, merged
by ours alone; reports wall time and peak RSS per size (target: 1B under 2 GiB).

    python bench/bench_vector.py --mergekit /tmp/mergekit-venv/bin/mergekit-yaml --repeats 3
    python bench/bench_vector.py --part scale --sizes 100M,300M,1B

mergekit is installed in a separate virtual environment (it is not a dependency of peft-debias):
``python -m venv /tmp/mergekit-venv && /tmp/mergekit-venv/bin/pip install torch==2.13.0 mergekit``.
Never used as a test; numbers are noisy on a shared machine, read the ratios.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from peft_debias.vector.shard_writer import ShardWriter
from peft_debias.vector.stream import Checkpoint

BERT_BASE = {"hidden": 768, "layers": 12, "intermediate": 3072, "vocab": 30522, "positions": 512, "types": 2}


def bert_plan(c: dict[str, int]) -> list[tuple[str, tuple[int, ...]]]:
    """The tensors of mergekit's BertForMaskedLM architecture at BERT-base sizes."""
    h, inter = c["hidden"], c["intermediate"]
    plan = [
        ("bert.embeddings.word_embeddings.weight", (c["vocab"], h)),
        ("bert.embeddings.position_embeddings.weight", (c["positions"], h)),
        ("bert.embeddings.token_type_embeddings.weight", (c["types"], h)),
        ("bert.embeddings.LayerNorm.weight", (h,)),
        ("bert.embeddings.LayerNorm.bias", (h,)),
    ]
    for i in range(c["layers"]):
        p = f"bert.encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            plan += [(p + name + ".weight", (h, h)), (p + name + ".bias", (h,))]
        plan += [(p + "intermediate.dense.weight", (inter, h)), (p + "intermediate.dense.bias", (inter,))]
        plan += [(p + "output.dense.weight", (h, inter)), (p + "output.dense.bias", (h,))]
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            plan += [(p + norm + ".weight", (h,)), (p + norm + ".bias", (h,))]
    plan += [
        ("bert.pooler.dense.weight", (h, h)),
        ("bert.pooler.dense.bias", (h,)),
        ("cls.predictions.bias", (c["vocab"],)),
    ]
    return plan


def bert_config(c: dict[str, int]) -> dict:
    return {
        "architectures": ["BertForMaskedLM"],
        "model_type": "bert",
        "hidden_size": c["hidden"],
        "num_hidden_layers": c["layers"],
        "num_attention_heads": 12,
        "intermediate_size": c["intermediate"],
        "vocab_size": c["vocab"],
        "max_position_embeddings": c["positions"],
        "type_vocab_size": c["types"],
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
        "tie_word_embeddings": True,
        "dtype": "float32",
    }


LLAMA_SIZES = {  # hidden, layers, intermediate (vocab 32000, untied embeddings)
    "100M": (768, 8, 2048),
    "300M": (1024, 14, 4096),
    "1B": (2048, 17, 5632),
}


def llama_plan(size: str) -> tuple[list[tuple[str, tuple[int, ...]]], dict]:
    h, layers, inter = LLAMA_SIZES[size]
    vocab = 32000
    plan = [("model.embed_tokens.weight", (vocab, h))]
    for i in range(layers):
        p = f"model.layers.{i}."
        plan += [(p + f"self_attn.{n}_proj.weight", (h, h)) for n in ("q", "k", "v", "o")]
        plan += [(p + "mlp.gate_proj.weight", (inter, h)), (p + "mlp.up_proj.weight", (inter, h))]
        plan += [(p + "mlp.down_proj.weight", (h, inter))]
        plan += [(p + "input_layernorm.weight", (h,)), (p + "post_attention_layernorm.weight", (h,))]
    plan += [("model.norm.weight", (h,)), ("lm_head.weight", (vocab, h))]
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": h,
        "num_hidden_layers": layers,
        "num_attention_heads": h // 64,
        "num_key_value_heads": h // 64,
        "intermediate_size": inter,
        "vocab_size": vocab,
        "tie_word_embeddings": False,
        "dtype": "float32",
    }
    return plan, config


def generate(folder: Path, plan, config: dict, *, shards: int | None, noise: float, seed: int = 0) -> Path:
    """Write a float32 checkpoint block by block (the same values for every ``noise``, plus seeded noise)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    total = sum(4 * math.prod(shape) for _, shape in plan)
    shard_bytes = math.ceil(total / shards) if shards else 2 * 10**9
    writer = ShardWriter(folder, [(n, "F32", s) for n, s in plan], shard_bytes=shard_bytes)
    for t, (name, shape) in enumerate(plan):
        rows = shape[0]
        step = max(1, (16 << 20) // (4 * math.prod(shape[1:])))
        for start in range(0, rows, step):
            block_shape = (min(rows, start + step) - start, *shape[1:])
            gen = torch.Generator().manual_seed(seed * 1_000_003 + t * 10_007 + start)
            block = torch.randn(block_shape, generator=gen) * 0.02
            if noise:
                block += noise * torch.randn(block_shape, generator=gen)
            writer.append(name, block)
    writer.close()
    return folder


def measure(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run ``cmd``; return (wall seconds, peak RSS MiB) of that process (and its waited-for children)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024


def ours_cmd(base: Path, biased: Path, lam: float, out: Path, shard_size: str) -> list[str]:
    return [sys.executable, "-m", "peft_debias", "vector", "--base", str(base), "--biased", str(biased),
            "--lambda", str(lam), "--output", str(out), "--no-default-exclude", "--shard-size", shard_size,
            "--no-progress"]  # fmt: skip


def compare_outputs(a: Path, b: Path) -> tuple[int, int]:
    """(tensors compared, tensors that differ) over the tensors both folders hold; key sets must agree."""
    ca, cb = Checkpoint.open(a), Checkpoint.open(b)
    if set(ca.tensors) != set(cb.tensors):
        raise RuntimeError(f"different tensors: {sorted(set(ca.tensors) ^ set(cb.tensors))[:5]}")
    differ = sum(not torch.equal(ca.read(n), cb.read(n)) for n in ca.tensors)
    return len(ca.tensors), differ


def part_mergekit(args, root: Path) -> dict:
    plan = bert_plan(BERT_BASE)
    params = sum(math.prod(s) for _, s in plan)
    base = generate(root / "bert_base", plan, bert_config(BERT_BASE), shards=5, noise=0.0)
    biased = generate(root / "bert_biased", plan, bert_config(BERT_BASE), shards=5, noise=0.001)
    lam = args.lam
    os.sync()
    config = root / "mergekit.yml"
    config.write_text(
        f"merge_method: task_arithmetic\nbase_model: {base}\nmodels:\n  - model: {biased}\n    parameters:\n"
        f"      weight: {-lam}\nparameters:\n  normalize: false\n  lambda: 1.0\ndtype: float32\n"
    )
    shard_bytes = str(math.ceil(4 * params / 5))  # 5 output shards from each tool

    def command(tool: str, out: Path) -> list[str]:
        if tool == "ours":
            return ours_cmd(base, biased, lam, out, shard_bytes)
        # mergekit 0.1.5 documents --out-shard-size in parameters but compares it with tensor bytes
        return [args.mergekit, str(config), str(out), "--no-copy-tokenizer", "--out-shard-size", shard_bytes,
                "--quiet"]  # fmt: skip

    runs: dict[str, list[tuple[float, float]]] = {"mergekit": [], "ours": []}
    for i in range(args.repeats):
        for tool in ("mergekit", "ours"):
            out = root / f"out_{tool}"
            shutil.rmtree(out, ignore_errors=True)
            cmd = command(tool, out)
            wall, rss = measure(cmd)
            runs[tool].append((wall, rss))
            print(f"run {i + 1} {tool:8s}: {wall:6.2f} s, peak RSS {rss:7.1f} MiB", flush=True)
    compared, differ = compare_outputs(root / "out_mergekit", root / "out_ours")
    wall = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
    rss = {k: statistics.median(r for _, r in v) for k, v in runs.items()}
    result = {
        "params": params,
        "lambda": lam,
        "runs": runs,
        "median_wall_s": wall,
        "median_peak_rss_mib": rss,
        "wall_ratio": wall["ours"] / wall["mergekit"],
        "rss_ratio": rss["ours"] / rss["mergekit"],
        "tensors_compared": compared,
        "tensors_different": differ,
        "output_shards": {k: len(list((root / f"out_{k}").glob("*.safetensors"))) for k in runs},
    }
    print(
        f"BERT-base size ({params / 1e6:.1f}M params, 5 shards): ours {wall['ours']:.2f} s / {rss['ours']:.0f} MiB, "
        f"mergekit {wall['mergekit']:.2f} s / {rss['mergekit']:.0f} MiB -> wall ratio {result['wall_ratio']:.2f}, "
        f"RSS ratio {result['rss_ratio']:.2f}; {compared} tensors compared, {differ} differ"
    )
    return result


def part_scale(args, root: Path) -> dict:
    rows = []
    for size in args.sizes.split(","):
        plan, config = llama_plan(size)
        params = sum(math.prod(s) for _, s in plan)
        base = generate(root / f"llama_{size}_base", plan, config, shards=None, noise=0.0)
        biased = generate(root / f"llama_{size}_biased", plan, config, shards=None, noise=0.001)
        out = root / f"llama_{size}_out"
        os.sync()  # flush the generated files first: the merge should not pay for their writeback
        wall, rss = measure(ours_cmd(base, biased, args.lam, out, "2GB"))
        a, b, o = (Checkpoint.open(p) for p in (base, biased, out))
        name = "model.layers.0.mlp.up_proj.weight"
        exact = torch.equal(
            o.read(name, 0, 8), a.read(name, 0, 8) - args.lam * (b.read(name, 0, 8) - a.read(name, 0, 8))
        )
        row = {"size": size, "params": params, "model_gib": 4 * params / 2**30, "wall_s": wall, "peak_rss_mib": rss,
               "spot_check_exact": exact}  # fmt: skip
        rows.append(row)
        print(f"{size:>5s} ({params / 1e9:.3f}B params, {row['model_gib']:.2f} GiB): {wall:6.1f} s, peak RSS "
              f"{rss:6.0f} MiB, exact {exact}", flush=True)  # fmt: skip
        for folder in (base, biased, out):
            shutil.rmtree(folder, ignore_errors=True)
    return {"rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["mergekit", "scale", "all"], default="all")
    parser.add_argument("--mergekit", default="/tmp/mergekit-venv/bin/mergekit-yaml", help="mergekit-yaml path")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--sizes", default="100M,300M,1B")
    parser.add_argument("--lambda", dest="lam", type=float, default=0.5)
    parser.add_argument("--workdir", default="/tmp/bench_vector")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    root = Path(args.workdir)
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    results = {}
    try:
        if args.part in ("mergekit", "all"):
            results["mergekit"] = part_mergekit(args, root)
        if args.part in ("scale", "all"):
            results["scale"] = part_scale(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
