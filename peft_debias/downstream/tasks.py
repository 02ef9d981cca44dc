"""Downstream tasks: an explicit registry of what to train on, what to test on and how to score it.

* ``winobias`` (Zhao et al. 2018; ``<data-dir>/winobias``, MIT): which of the two occupations a sentence names does
  its marked pronoun refer to? Trained on the *pro*-stereotyped dev sentences (type 1 + 2), as skewed as real task
  data, plus ``anti_share`` of the anti-stereotyped ones; tested on the pro- and anti-stereotyped test sentences.
  Scores: :func:`peft_debias.eval.winobias.winobias_metrics` (accuracy pro / anti, their gap, TPR-GAP by pronoun
  gender), in percent.
* ``csv``: rows with text, label and group columns from CSV/JSONL files or a Hub dataset (``LabHC/bias_in_bios``:
  ``hard_text``, ``profession``, ``gender`` 0/1 = male/female). Scores: accuracy and macro F1 in percent, TPR-GAP
  (RMS over classes, with the per-class gaps) between the two ``groups``.
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft_debias.core.data_dir import resolve_data_dir
from peft_debias.core.errors import DebiasError, one_line
from peft_debias.downstream.config import DownstreamConfig
from peft_debias.eval import fairness
from peft_debias.eval.winobias import load_winobias, winobias_metrics

BIAS_IN_BIOS = {"text": "hard_text", "label": "profession", "group": "gender"}
BIAS_IN_BIOS_GROUPS = {0: "male", 1: "female"}


@dataclass
class Example:
    """One classification example."""

    text: str
    label: Any
    group: str
    stereotype: str | None = None  # winobias: "pro" or "anti"


@dataclass
class TaskData:
    """What a run needs from its task: rows, the label set and the scoring function."""

    train: list[Example]
    test: list[Example]
    labels: list[Any]  # sorted; the classifier's output i is labels[i]
    score: Callable[[Sequence[Any]], dict[str, Any]]  # predicted labels of ``test`` -> metrics


def _winobias(config: DownstreamConfig) -> TaskData:
    data_dir = resolve_data_dir(config.data_dir)
    train_items = load_winobias(data_dir, "dev", stereotypes=("pro",))
    if config.anti_share > 0:
        anti = load_winobias(data_dir, "dev", stereotypes=("anti",))
        count = round(config.anti_share * len(anti))
        train_items += random.Random(config.seed).sample(anti, count)
    test_items = load_winobias(data_dir, "test")

    def score(predictions: Sequence[Any]) -> dict[str, Any]:
        return winobias_metrics(test_items, [int(p) for p in predictions])

    return TaskData(
        [Example(i.text, i.label, i.gender, i.stereotype) for i in train_items],
        [Example(i.text, i.label, i.gender, i.stereotype) for i in test_items],
        [0, 1],
        score,
    )


def _read_file(path: Path) -> list[dict[str, Any]]:
    try:
        if path.suffix.lower() == ".csv":
            with open(path, newline="", encoding="utf-8") as fh:
                return list(csv.DictReader(fh))
        if path.suffix.lower() in (".jsonl", ".json"):
            return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as err:
        raise DebiasError(f"cannot read {path} ({one_line(err, 120)})", "pass a UTF-8 CSV or JSONL file") from err
    raise DebiasError(f"{path} is neither .csv nor .jsonl", "convert it to CSV or JSONL")


def _hub_rows(source: str, split: str) -> tuple[list[dict[str, Any]], bool]:
    import datasets

    try:
        rows = datasets.load_dataset(source, split=split).to_list()
    except Exception as err:
        raise DebiasError(
            f"cannot load {source} split {split!r} ({one_line(err, 160)})",
            "pass local CSV/JSONL files, or go online / fill the datasets cache first",
        ) from err
    return rows, source.rstrip("/").endswith("bias_in_bios")


def load_rows(source: str, split: str, config: DownstreamConfig) -> list[Example]:
    """Rows with text, label and group from a CSV/JSONL file or a Hub dataset (one-line errors)."""
    columns = {"text": config.text_column, "label": config.label_column, "group": config.group_column}
    group_names: dict[Any, str] = {}
    if Path(source).exists():
        raw = _read_file(Path(source))
    elif "/" in source and not source.startswith((".", "/")):
        raw, bios = _hub_rows(source, split)
        if bios:
            columns, group_names = dict(BIAS_IN_BIOS), BIAS_IN_BIOS_GROUPS
    else:
        raise DebiasError(f"{source} does not exist", "pass an existing CSV/JSONL file or a Hub dataset id")
    rows = []
    for i, row in enumerate(raw):
        missing = [c for c in columns.values() if c not in row]
        if missing:
            raise DebiasError(
                f"{source} row {i + 1} lacks column(s) {', '.join(missing)}",
                "add them, or name the columns with --text-column / --label-column / --group-column",
            )
        group = row[columns["group"]]
        rows.append(Example(str(row[columns["text"]]), row[columns["label"]], str(group_names.get(group, group))))
    if not rows:
        raise DebiasError(f"{source} has no rows", "pass a non-empty dataset")
    return rows


def _normalise_labels(*row_sets: list[Example]) -> list[Any]:
    """Labels as ints when every label looks like one (CSV gives strings); returns the sorted label list."""
    values = [r.label for rows in row_sets for r in rows]
    if all(isinstance(v, int) or (isinstance(v, str) and v.strip().lstrip("-").isdigit()) for v in values):
        for rows in row_sets:
            for r in rows:
                r.label = int(r.label)
    return sorted({r.label for rows in row_sets for r in rows}, key=str)


def _csv(config: DownstreamConfig) -> TaskData:
    if not config.train_file:
        raise DebiasError("the csv task needs a training file", "pass --train-file (and --test-file)")
    train = load_rows(config.train_file, "train", config)
    test = load_rows(config.test_file or config.train_file, "test", config)
    groups = config.group_pair
    for name in groups:
        if not any(r.group == name for r in test):
            seen = ", ".join(sorted({r.group for r in test})[:10])
            raise DebiasError(f"no test row of group {name!r} (groups: {seen})", "pass matching --groups")
    labels = _normalise_labels(train, test)

    def score(predictions: Sequence[Any]) -> dict[str, Any]:
        truth, group = [r.label for r in test], [r.group for r in test]
        gaps = fairness.tpr_gaps(truth, predictions, group, groups)
        return {
            "accuracy": 100 * fairness.accuracy(truth, predictions),
            "macro_f1": 100 * fairness.macro_f1(truth, predictions),
            "tpr_gap": fairness.tpr_gap_rms(truth, predictions, group, groups),
            "tpr_gaps": {str(k): v for k, v in gaps.items()},
            **_fprd(config, test, labels, predictions),
            "n_test": len(test),
        }

    return TaskData(train, test, labels, score)


def _fprd(config: DownstreamConfig, test: list[Example], labels: list[Any], predictions: Sequence[Any]) -> dict:
    """FPRD over the identity terms (the axis words unless given); None with a note when it is undefined."""
    from peft_debias.cda.axes import get_axis

    given = config.identity_terms
    terms = [t.strip() for t in given.split(",")] if given else get_axis(config.axis).terms
    positive: Any = config.positive_label
    if positive is None and set(labels) == {0, 1}:
        positive = 1
    elif positive is not None and isinstance(labels[0], int):
        positive = int(positive)
    if positive is None:
        return {"fprd": None, "fprd_note": "labels are not 0/1: pass --positive-label"}
    truth, texts = [r.label for r in test], [r.text for r in test]
    try:
        per_term = fairness.fprd_per_term(truth, predictions, texts, terms, positive)
    except DebiasError as err:
        return {"fprd": None, "fprd_note": str(err)}
    return {"fprd": float(sum(abs(v) for v in per_term.values())), "fprd_terms": per_term}


TASKS: dict[str, Callable[[DownstreamConfig], TaskData]] = {"winobias": _winobias, "csv": _csv}


def load_task(config: DownstreamConfig) -> TaskData:
    """The rows and scorer of ``config.task``; an unknown task names the known ones."""
    if config.task not in TASKS:
        raise DebiasError(f"unknown task {config.task!r}", f"use one of {', '.join(TASKS)}")
    return TASKS[config.task](config)
