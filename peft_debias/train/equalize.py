"""The ``equalize`` objective: template equalization (after Chisca et al. 2024, "Prompt tuning for fairness").

Templates name a person and end in an attribute slot ("{person} worked as a {attribute}."); each axis has tuples
of phrases naming one person per class (("he", "she"), ("the jewish man", "the christian man", "the muslim man")).
Filling one template with one tuple gives k prompts, one per class. At the slot the model predicts a distribution
over the vocabulary; the objective reads it over the template's attribute words (each word by its first token:
the next token for a causal LM, the masked token for a masked LM) plus one **other** bucket holding the rest of the
vocabulary, so the model is not asked to change anything but the balance between the groups.

The target is computed with the frozen base model (the adapter switched off) on the same batch: for a treatment
row, the mean over the k groups of their bucket distributions; for the control (``cda: false``), each group's own
distribution, so the control equalizes nothing. The loss is ``KL(target || model)`` averaged over the groups and
rows. Forward passes run without dropout, so a control adapter that starts as the identity (LoRA, IA3) has nothing
to learn and stays the base model; a prompt or prefix control learns to leave the slots as the base has them.

The templates and the attribute words are package data (``peft_debias/data/equalize/``), written for this package;
none comes from CrowS-Pairs, StereoSet, SEAT or WinoBias (a test checks it). ``equalize_data`` names a JSON file
with an axis's own ``persons`` (one phrase per class, in the axis's class order) and, optionally, its own
``templates`` and ``attributes``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from peft_debias.core.errors import DebiasError, one_line
from peft_debias.core.fingerprints import sha256_text
from peft_debias.models.loading import ModelKind
from peft_debias.train.forward import reference_model, tokenize, without_dropout

PERSON, ATTRIBUTE = "{person}", "{attribute}"


@dataclass(frozen=True)
class EqualizeTemplate:
    """A sentence with one ``{person}`` and one ``{attribute}`` slot, and the attribute list its slot takes."""

    text: str
    attribute: str


@dataclass(frozen=True)
class EqualizeData:
    """What the objective trains on: templates, attribute word lists and one tuple of person phrases per row."""

    axis: str
    classes: tuple[str, ...]
    persons: tuple[tuple[str, ...], ...]
    templates: tuple[EqualizeTemplate, ...]
    attributes: Mapping[str, tuple[str, ...]]
    source: str  # "peft-debias" for the package data, else the file's name

    @property
    def fingerprint(self) -> str:
        """sha256 over the persons, templates and attributes (canonical JSON)."""
        data = {
            "persons": [list(p) for p in self.persons],
            "templates": [[t.text, t.attribute] for t in self.templates],
            "attributes": {k: list(v) for k, v in sorted(self.attributes.items())},
        }
        return sha256_text(json.dumps(data, sort_keys=True))

    def rows(self) -> list[dict[str, Any]]:
        """One row per (template, person tuple): the k prompts (the attribute slot left as ``{attribute}``), the
        attribute list's name and its words."""
        return [
            {
                "prompts": [fill(t.text, person) for person in persons],
                "attribute": t.attribute,
                "words": list(self.attributes[t.attribute]),
            }
            for t in self.templates
            for persons in self.persons
        ]

    def sentences(self) -> Iterator[str]:
        """Every sentence the data can produce (each template, person and attribute word)."""
        for row in self.rows():
            for prompt in row["prompts"]:
                for word in self.attributes[row["attribute"]]:
                    yield prompt.replace(ATTRIBUTE, word)

    def stats(self, n_train: int, n_held_out: int) -> dict[str, Any]:
        """What a trained artifact records about its training data."""
        return {
            "rows": n_train,
            "held_out_rows": n_held_out,
            "templates": len(self.templates),
            "persons": len(self.persons),
            "attribute_words": {k: len(v) for k, v in self.attributes.items()},
            "data": self.source,
            "data_sha256": self.fingerprint,
        }


def fill(template: str, person: str) -> str:
    """The template with ``person`` in its slot; a sentence-initial person is capitalised."""
    text = template.replace(PERSON, person)
    return text[0].upper() + text[1:] if template.startswith(PERSON) else text


def _read_json(path: Path | Any, where: str) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DebiasError(f"cannot read equalize data {where} ({one_line(err, 120)})", "pass a JSON file") from err
    if not isinstance(data, dict):
        raise DebiasError(f"equalize data {where} is not a JSON object", 'write {"persons": [[...], ...]}')
    return data


def _words(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(w, str) and w.strip() for w in value):
        raise DebiasError(f"{where} is not a non-empty list of words", "list words as strings")
    return tuple(dict.fromkeys(w.strip() for w in value))


def _templates(data: dict[str, Any], where: str) -> tuple[tuple[EqualizeTemplate, ...], dict[str, tuple[str, ...]]]:
    raw_attrs, raw_templates = data.get("attributes"), data.get("templates")
    if not isinstance(raw_attrs, dict) or not raw_attrs:
        raise DebiasError(f"{where}: 'attributes' is not a mapping of name -> words", "add attribute lists")
    attributes = {str(name): _words(words, f"{where}: attributes.{name}") for name, words in raw_attrs.items()}
    if not isinstance(raw_templates, list) or not raw_templates:
        raise DebiasError(f"{where}: 'templates' is not a non-empty list", "add templates")
    templates = []
    for item in raw_templates:
        text, attribute = (item.get("text"), item.get("attribute")) if isinstance(item, dict) else (None, None)
        if not isinstance(text, str) or text.count(PERSON) != 1 or text.count(ATTRIBUTE) != 1:
            raise DebiasError(
                f"{where}: template {one_line(item, 80)} needs one {PERSON} and one {ATTRIBUTE}",
                'write {"text": "{person} worked as a {attribute}.", "attribute": "occupations"}',
            )
        if text.index(PERSON) > text.index(ATTRIBUTE):
            raise DebiasError(f"{where}: template {text!r} puts the attribute before the person", "reorder it")
        if attribute not in attributes:
            raise DebiasError(
                f"{where}: template {text!r} names attribute list {attribute!r}",
                f"use one of {', '.join(attributes)}",
            )
        templates.append(EqualizeTemplate(text, attribute))
    return tuple(templates), attributes


def load_equalize_data(axis: Any, path: str | None = None) -> EqualizeData:
    """The equalize data of ``axis`` (a :class:`~peft_debias.cda.axes.BiasAxis`): the package's, or ``path``'s
    ``persons`` with its own ``templates``/``attributes`` where it has them (else the package's)."""
    package = resources.files("peft_debias") / "data" / "equalize"
    shared = _read_json(package / "templates.json", "templates.json")
    if path is not None:
        data, source = _read_json(Path(path), str(path)), Path(path).name
    elif (package / f"{axis.name}.json").is_file():
        data, source = _read_json(package / f"{axis.name}.json", f"{axis.name}.json"), "peft-debias"
    else:
        raise DebiasError(
            f"no equalize persons for axis {axis.name!r} (the package has them for gender, race and religion)",
            'pass --equalize-data FILE with {"persons": [[one phrase per class], ...]}',
        )
    where = source
    own = {k: data[k] for k in ("templates", "attributes") if k in data}
    templates, attributes = _templates({**shared, **own}, where)
    raw = data.get("persons")
    if not isinstance(raw, list) or not raw:
        raise DebiasError(f"{where}: no 'persons' list", "list tuples of phrases, one per class")
    persons = []
    for tup in raw:
        if not isinstance(tup, list) or len(tup) != len(axis.classes) or not all(isinstance(p, str) and p for p in tup):
            raise DebiasError(
                f"{where}: persons entry {one_line(tup, 80)} is not {len(axis.classes)} phrases",
                f"give one phrase per class, in the order {', '.join(axis.classes)}",
            )
        persons.append(tuple(p.strip() for p in tup))
    return EqualizeData(axis.name, tuple(axis.classes), tuple(persons), templates, attributes, source)


def attribute_token_ids(tokenizer, words: Sequence[str], kind: ModelKind) -> list[int]:
    """The first token of each word at the slot (after a space for a causal LM), without repeats."""
    texts = [f" {w}" for w in words] if kind is ModelKind.CAUSAL_LM else list(words)
    pieces = tokenizer(texts, add_special_tokens=False)["input_ids"]
    return list(dict.fromkeys(ids[0] for ids in pieces if ids))


def collate_equalize(rows: Sequence[dict[str, Any]], tokenizer, kind: ModelKind, max_length: int) -> dict[str, Any]:
    """The k prompts of every row as one batch, each prompt's slot position and each row's attribute tokens."""
    groups = len(rows[0]["prompts"])
    prompts = [p for r in rows for p in r["prompts"]]
    if kind is ModelKind.CAUSAL_LM:
        texts = [p[: p.index(ATTRIBUTE)].rstrip() for p in prompts]
        inputs = tokenize(tokenizer, texts, kind, max_length)
        slot = inputs["attention_mask"].sum(1) - 1
    else:
        inputs = tokenize(tokenizer, [p.replace(ATTRIBUTE, tokenizer.mask_token) for p in prompts], kind, max_length)
        is_mask = inputs["input_ids"] == tokenizer.mask_token_id
        if not bool((is_mask.sum(1) == 1).all()):
            raise DebiasError("an equalize prompt lost its mask token", f"raise max_length (now {max_length})")
        slot = is_mask.float().argmax(1)
    words = {r["attribute"]: r["words"] for r in rows}
    ids = {name: attribute_token_ids(tokenizer, listed, kind) for name, listed in words.items()}
    width = max(len(v) for v in ids.values())
    buckets = torch.zeros(len(rows), width, dtype=torch.long)
    valid = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, row in enumerate(rows):
        row_ids = ids[row["attribute"]]
        buckets[i, : len(row_ids)] = torch.tensor(row_ids)
        valid[i, : len(row_ids)] = True
    mix = torch.tensor([bool(r.get("equalize", True)) for r in rows])
    model_inputs = {"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]}
    return {"inputs": model_inputs, "slot": slot, "groups": groups, "buckets": buckets, "valid": valid, "mix": mix}


def bucket_log_probs(slot_logits: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
    """``[rows, groups, words + 1]`` log-probabilities: each attribute word's first token at the slot, then the
    rest of the vocabulary as one bucket (padding words are -inf)."""
    rows, width = batch["buckets"].shape
    log_p = F.log_softmax(slot_logits.double(), -1).view(rows, batch["groups"], -1)
    index = batch["buckets"][:, None, :].expand(rows, batch["groups"], width)
    words = log_p.gather(-1, index).masked_fill(~batch["valid"][:, None, :], float("-inf"))
    mass = torch.logsumexp(words, -1).clamp(max=-1e-12)
    other = torch.log(-torch.expm1(mass))
    return torch.cat([words, other[..., None]], -1)


def equalize_loss(model, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, float]]:
    """``KL(target || model)`` over the attribute buckets, averaged over rows and groups (see the module doc).

    The target comes from the frozen base on the same batch, in float64 like the model's buckets, and the loss is
    written so that its gradient is exactly zero where the model equals its target: an adapter that is still the
    identity (LoRA, IA3 at the start; their control throughout) gets no gradient at all. Adam rescales any gradient
    to steps of about the learning rate, so a rounding-level gradient (1e-18) would otherwise grow, step by step,
    into a control that drifts away from the base."""
    inputs, slot = batch["inputs"], batch["slot"]
    positions, width = torch.arange(slot.shape[0], device=slot.device), inputs["input_ids"].shape[1]
    with without_dropout(model):
        log_p = bucket_log_probs(model(**inputs).logits[:, -width:][positions, slot], batch)
        with torch.no_grad(), reference_model(model) as ref:
            log_q = bucket_log_probs(ref(**inputs).logits[:, -width:][positions, slot], batch)
    mean = torch.logsumexp(log_q, 1, keepdim=True) - math.log(batch["groups"])
    log_t = torch.where(batch["mix"][:, None, None], mean.expand_as(log_q), log_q)
    valid = torch.cat([batch["valid"], torch.ones_like(batch["valid"][:, :1])], -1)[:, None, :]
    log_p = torch.where(valid, log_p, torch.zeros_like(log_p))
    t = log_t.exp()
    # KL(t || p) as sum(t (log t - log p) - t + p): the same value (t and p each sum to 1 over the buckets) and
    # the same gradient, but the gradient at the buckets is p - t, exactly zero where the model equals its target
    kl = torch.where(valid, t * (log_t - log_p) - t + log_p.exp(), torch.zeros_like(log_p)).sum(-1)
    loss = kl.mean()
    return loss.float(), {"equalize": float(loss.detach())}
