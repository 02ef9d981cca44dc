"""Model limits shared by the training loops (the batched scoring lives in :mod:`peft_debias.eval.lm_scoring`)."""

from __future__ import annotations

from typing import Any

from peft_debias.core.errors import DebiasError

MIN_TOKENS = 8  # the shortest max_length a run accepts: room left for text after the virtual tokens


def max_positions(model, tokenizer=None, cap: int = 1 << 20) -> int:
    """The longest input the model accepts (position embeddings; tokenizer limit), at most ``cap``."""
    limits = [cap, getattr(getattr(model, "config", None), "max_position_embeddings", None) or cap]
    if tokenizer is not None and 0 < getattr(tokenizer, "model_max_length", cap) < cap:
        limits.append(tokenizer.model_max_length)
    return int(min(limits))


def config_positions(config: Any) -> int | None:
    """The number of positions a model config allows (``max_position_embeddings``; GPT-2's ``n_positions``)."""
    value = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    return int(value) if isinstance(value, int) and value > 0 else None


def check_method_fits(
    config: Any, name: str, *, prompt_learning: bool, lora: bool, r: int, num_virtual_tokens: int
) -> None:
    """Refuse PEFT sizes the model ``name`` (its transformers ``config``) cannot hold, before any weight loads:
    prompt learning (prefix, prompt) must leave :data:`MIN_TOKENS` positions for the text after its virtual tokens
    (they take positions too), and a LoRA rank above the hidden size adds parameters but no rank."""
    positions = config_positions(config)
    if prompt_learning and positions is not None and num_virtual_tokens > positions - MIN_TOKENS:
        raise DebiasError(
            f"num_virtual_tokens {num_virtual_tokens} leaves no room for text in the {positions} positions of {name}",
            f"use num_virtual_tokens <= {max(1, positions - MIN_TOKENS)} (PEFTDebias uses 24)",
        )
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    if lora and isinstance(hidden, int) and r > hidden:
        raise DebiasError(
            f"LoRA rank r {r} is above the hidden size {hidden} of {name}",
            f"use r <= {hidden} (e.g. 8 or 16)",
        )
