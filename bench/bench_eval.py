"""Side-by-side timing of the evaluation suite against straightforward reference loops (bench/reference_eval.py).

Same process, same model, same data, thread count set; prints ratios and the agreement of the figures. It
never asserts a timing. Run from the repository root::

    PEFT_DEBIAS_DATA=../shared/data .venv/bin/python bench/bench_eval.py --threads 1

Cases (bundled models):
* SEAT, all gender tests, 100,000 permutation samples, bundled MiniLM: batched encoding of each distinct
  sentence once + vectorised permutation test, against per-test per-sentence encoding + a Python permutation
  loop (sent-bias / bias-bench style).
* CrowS-Pairs masked-LM scoring (gender), bundled MiniLM loaded with its (untrained) MLM head, so only the
  timing and the agreement mean something: all masked copies batched against one forward per masked token.
* Causal scoring (CrowS-Pairs gender), bundled SmolLM2: length-sorted padded batches (a pair's shared prefix
  computed once) against one sentence per forward; ``causal-separate`` compares bias-bench's own procedure
  (the first token from a BOS-only forward, repeated per sentence there, once here).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import reference_eval as ref

from peft_debias.eval.crows import causal_pair_scores, load_crows_pairs, masked_pair_scores
from peft_debias.eval.lm_scoring import mean_pooled_embeddings
from peft_debias.eval.seat import SEAT_AXIS_TESTS, load_seat_test, run_seat
from peft_debias.models.loading import load_model


def _timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def bench_seat(data: Path, n_samples: int) -> dict:
    loaded = load_model("bundled:minilm")
    model, tok = loaded.model, loaded.tokenizer
    tests = [load_seat_test(data / "seat" / f"{name}.jsonl") for name in SEAT_AXIS_TESTS["gender"]]
    mean_pooled_embeddings(model, tok, ["warm up."], progress=False)
    ref.seat_encode(model, tok, ["warm up."])

    def ours():
        def encode(sentences):
            return mean_pooled_embeddings(model, tok, sentences, progress=False)

        return run_seat(encode, tests, axes=["gender"], n_samples=n_samples, seed=0, progress=False)

    def reference():
        out = {}
        rng = np.random.default_rng(0)
        for test in tests:
            raw = json.loads(Path(test.source).read_text())
            sentences = [s for k in ("targ1", "targ2", "attr1", "attr2") for s in raw[k]["examples"]]
            out[test.name] = ref.seat_test(raw, ref.seat_encode(model, tok, sentences), n_samples, rng)
        return out

    mine, t_ours = _timed(ours)
    theirs, t_ref = _timed(reference)
    es_diff = max(abs(mine["tests"][n]["effect_size"] - theirs[n][0]) for n in theirs)
    p_diff = max(abs(mine["tests"][n]["p_value"] - theirs[n][1]) for n in theirs)
    p_max = max(theirs[n][1] for n in theirs)
    se = 2 * np.sqrt(max(p_max * (1 - p_max), 1e-12) / n_samples)
    n_sentences = sum(len(s) for t in tests for s in t.sets().values())
    return {
        "case": f"SEAT gender ({len(tests)} tests, {n_samples} samples), MiniLM",
        "n": f"{n_sentences} sentences ({mine['n_sentences']} distinct)",
        "ours_s": t_ours,
        "reference_s": t_ref,
        "agreement": f"max |dES| {es_diff:.1e}; max |dp| {p_diff:.1e} (2 MC s.e. {se:.1e})",
        "figures": {n: [mine["tests"][n]["effect_size"], mine["tests"][n]["p_value"]] for n in theirs},
    }


def _decisions(ours: np.ndarray, theirs: np.ndarray) -> str:
    a, b = ours[:, 0] > ours[:, 1], theirs[:, 0] > theirs[:, 1]
    ties = np.isclose(theirs[:, 0], theirs[:, 1], rtol=0, atol=1e-6)
    differ = int(np.sum((a != b) & ~ties))
    return (
        f"max |d score| {np.nanmax(np.abs(ours - theirs)):.1e}; decisions differ on {differ} (ties {int(ties.sum())})"
    )


def bench_crows_masked(data: Path, n_pairs: int | None) -> dict:
    loaded = load_model("bundled:minilm", "masked_lm")  # untrained MLM head: timing and agreement only
    model, tok = loaded.model, loaded.tokenizer
    pairs = [p for p in load_crows_pairs(data / "crows_pairs/crows_pairs_anonymized.csv") if p.bias_type == "gender"]
    pairs = pairs[:n_pairs] if n_pairs else pairs
    masked_pair_scores(model, tok, pairs[:2], progress=False)
    ref.crows_masked_pair(model, tok, pairs[0].sent_more, pairs[0].sent_less)
    mine, t_ours = _timed(lambda: masked_pair_scores(model, tok, pairs, batch_size=64, progress=False))
    theirs, t_ref = _timed(
        lambda: np.array([ref.crows_masked_pair(model, tok, p.sent_more, p.sent_less) for p in pairs])
    )
    return {
        "case": "CrowS-Pairs masked-LM scoring (gender), MiniLM + untrained MLM head",
        "n": f"{len(pairs)} pairs",
        "ours_s": t_ours,
        "reference_s": t_ref,
        "agreement": _decisions(mine, theirs),
    }


def bench_causal(data: Path, n_pairs: int | None, batch_size: int, bos: str = "context") -> dict:
    loaded = load_model("bundled:smollm2")
    model, tok = loaded.model, loaded.tokenizer
    pairs = [p for p in load_crows_pairs(data / "crows_pairs/crows_pairs_anonymized.csv") if p.bias_type == "gender"]
    pairs = pairs[:n_pairs] if n_pairs else pairs
    causal_pair_scores(model, tok, pairs[:2], bos=bos, progress=False)
    ref.causal_mean_logprob(model, tok, pairs[0].sent_more, bos)
    mine, t_ours = _timed(lambda: causal_pair_scores(model, tok, pairs, batch_size=batch_size, bos=bos, progress=False))
    theirs, t_ref = _timed(
        lambda: np.array(
            [[ref.causal_mean_logprob(model, tok, s, bos) for s in (p.sent_more, p.sent_less)] for p in pairs]
        )
    )
    how = "[BOS]+sentence" if bos == "context" else "bias-bench's BOS-only forward per sentence"
    return {
        "case": f"causal scoring ({how}), CrowS-Pairs gender, SmolLM2-135M",
        "n": f"{2 * len(pairs)} sentences",
        "ours_s": t_ours,
        "reference_s": t_ref,
        "agreement": _decisions(mine, theirs),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=os.environ.get("PEFT_DEBIAS_DATA", "../shared/data"))
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: steadier on a busy box)")
    parser.add_argument("--n-samples", type=int, default=100_000)
    parser.add_argument("--pairs", type=int, default=None, help="CrowS pairs per case (default: all 262 gender)")
    parser.add_argument("--batch-size", type=int, default=32, help="causal sentences per forward")
    parser.add_argument("--cases", default="seat,crows-masked,causal,causal-separate")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    torch.set_num_threads(args.threads)
    data = Path(args.data_dir)
    cases = {
        "seat": lambda: bench_seat(data, args.n_samples),
        "crows-masked": lambda: bench_crows_masked(data, args.pairs),
        "causal": lambda: bench_causal(data, args.pairs, args.batch_size),
        "causal-separate": lambda: bench_causal(data, args.pairs, args.batch_size, bos="separate"),
    }
    rows = []
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {os.cpu_count()} CPUs")
    for name in args.cases.split(","):
        row = cases[name]()
        row["ratio"] = row["reference_s"] / row["ours_s"]
        rows.append(row)
        print(
            f"{row['case']}: {row['n']}: ours {row['ours_s']:.2f} s, reference {row['reference_s']:.2f} s, "
            f"{row['ratio']:.1f}x faster; {row['agreement']}",
            flush=True,
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
