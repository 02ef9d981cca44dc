"""Speed and memory of ``peft-debias eval``, side by side with per-sentence reference loops, in one run.

Same process, same models and data, one torch thread by default; it prints ratios and the agreement of the figures,
never asserts a timing. Run from the repository root::

    PEFT_DEBIAS_DATA=../shared/data OMP_NUM_THREADS=1 .venv/bin/python bench/bench_eval_speed.py

Cases:
* ``seat``: SEAT, all 50 tests, bundled MiniLM: ``run_seat`` (each distinct sentence encoded once in token-budget
  batches, one cosine table per test) against bias-bench's loop (each test's sentences one per forward, a Python
  cosine table and permutation loop);
* ``crows``: CrowS-Pairs gender, causal scoring on bundled SmolLM2, against one sentence per forward;
* ``stereoset``: StereoSet gender intrasentence, causal, SmolLM2, against one sentence per forward;
* ``bf16``: ``--dtype bf16`` against fp32: CrowS-Pairs gender decisions that flip (fp32 head, and an all-bf16
  head for contrast), StereoSet decisions, SEAT effect-size differences on MiniLM, timings;
* ``cli``: the whole ``peft-debias eval --model bundled:minilm --benchmarks seat --threads 1`` in a subprocess,
  fp32 and bf16: wall time and peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_eval
import reference_eval as ref

import peft_debias.eval.lm_head as lm_head
from peft_debias.eval.crows import causal_pair_scores, load_crows_pairs
from peft_debias.eval.lm_scoring import mean_pooled_embeddings
from peft_debias.eval.seat import SETS, run_seat, select_seat_tests
from peft_debias.eval.stereoset import causal_item_scores, items_for_axis, load_stereoset
from peft_debias.models.loading import load_model

_timed = bench_eval._timed
_PEAK = textwrap.dedent(
    """
    import resource, subprocess, sys, time
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "peft_debias", *sys.argv[1:]], capture_output=True, text=True)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024
    print(proc.returncode, wall, peak)
    """
)


def _seat_reference(model, tok, tests, n_samples: int) -> dict:
    out = {}
    rng = np.random.default_rng(0)
    for test in tests:
        raw = json.loads(Path(test.source).read_text())
        sentences = [s for k in SETS for s in raw[k]["examples"]]
        out[test.name] = ref.seat_test(raw, ref.seat_encode(model, tok, sentences), n_samples, rng)
    return out


def bench_seat(data: Path, n_samples: int) -> dict:
    loaded = load_model("bundled:minilm")
    model, tok = loaded.model, loaded.tokenizer
    tests = select_seat_tests(data / "seat", "all", ["gender", "race", "religion"])
    mean_pooled_embeddings(model, tok, ["warm up."], progress=False)

    def ours():
        encode = lambda s: mean_pooled_embeddings(model, tok, s, batch_size=64, progress=False)  # noqa: E731
        return run_seat(encode, tests, axes=["gender", "race", "religion"], n_samples=n_samples, progress=False)

    mine, t_ours = _timed(ours)
    theirs, t_ref = _timed(lambda: _seat_reference(model, tok, tests, n_samples))
    es_diff = max(abs(mine["tests"][n]["effect_size"] - theirs[n][0]) for n in theirs)
    exact = [n for n in theirs if mine["tests"][n]["exact"]]
    p_exact = max((abs(mine["tests"][n]["p_value"] - theirs[n][1]) for n in exact), default=0.0)
    return {
        "case": f"SEAT all {len(tests)} tests ({n_samples} samples), MiniLM",
        "n": f"{mine['n_sentences']} distinct sentences",
        "ours_s": t_ours,
        "reference_s": t_ref,
        "agreement": f"max |dES| {es_diff:.1e}; exact p-values ({len(exact)} tests) max |dp| {p_exact:.1e}",
    }


def _smollm2(dtype: torch.dtype = torch.float32):
    loaded = load_model("bundled:smollm2", dtype=dtype)
    return loaded.model, loaded.tokenizer


def _gender_pairs(data: Path) -> list:
    return [p for p in load_crows_pairs(data / "crows_pairs/crows_pairs_anonymized.csv") if p.bias_type == "gender"]


def _gender_items(data: Path) -> list:
    return items_for_axis(load_stereoset(data / "stereoset/stereoset_dev_flat.jsonl"), "gender")


def bench_crows(data: Path) -> dict:
    row = bench_eval.bench_causal(data, None, 32)
    return {**row, "case": "CrowS-Pairs gender, causal ([BOS]+sentence), SmolLM2-135M"}


def bench_stereoset(data: Path) -> dict:
    model, tok = _smollm2()
    items = _gender_items(data)
    causal_item_scores(model, tok, items[:2], progress=False)
    ref.stereoset_causal_items(model, tok, items[:1])
    mine, t_ours = _timed(lambda: causal_item_scores(model, tok, items, progress=False))
    theirs, t_ref = _timed(lambda: ref.stereoset_causal_items(model, tok, items))
    same = int(np.sum((mine[:, 0] > mine[:, 1]) == (theirs[:, 0] > theirs[:, 1])))
    return {
        "case": "StereoSet gender intrasentence, causal ([BOS]+sentence), SmolLM2-135M",
        "n": f"{len(items)} items, {3 * len(items)} sentences",
        "ours_s": t_ours,
        "reference_s": t_ref,
        "agreement": f"max |d score| {np.abs(mine - theirs).max():.1e}; pro decisions equal on {same}/{len(items)}",
    }


def _flips(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.sum((a[:, 0] > a[:, 1]) != (b[:, 0] > b[:, 1])))


def bench_bf16(data: Path) -> list[str]:
    """``--dtype bf16`` against fp32 on the bundled models: decisions that flip, effect-size differences, timings."""
    pairs, items, lines = _gender_pairs(data), _gender_items(data), []
    scores, seconds = {}, {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        model, tok = _smollm2(dtype)
        causal_pair_scores(model, tok, pairs[:2], progress=False)
        scores[name], seconds[name] = _timed(lambda: causal_pair_scores(model, tok, pairs, progress=False))  # noqa: B023
        scores[name + " ss"], seconds[name + " ss"] = _timed(
            lambda: causal_item_scores(model, tok, items, progress=False)  # noqa: B023
        )
    real = lm_head.fp32_head_weight
    lm_head.fp32_head_weight = lambda model: None  # the bf16 head and a log-softmax of bf16 logits, for contrast
    import peft_debias.eval.lm_scoring as lm_scoring

    lm_scoring.fp32_head_weight = lm_head.fp32_head_weight
    try:
        scores["all-bf16"] = causal_pair_scores(model, tok, pairs, progress=False)
    finally:
        lm_head.fp32_head_weight = lm_scoring.fp32_head_weight = real
    fp32, bf16 = scores["fp32"], scores["bf16"]
    margins = np.round(np.sort(np.abs(fp32[:, 0] - fp32[:, 1]))[:3], 4).tolist()
    lines.append(
        f"CrowS gender ({len(pairs)} pairs) decisions flipped vs fp32: bf16 + fp32 head {_flips(bf16, fp32)}, "
        f"all-bf16 {_flips(scores['all-bf16'], fp32)}; max |d mean log-prob| {np.abs(bf16 - fp32).max():.3f}; "
        f"smallest fp32 margins {margins}; time fp32 {seconds['fp32']:.1f} s, bf16 {seconds['bf16']:.1f} s"
    )
    a, b = scores["bf16 ss"], scores["fp32 ss"]
    related = int(np.sum((a[:, :2] > a[:, 2:]) != (b[:, :2] > b[:, 2:])))
    lines.append(
        f"StereoSet gender ({len(items)} items) vs fp32: pro decisions flipped {_flips(a, b)}, related {related}; "
        f"time fp32 {seconds['fp32 ss']:.1f} s, bf16 {seconds['bf16 ss']:.1f} s"
    )
    tests = select_seat_tests(data / "seat", "all", ["gender", "race", "religion"])
    effects, seat_s = {}, {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        loaded = load_model("bundled:minilm", dtype=dtype)
        encode = lambda s: mean_pooled_embeddings(loaded.model, loaded.tokenizer, s, progress=False)  # noqa: B023, E731
        out, seat_s[name] = _timed(lambda: run_seat(encode, tests, axes=[], n_samples=1000, progress=False))  # noqa: B023
        effects[name] = np.array([out["tests"][t.name]["effect_size"] for t in tests])
    diff = np.abs(effects["bf16"] - effects["fp32"])
    lines.append(
        f"SEAT MiniLM ({len(tests)} tests) |effect size bf16 - fp32|: max {diff.max():.4f}, mean {diff.mean():.4f}; "
        f"time fp32 {seat_s['fp32']:.1f} s, bf16 {seat_s['bf16']:.1f} s"
    )
    return lines


def bench_cli(data: Path) -> list[str]:
    """Wall time and peak RSS of the whole command, each in a fresh process."""
    lines = []
    env = dict(os.environ, OMP_NUM_THREADS="1", PEFT_DEBIAS_DATA=str(data), HF_HUB_OFFLINE="1")
    for dtype in ("fp32", "bf16"):
        args = ["eval", "--model", "bundled:minilm", "--benchmarks", "seat", "--threads", "1", "--no-progress"]
        args += ["--dtype", dtype]
        done = subprocess.run([sys.executable, "-c", _PEAK, *args], capture_output=True, text=True, env=env)
        code, wall, peak = done.stdout.split()
        lines.append(f"peft-debias {' '.join(args)}: exit {code}, wall {float(wall):.1f} s, peak RSS {peak} MiB")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("PEFT_DEBIAS_DATA", "../shared/data"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on a busy box)")
    parser.add_argument("--n-samples", type=int, default=100_000, help="SEAT permutation samples")
    parser.add_argument("--cases", default="seat,crows,stereoset,bf16,cli")
    args = parser.parse_args()
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    torch.set_num_threads(args.threads)
    data = Path(args.data_dir)
    import transformers

    print(
        f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
        f"numpy {np.__version__}; {torch.get_num_threads()} torch thread(s), {os.cpu_count()} CPUs",
        flush=True,
    )
    rows = {"seat": lambda: bench_seat(data, args.n_samples), "crows": lambda: bench_crows(data)}
    rows["stereoset"] = lambda: bench_stereoset(data)
    for name in args.cases.split(","):
        if name in rows:
            row = rows[name]()
            print(
                f"{row['case']}: {row['n']}: ours {row['ours_s']:.2f} s, reference {row['reference_s']:.2f} s, "
                f"{row['reference_s'] / row['ours_s']:.1f}x; {row['agreement']}",
                flush=True,
            )
        else:
            for line in {"bf16": bench_bf16, "cli": bench_cli}[name](data):
                print(line, flush=True)


if __name__ == "__main__":
    main()
