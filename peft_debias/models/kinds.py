"""Model kinds: what a model predicts (masked tokens, the next token, or only hidden states), told from its config."""

from __future__ import annotations

import enum
from typing import Any

from peft_debias.core.errors import DebiasError


class ModelKind(str, enum.Enum):
    """What a model predicts: masked tokens, the next token, or only hidden states."""

    MASKED_LM = "masked_lm"
    CAUSAL_LM = "causal_lm"
    ENCODER = "encoder"


def detect_kind(config: Any) -> ModelKind:
    """Tell the model kind from ``config.architectures``, else from ``config.model_type``.

    ``*ForMaskedLM`` is masked, ``*ForCausalLM`` / ``*LMHeadModel`` causal, a bare ``*Model`` an encoder.
    Otherwise the model type is looked up in transformers' auto mappings; a type in both the causal- and
    masked-LM mappings (BERT, RoBERTa, ...) counts as causal only if ``config.is_decoder`` is set.
    """
    from transformers.models.auto import modeling_auto

    architectures = list(getattr(config, "architectures", None) or [])
    for arch in architectures:
        if arch.endswith("ForMaskedLM"):
            return ModelKind.MASKED_LM
        if arch.endswith(("ForCausalLM", "LMHeadModel")):
            return ModelKind.CAUSAL_LM
    if any(arch.endswith("Model") for arch in architectures):
        return ModelKind.ENCODER
    model_type = getattr(config, "model_type", None)
    causal = model_type in modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    masked = model_type in modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES
    if causal and (not masked or getattr(config, "is_decoder", False)):
        return ModelKind.CAUSAL_LM
    if masked:
        return ModelKind.MASKED_LM
    if model_type in modeling_auto.MODEL_MAPPING_NAMES:
        return ModelKind.ENCODER
    raise DebiasError(
        f"cannot tell the kind of model type {model_type!r} (architectures {architectures or 'missing'})",
        f"pass kind= one of {', '.join(k.value for k in ModelKind)}",
    )


def as_kind(kind: ModelKind | str) -> ModelKind:
    try:
        return ModelKind(kind)
    except ValueError:
        known = ", ".join(k.value for k in ModelKind)
        raise DebiasError(f"unknown model kind {kind!r}", f"use one of {known}") from None
