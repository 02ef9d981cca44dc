"""The model card of a fine-tuned model saved with its debiasing adapters (``README.md`` of a downstream folder).

It names the adapters the folder carries (name, axis, method, source, recorded base) and how to reload the model
with them, or without them as a plain transformers model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from peft_debias.cards.results import hub_base_id
from peft_debias.core.portable import portable_name


def _cell(value: Any) -> str:
    text = "?" if value in (None, "") else str(portable_name(str(value)))
    return text.replace("|", "\\|")


def _auto_class(model_class: str) -> str:
    for suffix in ("ForSequenceClassification", "ForTokenClassification", "ForCausalLM", "ForMaskedLM"):
        if model_class.endswith(suffix):
            return f"AutoModel{suffix}"
    return "AutoModel"


def render_downstream_card(info: Mapping[str, Any], adapters: Sequence[Mapping[str, Any]], name: str = "") -> str:
    """Render the card for a ``downstream.json`` dict ``info`` and one record per adapter (``name``, ``axis``,
    ``method``, ``source``, ``base_model``); ``name`` is the folder's name. No local path is written."""
    from huggingface_hub import ModelCard, ModelCardData

    bases = info.get("base_model")
    base_ids = [b for b in (bases if isinstance(bases, list) else [bases]) if hub_base_id(b)]
    axes = sorted({str(a.get("axis")) for a in adapters if a.get("axis")})
    data = ModelCardData(
        library_name="transformers",
        base_model=base_ids[0] if len(base_ids) == 1 else (base_ids or None),
        tags=["peft", "debiasing", "peft-debias", *(f"bias-axis:{axis}" for axis in axes)],
    )
    rows = "\n".join(
        f"| {_cell(a.get('name'))} | {_cell(a.get('axis'))} | {_cell(a.get('method'))} | {_cell(a.get('source'))} "
        f"| {_cell(a.get('base_model'))} | {'yes' if a.get('name') in info.get('active', []) else 'no'} |"
        for a in adapters
    )
    auto = _auto_class(str(info.get("model_class", "")))
    body = f"""
# {name or "Fine-tuned model"} with debiasing adapters

A `{info.get("model_class", "?")}` fine-tuned with frozen debiasing adapters (peft-debias downstream step).
The folder holds the fine-tuned weights (`config.json`, `model.safetensors`), the adapters in `adapters/<name>/`
and `downstream.json` (adapter order and activation).

| adapter | axis | method | source | base | active |
|---|---|---|---|---|---|
{rows}

## Reload with the adapters (as fine-tuned)

```python
from peft_debias import load_downstream

model = load_downstream("<this folder>")                  # inference: everything frozen, eval mode
model = load_downstream("<this folder>", mode="freeze")   # adapters frozen, base and head trainable
```

## Without the adapters

`transformers.{auto}.from_pretrained("<this folder>")` loads the fine-tuned base model and head only; its
outputs differ from the model above, which also runs the adapters.
"""
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
    return str(card)
