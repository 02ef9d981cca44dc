"""Upstream training (PEFTDebias): one PEFT module per bias axis on CDA text, base frozen, on accelerate.

The loop is deliberately explicit so that it is deterministic and resumable on CPU:

* data order: the rows of optimizer step ``s``, micro-batch ``m``, rank ``r`` are a pure function of the seed and
  those indices (per-epoch permutations from seeded generators), and MLM masks come from a generator seeded the same
  way, so a resumed run replays exactly what an uninterrupted run would have seen;
* gradient accumulation is manual (``accelerator.no_sync`` on all but the last micro-batch) and the LR scheduler is
  stepped once per optimizer step (accelerate's prepared scheduler steps once per process);
* checkpoints hold only what changes: the adapter (safetensors), optimizer and scheduler state and the torch RNG
  (loaded back with ``weights_only=True``), not the frozen base.

Under ``accelerate launch`` with several processes each rank trains on its own slice of every batch and DDP
averages the gradients; the trainer refuses to run if the world size differs from the expected one.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from peft_debias.core.errors import DebiasError
from peft_debias.train.config import (
    RESUME_FREE,
    StepCallback,
    TrainConfig,
    TrainResult,
    expected_world_size,
)

logger = logging.getLogger(__name__)

WORK_SUFFIX = ".peft-debias-work"


def work_dir(output: str | Path) -> Path:
    """The sibling folder holding checkpoints and the log while a run is in progress."""
    out = Path(output).absolute()
    return out.parent / f".{out.name}{WORK_SUFFIX}"


def _check_start(config: TrainConfig) -> Path:
    from peft_debias.core.atomic import check_destination

    check_destination(config.output, overwrite=config.overwrite)
    work = work_dir(config.output)
    saved = work / "train_config.json"
    if config.resume:
        if not saved.is_file():
            raise DebiasError(f"nothing to resume at {work}", "run without --resume to start a new run")
        previous = json.loads(saved.read_text())
        if previous.get("fingerprint") != config.fingerprint():
            current = config.to_dict()
            changed = sorted(
                k for k, v in previous.get("config", {}).items() if k not in RESUME_FREE and current.get(k) != v
            )
            raise DebiasError(
                f"--resume with a different config (changed: {', '.join(changed) or '?'})",
                "resume with the original settings, or start over with --overwrite",
            )
    elif work.exists():
        if not saved.is_file():  # killed before its config was written: nothing to resume, nothing lost
            shutil.rmtree(work)
        elif not config.overwrite:
            raise DebiasError(
                f"an interrupted run exists at {work}", "pass --resume to continue it or --overwrite to start over"
            )
        else:
            shutil.rmtree(work)
    return work


def train_adapter(
    config: TrainConfig | None = None, *, step_callback: StepCallback | None = None, **overrides: Any
) -> TrainResult:
    """Train a debiasing adapter and write the artifact folder (see :mod:`peft_debias.core.provenance`).

    Runs the same in a plain process and under ``accelerate launch``; only the main process writes.
    ``step_callback(step, model, tokenizer)``, if given, runs on every process after each optimizer step (e.g. to
    evaluate intermediate checkpoints); the model is put back in training mode and the torch RNG state restored
    afterwards, so a callback that does not change the weights leaves the training run unchanged.
    """
    from peft_debias.train.loop import run_training

    config = (config or TrainConfig()).update(**overrides)
    config.validate()
    work = _check_start(config)
    started = time.perf_counter()
    result = run_training(config, work, step_callback=step_callback)
    result.seconds = time.perf_counter() - started
    return result


__all__ = ["StepCallback", "TrainConfig", "TrainResult", "expected_world_size", "train_adapter", "work_dir"]
