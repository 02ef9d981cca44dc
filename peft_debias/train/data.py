"""What a run trains on: training rows from CDA records or given sentences, the held-out split, the row order."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from peft_debias.train.config import TrainConfig

T = TypeVar("T")


class RowStream:
    """Deterministic, resumable order over ``n`` rows: epoch ``e`` is a permutation seeded by ``seed + e``."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self._epoch, self._perm = -1, None

    def take(self, start: int, count: int) -> list[int]:
        import torch

        out = []
        for pos in range(start, start + count):
            epoch = pos // self.n
            if epoch != self._epoch:
                self._epoch = epoch
                self._perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
            out.append(int(self._perm[pos % self.n]))
        return out


def training_rows(ds, objective: str, cda: bool) -> list[dict[str, str]]:
    """Training rows from CDA records: LM objectives get each text (and, with CDA, its counterfactuals) as a row;
    the counterfactual objective gets (text, counterfactual) pairs. Without CDA (the control) texts are not swapped.
    ``equalize`` takes template rows (a list) as they are, marked to equalize or (the control) not."""
    if objective == "equalize":
        return [{**row, "equalize": cda} for row in ds]
    rows: list[dict[str, str]] = []
    for text, cfs in zip(ds["text"], ds["counterfactuals"], strict=True):
        if objective == "counterfactual":
            rows += [{"text": text, "counterfactual": cf if cda else text} for cf in (cfs or [text])]
        else:
            rows += [{"text": text}] + ([{"text": cf} for cf in cfs] if cda else [])
    return rows


def split_sentences(sentences: list[T], fraction: float, seed: int, cap: int | None = None) -> tuple[list[T], list[T]]:
    """Seeded shuffle, then (train, held-out): the held-out part is ``fraction`` of the sentences (or of any
    other rows; at most ``cap``)."""
    order = list(range(len(sentences)))
    random.Random(seed).shuffle(order)
    n_eval = int(len(sentences) * fraction) if len(sentences) > 1 else 0
    n_eval = n_eval if cap is None else min(cap, n_eval)
    return [sentences[i] for i in order[n_eval:]], [sentences[i] for i in order[:n_eval]]


@dataclass
class Corpus:
    """The run's text before the objective is known: train and held-out records (``text`` and
    ``counterfactuals`` columns), their statistics, and the axis (None for given sentences)."""

    train: Any
    held_out: Any
    stats: dict[str, Any]
    axis: Any


def read_corpus(config: TrainConfig, texts: list[str] | None, accelerator, cache_dir: Path | None = None) -> Corpus:
    """The run's text: ``texts`` split into train and held-out, or the CDA records of the corpus (their Arrow
    files under ``cache_dir``, default a temporary folder removed at exit)."""
    if config.uses_templates:
        return _template_rows(config)
    if texts is not None:
        train, held_out = split_sentences(texts, config.eval_fraction, config.seed, config.eval_max_rows)
        stats = {"train_sentences": len(train), "held_out_sentences": len(held_out)}
        return Corpus(_records(train), _records(held_out), stats, None)
    from peft_debias.cda.axes import get_axis
    from peft_debias.cda.dataset import build_cda_dataset

    axis = get_axis(config.axis)
    with accelerator.main_process_first():
        progress = config.progress and accelerator.process_index == 0
        ds, cda_stats = build_cda_dataset(config.corpus, config.cda_config(), cache_dir, progress=progress)
    n_eval = min(config.eval_max_rows, int(len(ds) * config.eval_fraction)) if len(ds) > 1 else 0
    return Corpus(ds.select(range(n_eval, len(ds))), ds.select(range(n_eval)), cda_stats.to_dict(), axis)


def _template_rows(config: TrainConfig) -> Corpus:
    """The equalize objective's rows (one per template and person tuple), split into train and held-out."""
    from peft_debias.cda.axes import get_axis
    from peft_debias.train.equalize import load_equalize_data

    axis = get_axis(config.axis)
    data = load_equalize_data(axis, config.objective_options.equalize_data)
    train, held_out = split_sentences(data.rows(), config.eval_fraction, config.seed, config.eval_max_rows)
    return Corpus(train, held_out, data.stats(len(train), len(held_out)), axis)


def _records(texts: list[str]) -> dict[str, list]:
    """Given sentences as CDA records without counterfactuals."""
    return {"text": texts, "counterfactuals": [[] for _ in texts]}
