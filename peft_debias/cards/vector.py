"""Model cards for bias vectors and debiased models (``model_cards/*.md.j2`` rendered with huggingface_hub).

Kept free of heavy imports: the streaming merge must not pay for importing transformers or peft.
"""

from __future__ import annotations

from importlib import resources
from pathlib import PurePath
from typing import Any


def _render(template: str, card_data: Any, **values: Any) -> str:
    import jinja2
    from huggingface_hub import ModelCard

    text = (resources.files("peft_debias") / "model_cards" / template).read_text(encoding="utf-8")
    rendered = jinja2.Template(text, undefined=jinja2.StrictUndefined).render(card_data=card_data.to_yaml(), **values)
    ModelCard(rendered)  # checks the YAML header
    return rendered


def _show(value: Any, for_hub: bool) -> str:
    """A model or file name for a card: on the Hub a local path shows by its last part only."""
    from peft_debias.cards.results import hub_base_id

    text = str(value)
    return text if not for_hub or hub_base_id(text) else PurePath(text).name or text


def _base(base: dict[str, Any], for_hub: bool = False) -> tuple[str, str, str | None]:
    from peft_debias.cards.results import hub_base_id

    name = str(base.get("name") or base.get("path") or "unknown")
    hub_id = hub_base_id(base)
    return (
        (hub_id if for_hub and hub_id else _show(name, for_hub)),
        f"https://huggingface.co/{hub_id}" if hub_id else "#",
        hub_id,
    )


def _sources(sources: list[dict[str, Any]], for_hub: bool = False) -> str:
    parts = []
    for s in sources or []:
        kind = s.get("type", "?")
        what = {
            "models": f"{_show(s.get('biased'), for_hub)} - {_show(s.get('pre'), for_hub)}",
            "lora_adapter": f"LoRA adapter {_show(s.get('path'), for_hub)} "
            f"(r={s.get('r')}, alpha={s.get('lora_alpha')})",
            "saved_vector": f"saved vector {_show(s.get('path'), for_hub)}",
        }.get(kind, kind)
        coef = s.get("coefficient", 1.0)
        parts.append(what if coef == 1.0 else f"{coef:g} x ({what})")
    return " + ".join(parts) or "?"


def render_vector_card(data: dict[str, Any], repo_id: str | None = None, *, for_hub: bool = False) -> str:
    """The README of a saved bias vector (``data`` is its ``bias_vector.json``); ``for_hub``: no local paths."""
    from huggingface_hub import ModelCardData

    name, link, hub_id = _base(data.get("base", {}), for_hub)
    axis = data.get("axis") or "social"
    card_data = ModelCardData(
        base_model=hub_id,
        license="apache-2.0",
        tags=["bias-vector", "debiasing", f"bias-axis:{axis}", "task-arithmetic"],
    )
    return _render(
        "bias_vector.md.j2",
        card_data,
        title=f"{axis.capitalize()} bias vector for {name}",
        base_model=name,
        base_link=link,
        axis=axis,
        repo_id=repo_id or f"<user>/{axis}-bias-vector",
        sources=_sources(data.get("sources", []), for_hub),
        fingerprint=data.get("base", {}).get("weights_fingerprint") or "n/a",
        fingerprint_method=data.get("base", {}).get("fingerprint_method") or "n/a",
        tensors=data.get("tensors", "?"),
        params=f"{data.get('params', 0):,}",
        norm=f"{data.get('norm', float('nan')):.4g}",
        exclude=", ".join(f"`{p}`" for p in data.get("exclude", [])) or "nothing",
        excluded=len(data.get("excluded_tensors", [])),
    )


def render_debiased_card(
    data: dict[str, Any],
    *,
    adapter: bool = False,
    repo_id: str | None = None,
    results_table: str | None = None,
    results: dict[str, Any] | None = None,
    for_hub: bool = False,
) -> str:
    """The README of a debiased model folder: a bias vector merged into the base, a negated LoRA adapter
    (``adapter=True``), or PEFTDebias adapters merged by ``peft-debias merge`` (``artifact: merged_model``).

    ``data`` is the folder's ``debias_config.json``; ``results`` (a ``peft-debias eval`` results dict) adds the
    results table and the Hub ``model-index``; ``for_hub`` keeps local paths off the card.
    """
    from huggingface_hub import ModelCardData

    from peft_debias.cards.results import card_results

    name, link, hub_id = _base(data.get("base_model", {}), for_hub)
    axis = data.get("axis") or "social"
    merged = data.get("artifact") == "merged_model"
    vector = data.get("vector", {})
    table, evals = card_results(results)
    tags = ["debiasing", "peftdebias" if merged else "bias-vector", f"bias-axis:{axis}"]
    tags += ["peft", "lora"] if adapter else []
    default_name = f"{PurePath(name).name}-{axis}-debiased"
    card_data = ModelCardData(
        base_model=hub_id,
        license="apache-2.0",
        tags=tags,
        library_name="peft" if adapter else "transformers",
        eval_results=evals,
        model_name=((repo_id or "").split("/")[-1] or default_name) if evals else None,
    )
    architectures = data.get("base_model", {}).get("architectures") or []
    kind = data.get("base_model", {}).get("kind")
    causal = kind == "causal_lm" or any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    masked = kind == "masked_lm" or any(a.endswith("ForMaskedLM") for a in architectures)
    auto = "AutoModelForCausalLM" if causal else "AutoModelForMaskedLM" if masked else "AutoModel"
    adapters = [
        f"{a.get('axis') or '?'} {a.get('method') or '?'} (`{_show(a.get('source'), for_hub)}`)"
        for a in data.get("adapters", [])
    ]
    title = (
        f"{name}, {axis} debiased with merged PEFTDebias adapters"
        if merged
        else f"{name}, {axis} debiased with a bias vector (lambda {data.get('lambda', 0):g})"
    )
    return _render(
        "debiased_model.md.j2",
        card_data,
        title=title,
        adapter=adapter,
        merged=merged,
        axis=axis,
        base_model=name,
        base_link=link,
        lam=f"{data.get('lambda', 0):g}",
        repo_id=repo_id or "<this folder>",
        auto_class=auto,
        sources=_sources(vector.get("sources", []), for_hub),
        merged_adapters=", ".join(adapters) or "?",
        exclude=", ".join(f"`{p}`" for p in vector.get("exclude", [])) or "nothing",
        changed=vector.get("tensors_changed", vector.get("modules", "?")),
        results_table=table or results_table,
    )
