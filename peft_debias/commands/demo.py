"""``peft-debias demo``: the main job on the bundled models, offline.

For now (foundation stage) it is an evaluation-free smoke of the whole data path: CDA on WikiText-2 and a
Project Gutenberg novel, then the bundled causal LM (SmolLM2) scores each sentence against its counterfactual
and the bundled sentence encoder (MiniLM) embeds both. Later stages add training, evaluation and bias vectors.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

HELP = "run the main job on the bundled models (offline smoke: CDA + scoring of counterfactual pairs)"
logger = logging.getLogger(__name__)

CORPORA = {"wikitext2": "wikitext2/wiki.test.raw", "gutenberg": "gutenberg/1342_austen_pride_and_prejudice.txt"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", default="demo_output", help="output folder (default: demo_output)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--quick", action="store_true", help="a smaller run (fewer sentences)")
    parser.add_argument("--data-dir", default=None, help="data folder (default: $PEFT_DEBIAS_DATA)")
    parser.add_argument("--axis", default="gender", help="bias axis (default: gender)")
    parser.add_argument("--causal-model", default="bundled:smollm2", help="causal LM (default: bundled:smollm2)")
    parser.add_argument("--encoder-model", default="bundled:minilm", help="sentence encoder (default: bundled:minilm)")
    parser.add_argument("--pairs", type=int, default=None, help="pairs to score (default 256, --quick 32)")


def _step(name: str, started: float, summary: str) -> None:
    print(f"[{time.perf_counter() - started:6.1f}s] {name}: {summary}", flush=True)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..atomic import atomic_output, check_destination
    from ..corpora import CDAConfig, build_cda_dataset, quiet_datasets
    from ..data_dir import data_file, resolve_data_dir
    from ..models import load_model
    from ..scoring import causal_logprobs, sentence_embeddings

    started = time.perf_counter()
    check_destination(args.output, overwrite=args.overwrite)
    data_dir = resolve_data_dir(args.data_dir)
    n_pairs = args.pairs or (32 if args.quick else 256)
    summary: dict = {"axis": args.axis, "quick": args.quick, "corpora": {}}

    with atomic_output(args.output, overwrite=args.overwrite, directory=True) as out:
        pairs: list[tuple[str, str]] = []
        for name, relative in CORPORA.items():
            path = data_file(data_dir, relative)
            config = CDAConfig(axis=args.axis, max_sentences=2000 if args.quick else None, seed=0)
            ds, stats = build_cda_dataset(path, config, progress=True)
            with quiet_datasets():
                ds.to_json(str(out / f"cda_{args.axis}_{name}.jsonl"), lines=True, force_ascii=False)
            summary["corpora"][name] = {"file": str(path), **stats.to_dict()}
            take = min(len(ds), n_pairs // len(CORPORA))
            pairs += [(r["text"], r["counterfactuals"][0]) for r in ds.select(range(take))]
            _step(
                f"cda {name}",
                started,
                f"{stats.sentences_in} sentences read, {stats.sentences_kept} with "
                f"{args.axis} words, {stats.pairs_produced} counterfactuals in {stats.seconds:.1f}s",
            )

        causal = load_model(args.causal_model)
        scores = causal_logprobs(causal.model, causal.tokenizer, [t for p in pairs for t in p], batch_size=16)
        means = [s / max(n, 1) for s, n in scores]
        diffs = [means[2 * i] - means[2 * i + 1] for i in range(len(pairs))]
        summary["causal"] = {
            "model": args.causal_model,
            "pairs": len(pairs),
            "mean_logprob_original": sum(means[0::2]) / len(pairs),
            "mean_logprob_counterfactual": sum(means[1::2]) / len(pairs),
            "original_preferred_pct": 100.0 * sum(d > 0 for d in diffs) / len(pairs),
        }
        _step(
            "causal LM",
            started,
            f"{args.causal_model}: original preferred over counterfactual in "
            f"{summary['causal']['original_preferred_pct']:.1f}% of {len(pairs)} pairs",
        )
        del causal

        encoder = load_model(args.encoder_model, kind="encoder")
        emb = sentence_embeddings(encoder.model, encoder.tokenizer, [t for p in pairs for t in p])
        cosine = (emb[0::2] * emb[1::2]).sum(-1)
        summary["encoder"] = {
            "model": args.encoder_model,
            "pairs": len(pairs),
            "mean_cosine_original_counterfactual": float(cosine.mean()),
            "min_cosine": float(cosine.min()),
        }
        _step(
            "encoder",
            started,
            f"{args.encoder_model}: mean cosine(original, counterfactual) = {float(cosine.mean()):.4f}",
        )

        summary["seconds"] = time.perf_counter() - started
        summary["torch_threads"] = torch.get_num_threads()
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"demo finished in {time.perf_counter() - started:.1f}s -> {Path(args.output) / 'summary.json'}")
    return 0
