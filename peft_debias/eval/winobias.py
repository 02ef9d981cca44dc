"""WinoBias (Zhao et al. 2018) as a downstream classification task: which occupation does the pronoun refer to?

Each line of ``winobias/{pro,anti}_stereotyped_type{1,2}.txt.{dev,test}`` is ``<n> <sentence>`` with the gold
mention pair in square brackets: ``[The developer] argued with the designer because [he] did not like the design.``
An item is that sentence without the brackets, the pronoun marked as ``*he*``; its candidates are the first two
occupations it names (from ``male_occupations.txt`` and ``female_occupations.txt``), in order; its label is the index
of the bracketed one (0 or 1); its group is the pronoun's gender.

Metrics (:func:`winobias_metrics`), all in percent: accuracy on the pro- and anti-stereotyped items, their
``gap = accuracy_pro - accuracy_anti`` (WinoBias's measure), overall accuracy, and the TPR-GAP by pronoun gender
(:func:`peft_debias.eval.fairness.tpr_gap_rms`, classes = the two candidate positions).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from peft_debias.core.errors import DebiasError
from peft_debias.eval.fairness import accuracy, tpr_gap_rms

FOLDER = "winobias"
STEREOTYPES = ("pro", "anti")
SPLITS = ("dev", "test")
PRONOUNS = {
    "he": "male", "him": "male", "his": "male", "himself": "male",
    "she": "female", "her": "female", "hers": "female", "herself": "female",
}  # fmt: skip
_BRACKET = re.compile(r"\[([^\]]*)\]")


@dataclass(frozen=True)
class WinoBiasItem:
    """One WinoBias sentence as a two-way classification item."""

    text: str  # the sentence without brackets, the pronoun marked as *pronoun*
    candidates: tuple[str, str]  # the first two occupations named, in order
    label: int  # index in ``candidates`` of the occupation the pronoun refers to
    gender: str  # "male" or "female": the pronoun's
    stereotype: str  # "pro" or "anti"
    type: int  # 1 (needs world knowledge) or 2 (syntax resolves it)
    source: str  # "<file>:<line number>"


def _lines(path: Path) -> list[str]:
    """The lines of a WinoBias file; a one-line error if it is missing."""
    if not path.is_file():
        raise DebiasError(f"{path} is missing", "point --data-dir at a data folder with winobias/ (SOURCE.md)")
    return path.read_text(encoding="utf-8").splitlines()


def _occupations(folder: Path) -> re.Pattern[str]:
    names = []
    for name in ("male_occupations.txt", "female_occupations.txt"):
        names += [line.strip().lower() for line in _lines(folder / name) if line.strip()]
    alternatives = "|".join(re.escape(n) for n in sorted(set(names), key=len, reverse=True))
    return re.compile(rf"\b({alternatives})s?\b", re.IGNORECASE)


def parse_line(line: str, occupations: re.Pattern[str], source: str, stereotype: str, kind: int) -> WinoBiasItem:
    """One ``<n> <sentence>`` line -> a :class:`WinoBiasItem`; a one-line error for a line that does not fit."""
    text = re.sub(r"^\s*\d+\s+", "", line.strip())
    spans = [m.group(1).strip() for m in _BRACKET.finditer(text)]
    referents = [s for s in spans if occupations.search(s)]
    pronoun = next((s for s in spans if s.lower() in PRONOUNS), None)
    names: list[str] = []
    for found in occupations.finditer(_BRACKET.sub(r"\1", text)):
        if found.group(1).lower() not in names:
            names.append(found.group(1).lower())
    candidates = names[:2]
    referent = occupations.search(referents[0]).group(1).lower() if len(referents) == 1 else None
    if len(candidates) < 2 or referent not in candidates or pronoun is None:
        raise DebiasError(f"{source}: not a WinoBias line ({line.strip()[:80]!r})", "restore the file (SOURCE.md)")
    marked, done = [], False
    for piece in re.split(r"(\[[^\]]*\])", text):
        inner = piece[1:-1].strip() if piece.startswith("[") else None
        if inner is not None and not done and inner.lower() in PRONOUNS:
            marked.append(f"*{inner}*")
            done = True
        else:
            marked.append(inner if inner is not None else piece)
    clean = re.sub(r"\s+", " ", "".join(marked)).strip()
    return WinoBiasItem(
        clean, (candidates[0], candidates[1]), candidates.index(referent), PRONOUNS[pronoun.lower()], stereotype, kind,
        source,
    )


def load_winobias(
    data_dir: str | Path, split: str, stereotypes: Iterable[str] = STEREOTYPES, types: Iterable[int] = (1, 2)
) -> list[WinoBiasItem]:
    """The items of ``split`` (dev or test) for the given stereotypes (pro, anti) and types (1, 2), in file order."""
    folder = Path(data_dir) / FOLDER
    if split not in SPLITS:
        raise DebiasError(f"unknown WinoBias split {split!r}", f"use one of {', '.join(SPLITS)}")
    occupations = _occupations(folder)
    items = []
    for stereotype in stereotypes:
        if stereotype not in STEREOTYPES:
            raise DebiasError(f"unknown WinoBias stereotype {stereotype!r}", f"use one of {', '.join(STEREOTYPES)}")
        for kind in types:
            path = folder / f"{stereotype}_stereotyped_type{kind}.txt.{split}"
            for number, line in enumerate(_lines(path), 1):
                if line.strip():
                    items.append(parse_line(line, occupations, f"{path.name}:{number}", stereotype, kind))
    return items


def winobias_metrics(items: Sequence[WinoBiasItem], predictions: Sequence[int]) -> dict[str, float | int]:
    """Accuracy on pro / anti items, ``gap = accuracy_pro - accuracy_anti``, overall accuracy and TPR-GAP by
    pronoun gender, all in percent; ``n_test`` the number of items."""
    if len(items) != len(predictions):
        raise DebiasError(f"{len(predictions)} predictions for {len(items)} items", "predict every item once")
    out: dict[str, float | int] = {}
    for stereotype in STEREOTYPES:
        rows = [i for i, item in enumerate(items) if item.stereotype == stereotype]
        if not rows:
            raise DebiasError(f"no {stereotype}-stereotyped item to score", "evaluate on both pro and anti items")
        out[f"accuracy_{stereotype}"] = 100 * accuracy([items[i].label for i in rows], [predictions[i] for i in rows])
    out["gap"] = out["accuracy_pro"] - out["accuracy_anti"]
    labels = [item.label for item in items]
    out["accuracy"] = 100 * accuracy(labels, list(predictions))
    out["tpr_gap"] = tpr_gap_rms(labels, list(predictions), [item.gender for item in items])
    out["n_test"] = len(items)
    return out
