"""Shared pieces of the publishing tests (tests/test_publish*.py): file hashes and a results dict that follows the
schema of :mod:`peft_debias.eval`."""

from __future__ import annotations

import hashlib
from pathlib import Path


def folder_hashes(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def sample_results(model: str, adapter: Path | None, shift: float) -> dict:
    """A results dict following the schema of peft_debias.eval (what `peft-debias eval --output` writes)."""
    decisions = {str(i): int((i * 7 + round(shift)) % 3 == 0) for i in range(12)}
    return {
        "schema_version": 1,
        "label": "lora" if adapter else "base",
        "model": model,
        "model_kind": "causal_lm",
        "adapters": [{"path": str(adapter), "peft_type": "LORA", "task_type": "CAUSAL_LM", "merged": False}]
        if adapter
        else [],
        "benchmarks": ["seat", "crows", "stereoset", "perplexity"],
        "axes": ["gender"],
        "config": {},
        "versions": {"peft_debias": "0.1.0"},
        "created": "2025-01-01T00:00:00Z",
        "seconds": {"total": 1.0},
        "seat": {
            "tests": {},
            "axes": {"gender": {"mean_abs_effect_size": 0.62 - shift / 100, "n_tests": 6, "tests": []}},
            "n_samples": 1000,
        },
        "crows": {
            "scoring": "causal",
            "axes": {
                "gender": {
                    "stereotype_score": 57.25 - shift,
                    "ci95": [50.0 - shift, 64.0 - shift],
                    "n": 12,
                    "n_more_preferred": 7,
                    "n_ties": 0,
                    "n_skipped": 0,
                    "stereo": {"stereotype_score": 60.0, "n": 8},
                    "antistereo": {"stereotype_score": 50.0, "n": 4},
                }
            },
            "decisions": {"gender": decisions},
        },
        "stereoset": {
            "scoring": "causal",
            "axes": {
                "gender": {
                    "ss": 60.28 - shift,
                    "lms": 90.0,
                    "icat": 71.5 + shift,
                    "n": 12,
                    "n_targets": 4,
                    "ci95": {"ss": [55.0, 65.0], "lms": [85.0, 95.0], "icat": [65.0, 78.0]},
                }
            },
            "decisions": {"gender": decisions},
        },
        "perplexity": {"perplexity": 25.21 + shift, "kind": "perplexity", "n_tokens": 800, "text": "frankenstein"},
    }


def train_tiny_adapter(base: Path, root: Path, name: str, corpus_lines: list[str], **options) -> Path:
    """A few LoRA steps on a tiny causal LM: a real adapter folder (weights, configs, card) at ``root / name``."""
    from peft_debias.train.adapter import train_adapter
    from peft_debias.train.config import TrainConfig

    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(corpus_lines * 2) + "\n")
    values = dict(max_steps=3, batch_size=4, eval_every=0, save_every=0, progress=False)
    values.update(options)
    train_adapter(TrainConfig(base=str(base), corpus=[str(corpus)], output=str(root / name), **values))
    return root / name
