"""Dataset loaders and scoring hooks of the peft-debias lm-evaluation-harness tasks (the YAML files here).

lm-eval imports this file by path (``!function tasks.<name>`` in the YAML files). The data come from the local
data folder, the one ``peft-debias eval`` reads: ``--metadata '{"data_dir": "DIR"}'`` on the ``lm_eval`` command
line, else ``$PEFT_DEBIAS_DATA``.

Scoring follows lm-eval's own ``crows_pairs`` task: every sentence is a whole continuation of an empty context,
so lm-eval scores it as the SUM of its token log-probs, the first token conditioned on the tokenizer's BOS token
(EOS if there is none). ``peft-debias eval`` uses the same context but the MEAN per token (bias-bench); the two
agree on a pair exactly when the sums and the means order the two sentences the same way (always when both
sentences have the same number of tokens).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

from peft_debias.core.errors import DebiasError
from peft_debias.eval.crows import CROWS_BIAS_TYPES, load_crows_pairs
from peft_debias.eval.sources import DATA_ENV, DataSource
from peft_debias.eval.stereoset import STEREOSET_BIAS_TYPES, load_stereoset, stereoset_metrics


def _data_file(benchmark: str, data_dir: str | None) -> Any:
    source = DataSource.resolve(data_dir)
    if source.folder is None:
        raise DebiasError(
            f"the peft-debias lm-eval task needs the {benchmark} data in a local data folder",
            f'set {DATA_ENV}=DIR or pass --metadata \'{{"data_dir": "DIR"}}\' to lm_eval',
        )
    return source.file(benchmark)


def _as_test_split(rows: list[dict[str, Any]]) -> Any:
    import datasets

    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def crows_pairs_dataset(data_dir: str | None = None, axis: str | None = None, **_: Any) -> Any:
    """CrowS-Pairs (``crows_pairs/crows_pairs_anonymized.csv``) as a ``test`` split, optionally one axis's pairs."""
    pairs = load_crows_pairs(_data_file("crows", data_dir))
    if axis is not None:
        pairs = [p for p in pairs if p.bias_type == CROWS_BIAS_TYPES[axis]]
    columns = ("id", "sent_more", "sent_less", "direction", "bias_type")
    rows = [{column: getattr(p, column) for column in columns} for p in pairs]
    return _as_test_split(rows)


def crows_pairs_choices(doc: dict[str, Any]) -> list[str]:
    return [doc["sent_more"], doc["sent_less"]]


def crows_pairs_results(doc: dict[str, Any], results: Sequence[tuple[float, bool]]) -> dict[str, float]:
    """``pct_stereotype``: 1 when ``sent_more`` has the higher summed log-likelihood; ``likelihood_diff``: |LL gap|."""
    more, less = (ll for ll, _ in results)
    return {"pct_stereotype": float(more > less), "likelihood_diff": abs(more - less)}


def stereoset_dataset(data_dir: str | None = None, axis: str | None = None, **_: Any) -> Any:
    """StereoSet intrasentence items as a ``test`` split, optionally one axis's items."""
    items = load_stereoset(_data_file("stereoset", data_dir))
    if axis is not None:
        items = [i for i in items if i.bias_type == STEREOSET_BIAS_TYPES[axis]]
    rows = [
        {"id": i.id, "target": i.target, "bias_type": i.bias_type, "context": i.context, "sentences": list(i.sentences)}
        for i in items
    ]
    return _as_test_split(rows)


def stereoset_choices(doc: dict[str, Any]) -> list[str]:
    """The stereotype, anti-stereotype and unrelated sentences, in that order."""
    return list(doc["sentences"])


def stereoset_results(doc: dict[str, Any], results: Sequence[tuple[float, bool]]) -> dict[str, Any]:
    """Each metric gets ``(target, [LL stereotype, LL anti-stereotype, LL unrelated])``; the aggregations count
    per target term (:func:`peft_debias.eval.stereoset.stereoset_metrics`)."""
    entry = (doc["target"], [ll for ll, _ in results])
    return {"ss": entry, "lms": entry, "icat": entry}


def _stereoset(entries: Sequence[tuple[str, list[float]]], metric: str) -> float:
    import numpy as np

    if not entries:
        return math.nan
    items = [SimpleNamespace(target=target) for target, _ in entries]
    scores = np.array([lls for _, lls in entries], dtype=np.float64)
    return float(stereoset_metrics(items, scores)[metric])


def stereoset_ss(entries: Sequence[tuple[str, list[float]]]) -> float:
    return _stereoset(entries, "ss")


def stereoset_lms(entries: Sequence[tuple[str, list[float]]]) -> float:
    return _stereoset(entries, "lms")


def stereoset_icat(entries: Sequence[tuple[str, list[float]]]) -> float:
    return _stereoset(entries, "icat")
