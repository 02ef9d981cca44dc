"""The adapter model card: ``model_cards/adapter.md.j2`` rendered for a ``debias_config.json`` dict.

Hub metadata goes in the card's YAML header; evaluation results (when given) add the results table and the
``model-index`` (:mod:`peft_debias.cards.results`).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from peft_debias.cards.results import card_results, hub_base_id
from peft_debias.core.portable import portable_name


def _template(name: str) -> str:
    return (resources.files("peft_debias") / "model_cards" / name).read_text(encoding="utf-8")


def render_adapter_card(
    info: dict[str, Any],
    repo_id: str | None = None,
    results_table: str | None = None,
    *,
    results: dict[str, Any] | None = None,
    for_hub: bool = False,
) -> str:
    """Render ``model_cards/adapter.md.j2`` for a ``debias_config.json`` dict (Hub metadata in the YAML header).

    ``results`` (a ``peft-debias eval`` results dict) adds the results table and the ``model-index``. With
    ``for_hub`` the ``base_model`` metadata only names Hub models (bundled aliases become their Hub ids; a local
    folder is left out, as the Hub refuses paths there).
    """
    import jinja2
    from huggingface_hub import ModelCard, ModelCardData

    base = info["base_model"]
    base_id = base.get("name") or base.get("path")
    hub_id = hub_base_id(base)
    shown = (hub_id if for_hub else None) or portable_name(str(base_id))  # no local paths on a card
    training, method = info["training"], info["method"]
    table, evals = card_results(results)
    tags = ["peft", "debiasing", f"bias-axis:{info['axis']}", method["name"]]
    tags += [f"base_model:adapter:{hub_id}"] if hub_id else []
    datasets = [c["hub_dataset"] for c in info.get("corpus", []) if c.get("hub_dataset")]
    card_data = ModelCardData(
        library_name="peft",
        base_model=hub_id,
        license=info.get("license", "apache-2.0"),
        datasets=datasets or None,
        tags=[*tags, info["objective"]],
        pipeline_tag=None,
        eval_results=evals,
        model_name=_model_name(repo_id, f"{info['axis']}-debias-{method['name']}") if evals else None,
    )
    details = ", ".join(f"{k}={v}" for k, v in method.items() if k not in ("name", "peft_type") and v is not None)
    text = jinja2.Template(_template("adapter.md.j2"), undefined=jinja2.StrictUndefined).render(
        card_data=card_data.to_yaml(),
        title=f"{info['axis'].capitalize()} debiasing {method['name']} adapter for {shown}",
        method=method["name"],
        method_details=details or "defaults",
        peft_type=method.get("peft_type", method["name"]),
        axis=info["axis"],
        classes=" / ".join(info.get("classes", [])),
        n_groups=info.get("n_groups", "?"),
        axis_fingerprint=info.get("axis_fingerprint", "?"),
        base_model=shown,
        base_link=f"https://huggingface.co/{hub_id}" if hub_id else None,
        repo_id=repo_id or f"<user>/{info['axis']}-debias-{method['name']}",
        auto_class={"masked_lm": "AutoModelForMaskedLM", "causal_lm": "AutoModelForCausalLM"}.get(
            base.get("kind", ""), "AutoModel"
        ),
        objective=info["objective"],
        corpus=", ".join(_source(c, for_hub) for c in info.get("corpus", [])) or "?",
        corpus_fingerprints=", ".join(f"`{c['sha256']}`" for c in info.get("corpus", []) if c.get("sha256")),
        cda_summary=_data_summary(info),
        steps=training["steps"],
        batch_size=training["batch_size"],
        grad_accum=training["grad_accum"],
        world_size=training.get("world_size", 1),
        trained_on=trained_on(training),
        lr=training["lr"],
        seed=training["seed"],
        train_loss=_fmt(info.get("metrics", {}).get("train_loss")),
        eval_loss=_fmt(info.get("metrics", {}).get("eval_loss")),
        base_fingerprint=base.get("weights_fingerprint", "?"),
        results_table=table or results_table,
    )
    ModelCard(text)  # validates the YAML header
    return text


def trained_on(training: dict[str, Any]) -> str:
    """Where and how a run trained, for a card: device, the base's dtype, optimizer, mixed precision."""
    if "device" not in training:  # recorded since the device and dtype options
        return "not recorded (float32 weights, AdamW)"
    mixed = training.get("mixed_precision", "no")
    return (
        f"{training['device']}, base weights in {training.get('dtype', 'float32')}, "
        f"{training.get('optimizer', 'adamw')}" + ("" if mixed in (None, "no") else f", mixed precision {mixed}")
    )


def _data_summary(info: dict[str, Any]) -> str:
    """The card's CDA row: the CDA counts, or for ``equalize`` (no CDA) what the templates gave."""
    cda = info.get("cda", {})
    if "equalized" not in cda:  # written by the artifact for template objectives only
        return ", ".join(f"{k} {v}" for k, v in cda.items())
    role = "groups equalized" if cda.get("equalized") else "the control: nothing equalized"
    words = ", ".join(f"{k} {v}" for k, v in cda.get("attribute_words", {}).items())
    return (
        f"none (equalize, {role}): {cda.get('rows')} template rows ({cda.get('held_out_rows')} held out) from "
        f"{cda.get('templates')} templates x {cda.get('persons')} person tuples; attribute words: {words}"
    )


def _source(corpus: dict[str, Any], for_hub: bool) -> str:
    """A corpus source for the card: on the Hub a local file shows by name only (its sha256 identifies it)."""
    source = str(corpus.get("source", "?"))
    return Path(source).name if for_hub and corpus.get("sha256") else source


def _model_name(repo_id: str | None, default: str) -> str:
    """The ``model-index`` name: the repo's name."""
    return (repo_id or "").split("/")[-1] or default


def _fmt(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4f}" if isinstance(value, float) else str(value)
