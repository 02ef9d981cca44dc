"""A sentence-similarity sanity check: does the encoder still see paraphrases as similar after debiasing?

A counterfactual objective pulls a sentence and its swapped version together; done too hard it can collapse the
embedding space, which would also make SEAT effect sizes small. This check guards against that with hand-written
paraphrase pairs (templates below, filled with people of every class of the axis, so both sides of the axis are
covered):

* ``cosine``: mean cosine of each sentence with its paraphrase;
* ``unrelated``: mean cosine of each sentence with the paraphrases of the *other* templates;
* ``gap``: ``cosine - unrelated`` (a collapsed encoder has a gap near 0, whatever its cosines);
* ``accuracy``: fraction of sentences whose paraphrase is more similar than every paraphrase of another template
  (other fillings of the same template are not counted against it: a debiased encoder should find
  "the man bought a car" and "the woman bought a car" close).

Embeddings are those of SEAT (:func:`~peft_debias.eval.lm_scoring.mean_pooled_embeddings`: mean-pooled last
hidden state, L2-normalised). Compare the figures before (base model) and after (adapter or vector).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

TEMPLATES: tuple[tuple[str, str], ...] = (
    ("The {p} bought a new car yesterday.", "Yesterday, the {p} purchased a new car."),
    ("The {p} is reading a book in the garden.", "In the garden, the {p} is reading a book."),
    ("The {p} cooked dinner for the whole family.", "Dinner for the entire family was cooked by the {p}."),
    ("The {p} could not find the keys this morning.", "This morning the {p} was unable to find the keys."),
    ("The {p} walked to the station in the rain.", "In the rain, the {p} went on foot to the station."),
    ("The {p} fixed the broken window quickly.", "The broken window was quickly repaired by the {p}."),
    ("The {p} won the chess tournament last week.", "Last week the chess tournament was won by the {p}."),
    ("The {p} is afraid of large dogs.", "Large dogs frighten the {p}."),
    ("The {p} answered every question correctly.", "Every question was answered correctly by the {p}."),
    ("The {p} moved to a small town near the sea.", "The {p} relocated to a little town by the sea."),
    ("The {p} forgot to pay the electricity bill.", "The electricity bill was not paid because the {p} forgot."),
    ("The {p} plays the piano every evening.", "Every evening, the {p} practises on the piano."),
)
# People who fill the templates: one tuple per axis, every class of the axis represented equally.
PEOPLE: dict[str, tuple[str, ...]] = {
    "gender": ("man", "woman", "father", "mother", "boy", "girl"),
    "race": ("black student", "white student", "asian student", "black doctor", "white doctor", "asian doctor"),
    "religion": ("jewish teacher", "christian teacher", "muslim teacher", "jewish neighbour", "christian neighbour",
                 "muslim neighbour"),
}  # fmt: skip
_NEUTRAL = ("teacher", "neighbour")


def paraphrase_pairs(axes: Iterable[str] = ("gender",)) -> list[tuple[str, str, int]]:
    """``(sentence, paraphrase, template index)`` for every template and person of the axes (unknown axes get
    neutral people)."""
    people = list(dict.fromkeys(p for axis in axes for p in PEOPLE.get(axis, _NEUTRAL)))
    return [(a.format(p=p), b.format(p=p), t) for t, (a, b) in enumerate(TEMPLATES) for p in people]


def paraphrase_scores(first: np.ndarray, second: np.ndarray, templates: Sequence[int]) -> dict[str, float]:
    """The four figures from row-aligned, L2-normalised embeddings of the sentences and their paraphrases."""
    sims = np.asarray(first, dtype=np.float64) @ np.asarray(second, dtype=np.float64).T
    tmpl = np.asarray(templates)
    other = tmpl[:, None] != tmpl[None, :]
    own = np.diag(sims)
    rival = np.where(other, sims, -np.inf).max(axis=1)
    cosine, unrelated = float(own.mean()), float(sims[other].mean())
    return {
        "cosine": cosine,
        "unrelated": unrelated,
        "gap": cosine - unrelated,
        "accuracy": float(np.mean(own > rival)),
        "n_pairs": len(own),
    }


def paraphrase_check(model: Any, tokenizer: Any, axes: Iterable[str] = ("gender",), batch_size: int = 64) -> dict:
    """Embed the paraphrase pairs with ``model`` and return :func:`paraphrase_scores` (model left in eval mode)."""
    from peft_debias.eval.lm_scoring import mean_pooled_embeddings

    pairs = paraphrase_pairs(axes)
    model.eval()
    first = mean_pooled_embeddings(model, tokenizer, [a for a, _, _ in pairs], batch_size=batch_size, progress=False)
    second = mean_pooled_embeddings(model, tokenizer, [b for _, b, _ in pairs], batch_size=batch_size, progress=False)
    return paraphrase_scores(first, second, [t for _, _, t in pairs])
