"""Upstream training (PEFTDebias): one PEFT module per bias axis on CDA text, base frozen, on accelerate.

:func:`train_adapter` checks that the method is a PEFT method and runs the training loop
(:mod:`peft_debias.train.loop`, where its design is described), which writes the adapter artifact
(:mod:`peft_debias.train.artifact`). The config and result types live in :mod:`peft_debias.train.config`.
"""

from __future__ import annotations

from typing import Any

from peft_debias.train.config import FULL, StepCallback, TrainConfig, TrainResult
from peft_debias.train.loop import train


def train_adapter(
    config: TrainConfig | None = None, *, step_callback: StepCallback | None = None, **overrides: Any
) -> TrainResult:
    """Train a debiasing adapter and write the artifact folder (see :mod:`peft_debias.core.provenance`).

    ``overrides`` are flat keys set on ``config`` (or on a default config). Runs the same in a plain process and
    under ``accelerate launch``; only the main process writes. ``step_callback(step, model, tokenizer)``, if given,
    runs on every process after each optimizer step (e.g. to evaluate intermediate checkpoints); the model is put
    back in training mode and the torch RNG state restored afterwards, so a callback that does not change the
    weights leaves the training run unchanged.
    """
    config = (config or TrainConfig()).update(**overrides)
    if config.method == FULL:  # full fine-tuning writes a model, not an adapter: refused with the known methods
        from peft_debias.models.methods import get_method

        get_method(config.method)
    return train(config, step_callback=step_callback)
