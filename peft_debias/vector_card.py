"""Model cards for bias vectors and debiased models (``model_cards/*.md.j2`` rendered with huggingface_hub).

Kept free of heavy imports: the streaming merge must not pay for importing transformers or peft.
"""

from __future__ import annotations

import contextlib
import platform
import re
import time
from importlib import metadata, resources
from typing import Any

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*$")


def light_versions() -> dict[str, str]:
    """Versions of the libraries that shape a vector result, read from package metadata (nothing imported)."""
    from . import __version__

    out = {"peft_debias": __version__, "python": platform.python_version()}
    for package in ("torch", "safetensors", "huggingface_hub", "transformers", "peft"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[package] = metadata.version(package)
    return out


def timestamp() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _render(template: str, card_data: Any, **values: Any) -> str:
    import jinja2
    from huggingface_hub import ModelCard

    text = (resources.files("peft_debias") / "model_cards" / template).read_text(encoding="utf-8")
    rendered = jinja2.Template(text, undefined=jinja2.StrictUndefined).render(card_data=card_data.to_yaml(), **values)
    ModelCard(rendered)  # checks the YAML header
    return rendered


def _base(base: dict[str, Any]) -> tuple[str, str, str | None]:
    name = str(base.get("name") or base.get("path") or "unknown")
    hub_id = name if _HUB_ID.match(name) else None
    return name, f"https://huggingface.co/{name}" if hub_id else "#", hub_id


def _sources(sources: list[dict[str, Any]]) -> str:
    parts = []
    for s in sources or []:
        kind = s.get("type", "?")
        what = {
            "models": f"{s.get('biased')} - {s.get('pre')}",
            "lora_adapter": f"LoRA adapter {s.get('path')} (r={s.get('r')}, alpha={s.get('lora_alpha')})",
            "saved_vector": f"saved vector {s.get('path')}",
        }.get(kind, kind)
        coef = s.get("coefficient", 1.0)
        parts.append(what if coef == 1.0 else f"{coef:g} x ({what})")
    return " + ".join(parts) or "?"


def render_vector_card(data: dict[str, Any], repo_id: str | None = None) -> str:
    """The README of a saved bias vector (``data`` is its ``bias_vector.json``)."""
    from huggingface_hub import ModelCardData

    name, link, hub_id = _base(data.get("base", {}))
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
        sources=_sources(data.get("sources", [])),
        fingerprint=data.get("base", {}).get("weights_fingerprint") or "n/a",
        fingerprint_method=data.get("base", {}).get("fingerprint_method") or "n/a",
        tensors=data.get("tensors", "?"),
        params=f"{data.get('params', 0):,}",
        norm=f"{data.get('norm', float('nan')):.4g}",
        exclude=", ".join(f"`{p}`" for p in data.get("exclude", [])) or "nothing",
        excluded=len(data.get("excluded_tensors", [])),
    )


def render_debiased_card(
    data: dict[str, Any], *, adapter: bool = False, repo_id: str | None = None, results_table: str | None = None
) -> str:
    """The README of a debiased model folder, or of a negated LoRA adapter (``data``: its debias_config.json)."""
    from huggingface_hub import ModelCardData

    name, link, hub_id = _base(data.get("base_model", {}))
    axis = data.get("axis") or "social"
    vector = data.get("vector", {})
    tags = ["debiasing", "bias-vector", f"bias-axis:{axis}"] + (["peft", "lora"] if adapter else [])
    card_data = ModelCardData(
        base_model=hub_id, license="apache-2.0", tags=tags, library_name="peft" if adapter else "transformers"
    )
    architectures = data.get("base_model", {}).get("architectures") or []
    auto = "AutoModelForCausalLM" if any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures) else None
    auto = auto or ("AutoModelForMaskedLM" if any(a.endswith("ForMaskedLM") for a in architectures) else "AutoModel")
    return _render(
        "debiased_model.md.j2",
        card_data,
        title=f"{name}, {axis} debiased with a bias vector (lambda {data.get('lambda', 0):g})",
        adapter=adapter,
        axis=axis,
        base_model=name,
        base_link=link,
        lam=f"{data.get('lambda', 0):g}",
        repo_id=repo_id or "<this folder>",
        auto_class=auto,
        sources=_sources(vector.get("sources", [])),
        exclude=", ".join(f"`{p}`" for p in vector.get("exclude", [])) or "nothing",
        changed=vector.get("tensors_changed", vector.get("modules", "?")),
        results_table=results_table,
    )
