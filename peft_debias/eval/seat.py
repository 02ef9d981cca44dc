"""SEAT, the Sentence Encoder Association Test (May et al., NAACL 2019), as sent-bias and bias-bench run it.

A test file holds one JSON object (despite the ``.jsonl`` name) with four sets, ``targ1`` (X), ``targ2`` (Y),
``attr1`` (A) and ``attr2`` (B), each ``{"category": str, "examples": [str, ...]}``. Each distinct sentence is
encoded once per model (mean-pooled last hidden state, :func:`~peft_debias.eval.lm_scoring.mean_pooled_embeddings`),
duplicates dropped within a set (sent-bias keys encodings by sentence) and across tests. The effect size and the
permutation p-value are :func:`~peft_debias.eval.stats.seat_test_statistics`; the per-axis figure is the mean
absolute effect size over the axis's tests (:data:`SEAT_AXIS_TESTS`, the lists bias-bench uses).

Each test also reports its unnormalised ``association_gap``, ``mean s(X) - mean s(Y)`` in cosine units (the effect
size's numerator), and each axis the mean absolute gap. The effect size divides the gap by the spread of ``s`` over
``X u Y``, so it is scale-free: a model that brings the male and female sentences close together shrinks the gap
and the spread alike, and can leave the effect size where it was. The gap says how much association is left.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from peft_debias.core.errors import DebiasError, one_line
from peft_debias.eval.protocols import Protocol, get_protocol, natural_key
from peft_debias.eval.stats import rng_for, seat_test_statistics, unit_rows

logger = logging.getLogger(__name__)

SETS = ("targ1", "targ2", "attr1", "attr2")
SEAT_AXIS_TESTS: dict[str, tuple[str, ...]] = {
    "gender": ("sent-weat6", "sent-weat6b", "sent-weat7", "sent-weat7b", "sent-weat8", "sent-weat8b"),
    "race": (
        "sent-angry_black_woman_stereotype",
        "sent-angry_black_woman_stereotype_b",
        "sent-weat3",
        "sent-weat3b",
        "sent-weat4",
        "sent-weat5",
        "sent-weat5b",
    ),
    "religion": ("sent-religion1", "sent-religion1b", "sent-religion2", "sent-religion2b"),
}
_SUFFIXES = (".jsonl", ".json")


def axis_of_test(name: str) -> str | None:
    """The axis a SEAT test belongs to (per :data:`SEAT_AXIS_TESTS`), or None."""
    return next((axis for axis, tests in SEAT_AXIS_TESTS.items() if name in tests), None)


@dataclass(frozen=True)
class SeatTest:
    """One SEAT test: its name (file stem), the four sets' distinct examples in file order, and categories."""

    name: str
    targ1: tuple[str, ...]
    targ2: tuple[str, ...]
    attr1: tuple[str, ...]
    attr2: tuple[str, ...]
    categories: dict[str, str] = field(default_factory=dict)
    source: str = ""

    def sets(self) -> dict[str, tuple[str, ...]]:
        return {name: getattr(self, name) for name in SETS}


def parse_seat_test(data: Any, name: str, where: str) -> SeatTest:
    """Validate a decoded test object; errors name the file (``where``) and the offending key."""
    fix = "a SEAT test is one JSON object with targ1, targ2, attr1, attr2, each {category, examples: [str, ...]}"
    if not isinstance(data, dict):
        raise DebiasError(f"SEAT test {where} holds a {type(data).__name__}, not a JSON object", fix)
    sets: dict[str, tuple[str, ...]] = {}
    categories: dict[str, str] = {}
    for key in SETS:
        if key not in data:
            raise DebiasError(f"SEAT test {where} lacks the key '{key}'", fix)
        entry = data[key]
        examples = entry.get("examples") if isinstance(entry, dict) else None
        if not isinstance(examples, list) or not examples:
            raise DebiasError(f"SEAT test {where}: '{key}.examples' is missing or not a non-empty list", fix)
        if not all(isinstance(e, str) and e.strip() for e in examples):
            raise DebiasError(f"SEAT test {where}: '{key}.examples' has an empty or non-string entry", fix)
        sets[key] = tuple(dict.fromkeys(examples))  # distinct, in file order (sent-bias keys them by sentence)
        categories[key] = str(entry.get("category", key))
    if len(sets["targ1"]) != len(sets["targ2"]):
        raise DebiasError(
            f"SEAT test {where}: targ1 has {len(sets['targ1'])} distinct examples and targ2 {len(sets['targ2'])}",
            "the permutation test needs target sets of equal size",
        )
    return SeatTest(name, *(sets[k] for k in SETS), categories=categories, source=where)


def load_seat_test(path: str | Path) -> SeatTest:
    """Read and validate one SEAT test file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise DebiasError(f"SEAT test {path} is not UTF-8 text", "fix the file's encoding") from err
    except ValueError as err:
        raise DebiasError(
            f"SEAT test {path} is not valid JSON ({one_line(err, 120)})",
            "each SEAT file holds one JSON object (despite the .jsonl name)",
        ) from err
    return parse_seat_test(data, path.stem, str(path))


def seat_test_files(folder: Path) -> dict[str, Path]:
    """Test name -> file, for every ``*.jsonl`` / ``*.json`` file in ``folder``."""
    if not folder.is_dir():
        raise DebiasError(f"SEAT folder {folder} not found", "pass a folder of SEAT test files (seat/*.jsonl)")
    files = {p.stem: p for p in sorted(folder.iterdir()) if p.suffix in _SUFFIXES and p.is_file()}
    if not files:
        raise DebiasError(f"no SEAT test files (*.jsonl) in {folder}", "put the SEAT tests there (see seat/SOURCE.md)")
    return files


def select_seat_tests(folder: Path, tests: str | Sequence[str] | None, axes: Iterable[str]) -> list[SeatTest]:
    """The tests to run: ``"all"``/None = every file in ``folder``; ``"axes"`` = the tests of ``axes``; or names."""
    files = seat_test_files(folder)
    if tests is None or tests == "all" or tests == ["all"]:
        names = sorted(files, key=natural_key)  # bias-bench's order: sent-weat3 before sent-weat10
    elif tests == "axes" or tests == ["axes"]:
        names = [t for axis in axes for t in SEAT_AXIS_TESTS[axis]]
    else:
        names = [str(t).removesuffix(".jsonl").removesuffix(".json") for t in tests]
    for name in names:
        if name not in files:
            known = ", ".join(list(files)[:6]) + (", ..." if len(files) > 6 else "")
            raise DebiasError(
                f"SEAT test {name!r} not found: expected {folder / (name + '.jsonl')}",
                f"choose tests present in the folder (e.g. {known}) or 'all' / 'axes'",
            )
    return [load_seat_test(files[name]) for name in dict.fromkeys(names)]


def run_seat(
    encode: Callable[[list[str]], np.ndarray],
    tests: Sequence[SeatTest],
    *,
    axes: Iterable[str],
    n_samples: int = 100_000,
    seed: int = 0,
    progress: bool | None = None,
    protocol: str | Protocol = "default",
) -> dict[str, Any]:
    """Run SEAT tests with one ``encode(sentences) -> (n, d) array`` call over all distinct sentences.

    Returns ``{"protocol", "tests": {name: {...}}, "axes": {axis: {"mean_abs_effect_size", "n_tests", "tests"}},
    "n_samples", "n_sentences"}`` (axes also carry ``mean_abs_association_gap``); each test is ``{"effect_size",
    "association_gap", "p_value", "axis", "exact", "n_permutations", "n", "categories"}``. The p-value of each
    test uses its own seeded generator, so it does not depend on which other tests run; under ``protocol``
    ``bias-bench`` the sampled ones come from one legacy ``RandomState(seed)`` drawn through the tests in order, as
    bias-bench's ``SEATRunner`` draws them (the figures then depend on the tests run before).
    """
    rules = get_protocol(protocol)
    sequence = np.random.RandomState(seed) if rules.seat_rng == "numpy-sequence" else None
    sentences = list(dict.fromkeys(s for t in tests for k in SETS for s in t.sets()[k]))
    embeddings = np.asarray(encode(sentences), dtype=np.float64)
    if embeddings.shape[0] != len(sentences):
        raise ValueError(f"encode returned {embeddings.shape[0]} rows for {len(sentences)} sentences")
    embeddings = unit_rows(embeddings)  # a no-op for SEAT's L2-normalised encodings; once for any others
    row = {s: i for i, s in enumerate(sentences)}
    results: dict[str, dict[str, Any]] = {}
    for test in tqdm(tests, desc="SEAT tests", leave=False, disable=None if progress is None else not progress):
        x, y, a, b = (embeddings[[row[s] for s in test.sets()[k]]] for k in SETS)
        rng = sequence if sequence is not None else rng_for(seed, "seat", test.name)
        stats = seat_test_statistics(x, y, a, b, n_samples=n_samples, rng=rng, unit=True)
        effect, perm = stats.effect_size, stats.permutation
        results[test.name] = {
            "effect_size": effect,
            "association_gap": stats.association_gap,
            "p_value": perm.p_value,
            "axis": axis_of_test(test.name),
            "exact": perm.exact,
            "n_permutations": perm.n_partitions,
            "n": {k: len(v) for k, v in test.sets().items()},
            "categories": dict(test.categories),
        }
        logger.debug("SEAT %s: effect size %.4f, p %.4g", test.name, effect, perm.p_value)
    per_axis: dict[str, dict[str, Any]] = {}
    for axis in axes:
        names = [n for n in SEAT_AXIS_TESTS[axis] if n in results]
        if not names:
            logger.info("SEAT: no test of axis %s was run", axis)
            continue
        values = [abs(results[n]["effect_size"]) for n in names]
        gaps = [abs(results[n]["association_gap"]) for n in names]
        per_axis[axis] = {
            "mean_abs_effect_size": float(np.mean(values)),
            "mean_abs_association_gap": float(np.mean(gaps)),
            "n_tests": len(names),
            "tests": names,
        }
    return {
        "protocol": rules.name,
        "tests": results,
        "axes": per_axis,
        "n_samples": n_samples,
        "n_sentences": len(sentences),
    }
