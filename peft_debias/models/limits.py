"""Model limits shared by the training loops (the batched scoring lives in :mod:`peft_debias.eval.lm_scoring`)."""

from __future__ import annotations


def max_positions(model, tokenizer=None, cap: int = 1 << 20) -> int:
    """The longest input the model accepts (position embeddings; tokenizer limit), at most ``cap``."""
    limits = [cap, getattr(getattr(model, "config", None), "max_position_embeddings", None) or cap]
    if tokenizer is not None and 0 < getattr(tokenizer, "model_max_length", cap) < cap:
        limits.append(tokenizer.model_max_length)
    return int(min(limits))
