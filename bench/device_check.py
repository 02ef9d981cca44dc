"""The accelerator check: one script for a machine with a GPU (it also runs on the CPU, smaller, as a smoke test).

1. The three benchmarks (CrowS-Pairs, StereoSet, perplexity; gender) on SmolLM2 in float32 and in bfloat16 on the
   device: seconds of each, and how many decisions bfloat16 flips (``--fidelity``'s count).
2. A SmolLM2 LoRA training (``recipes/smollm2-gender-lora.yaml``, ``--train-steps``, 300 by default) on the device:
   seconds per step.
3. The Bias Vector merge (``peft-debias vector --lambda 1``) of a generated Llama-shaped bfloat16 checkpoint pair
   (7B by default): peak RSS and seconds of the command, and the checkpoint's size.

Usage (the data folder as for every command)::

    python bench/device_check.py --device cuda --data-dir ../shared/data --out device_check.json
    python bench/device_check.py --device cpu --train-steps 2 --layers 1 --ppl-tokens 500 --out /tmp/smoke.json

It prints each figure as it comes and writes them all to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))


def benchmarks(device: str, data_dir: str, ppl_tokens: int) -> dict:
    """SmolLM2 in float32 and bfloat16 on ``device``: seconds per benchmark and the decisions bfloat16 flips."""
    from peft_debias.eval.results import PAIRED, compare_results
    from peft_debias.eval.runner import evaluate_bias

    options = {"benchmarks": "crows,stereoset,perplexity", "axes": "gender", "data_dir": data_dir,
               "n_bootstrap": 0, "progress": False, "device": device, "ppl_max_tokens": ppl_tokens}  # fmt: skip
    out, results = {}, {}
    for dtype in ("float32", "bfloat16"):
        results[dtype] = evaluate_bias("bundled:smollm2", dtype=dtype, **options)
        out[dtype] = {"seconds": results[dtype]["seconds"], "placement": results[dtype]["placement"],
                      "perplexity": results[dtype]["perplexity"]["perplexity"]}  # fmt: skip
        print(f"benchmarks {dtype}: {json.dumps(out[dtype]['seconds'])}", flush=True)
    paired = compare_results(results["bfloat16"], results["float32"])
    out["flips"] = {bench: {axis: {"differ": len(f[yes]) + len(f[no]), "of": f["n_common"]}
                            for axis, f in paired.get(bench, {}).items()}
                    for bench, (_, yes, no) in PAIRED.items()}  # fmt: skip
    print(f"bfloat16 vs float32 decisions: {json.dumps(out['flips'])}", flush=True)
    return out


def training(device: str, data_dir: str, steps: int, folder: Path) -> dict:
    """``peft-debias train`` with the SmolLM2 gender LoRA recipe for ``steps`` steps on ``device``."""
    cmd = [sys.executable, "-m", "peft_debias", "train", "--recipe", str(REPO / "recipes/smollm2-gender-lora.yaml"),
           "--max-steps", str(steps), "--device", device, "--save-every", "0", "--eval-every", "0",
           "--output", str(folder / "lora"), "--no-progress"]  # fmt: skip
    started = time.perf_counter()
    run = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PEFT_DEBIAS_DATA": data_dir})
    if run.returncode != 0:
        raise RuntimeError(run.stderr[-2000:])
    record = json.loads((folder / "lora" / "debias_config.json").read_text(encoding="utf-8"))["training"]
    out = {"steps": record["steps"], "seconds_per_step": record["seconds_per_step"], "device": record["device"],
           "wall": time.perf_counter() - started}  # fmt: skip
    print(f"training: {json.dumps(out)}", flush=True)
    return out


def vector_merge(folder: Path, layers: int) -> dict:
    """Generate a Llama-2-7B-shaped bfloat16 pair (``layers`` deep) and time the streamed merge."""
    from support.llama_checkpoint import llama_config, parameters, write_llama_pair

    config = llama_config("7b", layers=layers)
    started = time.perf_counter()
    size = write_llama_pair(config, folder / "pre", folder / "biased", shard_bytes=5_000_000_000)
    made = time.perf_counter() - started
    from test_memory import peak_rss_mib  # the command's own peak RSS, measured from a wrapper process

    started = time.perf_counter()
    peak = peak_rss_mib(
        "vector",
        "--base",
        str(folder / "pre"),
        "--biased",
        str(folder / "biased"),
        "--lambda",
        "1",
        "--output",
        str(folder / "debiased"),
        "--no-progress",
        "--base-model-id",
        "bench/llama-shaped",
    )
    seconds = time.perf_counter() - started
    out = {"parameters": parameters(config), "weight_bytes": size, "generate_seconds": made,
           "merge_seconds": seconds, "merge_peak_rss_mib": peak}  # fmt: skip
    print(f"vector merge: {json.dumps(out)}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--data-dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--out", default="device_check.json")
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--ppl-tokens", type=int, default=20_000, help="perplexity tokens (eval's causal default)")
    parser.add_argument("--layers", type=int, default=32, help="layers of the generated checkpoint (32: 6.7B)")
    parser.add_argument("--work", help="scratch folder (default: a temporary one; needs 3x the checkpoint size)")
    parser.add_argument("--skip-benchmarks", action="store_true")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-vector", action="store_true")
    args = parser.parse_args()
    import torch

    figures: dict = {"device": args.device, "torch": torch.__version__}
    if torch.cuda.is_available():
        figures["gpu"] = torch.cuda.get_device_name(0)
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        if not args.skip_benchmarks:
            figures["benchmarks"] = benchmarks(args.device, args.data_dir, args.ppl_tokens)
        if not args.skip_training:
            figures["training"] = training(args.device, args.data_dir, args.train_steps, Path(tmp))
        if not args.skip_vector:
            figures["vector"] = vector_merge(Path(tmp), args.layers)
    Path(args.out).write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
