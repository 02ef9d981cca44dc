"""Hyper-parameters of a PEFT module, kept apart from the method registry so that configs can use them cheaply.

:mod:`peft_debias.models.methods` needs torch; this module does not, so the training config (and with it every
command line) can hold :class:`MethodOptions` without importing torch at start-up.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Prefix / prompt tuning use tens of virtual tokens (PEFTDebias 24, the prompt-tuning papers up to a few hundred);
# thousands only exhaust memory, since every layer attends over them for every sequence.
MAX_VIRTUAL_TOKENS = 512


@dataclass
class MethodOptions:
    """Hyper-parameters of the PEFT module (each method reads the ones it uses)."""

    r: int = field(default=8, metadata={"help": "LoRA rank (at most the model's hidden size)", "min": 1, "max": 4096})
    alpha: int = field(default=8, metadata={"help": "LoRA alpha (scaling = alpha / r)"})
    dropout: float = field(default=0.0, metadata={"help": "LoRA dropout"})
    target_modules: list[str] | None = field(default=None, metadata={"help": "override the per-architecture targets"})
    num_virtual_tokens: int = field(
        default=24,
        metadata={"help": "prefix / prompt length (PEFTDebias: 24); leaves room in the model's positions", "min": 1,
                  "max": MAX_VIRTUAL_TOKENS},
    )  # fmt: skip
    prompt_init_text: str | None = field(default=None, metadata={"help": "initialise prompt tuning from this text"})
