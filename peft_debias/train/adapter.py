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

import hashlib
import json
import logging
import math
import os
import shutil
import time
import types
import typing
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from peft_debias.core.errors import DebiasError

logger = logging.getLogger(__name__)

WORK_SUFFIX = ".peft-debias-work"
# Called as step_callback(step, model, tokenizer) after each optimizer step (see train_adapter).
StepCallback = Callable[[int, Any, Any], None]
# Fields that may change between a run and its resumption.
_RESUME_FREE = {"resume", "overwrite", "log_every", "save_every", "eval_every", "progress"}


@dataclass
class TrainConfig:
    """Everything that defines an upstream training run (YAML recipes use the same keys)."""

    base: str = field(default="", metadata={"help": "base model: Hub id, local folder or bundled alias"})
    axis: str = field(default="gender", metadata={"help": "bias axis name or axis file"})
    corpus: list[str] = field(default_factory=list, metadata={"help": "corpus files, folders or Hub dataset ids"})
    output: str = field(default="", metadata={"help": "output adapter folder"})
    method: str = field(default="lora", metadata={"help": "lora | prefix | prompt | ia3"})
    objective: str | None = field(default=None, metadata={"help": "mlm | clm | counterfactual (default by model)"})
    kind: str | None = field(default=None, metadata={"help": "masked_lm | causal_lm | encoder (default: detect)"})
    max_steps: int | None = field(default=200, metadata={"help": "optimizer steps (wins over epochs)"})
    epochs: float | None = field(default=None, metadata={"help": "passes over the training rows"})
    lr: float = field(default=2e-4, metadata={"help": "peak learning rate"})
    weight_decay: float = 0.0
    scheduler: str = field(default="linear", metadata={"help": "transformers scheduler name"})
    warmup_ratio: float = field(default=0.06, metadata={"help": "fraction of steps spent warming up"})
    max_grad_norm: float = 1.0
    batch_size: int = field(default=8, metadata={"help": "rows per micro-batch per process"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})
    max_length: int = field(default=128, metadata={"help": "tokens per sequence"})
    seed: int = 0
    mixed_precision: str = field(default="no", metadata={"help": "no | fp16 | bf16"})
    eval_fraction: float = field(default=0.05, metadata={"help": "held-out share of the CDA sentences"})
    eval_max_rows: int = field(default=256, metadata={"help": "cap on held-out rows"})
    eval_every: int = 50
    save_every: int = 100
    log_every: int = 10
    world_size: int | None = field(default=None, metadata={"help": "expected number of processes"})
    cda: bool = field(default=True, metadata={"help": "False trains the no-swap control on the same sentences"})
    cda_mode: str = "all"
    keep_ratio: float = 0.0
    names: int = field(
        default=0,
        metadata={"help": "also swap the N most frequent first names of each gender (gender axis; needs faker)"},
    )
    max_sentences: int | None = None
    r: int = 8
    alpha: int = 8
    dropout: float = 0.0
    target_modules: list[str] | None = None
    num_virtual_tokens: int = 24
    prompt_init_text: str | None = None
    mlm_probability: float = 0.15
    whole_word_mask: bool = False
    beta: float = field(default=1.0, metadata={"help": "weight of the counterfactual invariance term"})
    invariance: str = field(
        default="distribution",
        metadata={"help": "counterfactual term: distribution | likelihood | both (causal LMs) | tokens (encoders)"},
    )
    regulariser: str = field(
        default="lm",
        metadata={"help": "counterfactual objective, causal LMs: lm (LM loss) | base (KL to the frozen base model)"},
    )
    revision: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> TrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DebiasError(f"{source} has unknown keys {unknown}", f"use only: {', '.join(sorted(known))}")
        hints = typing.get_type_hints(cls)
        config = cls(**{key: _typed(key, value, hints[key], source) for key, value in data.items()})
        if isinstance(config.corpus, str):
            config.corpus = [config.corpus]
        return config

    def validate(self) -> None:
        from peft_debias.models.methods import get_method

        get_method(self.method)
        checks = [
            (not self.base, "no base model given", "pass --base MODEL"),
            (not self.corpus, "no corpus given", "pass --corpus PATH_OR_ID"),
            (not self.output, "no output folder given", "pass --output DIR"),
            (self.max_steps is None and self.epochs is None, "neither max_steps nor epochs set", "set one"),
            (self.max_steps is not None and self.max_steps < 1, f"max_steps {self.max_steps} < 1", "use >= 1"),
            (
                self.epochs is not None and not 0 < self.epochs < math.inf,
                f"epochs {self.epochs} is not a positive finite number",
                "use e.g. 1 or 0.5",
            ),
            (not (0 < self.lr < 1), f"learning rate {self.lr} is outside (0, 1)", "use e.g. 2e-4"),
            (self.batch_size < 1 or self.grad_accum < 1, "batch size and accumulation must be >= 1", "fix them"),
            (self.max_length < 8, f"max_length {self.max_length} is too short", "use >= 8"),
            (not 0 <= self.eval_fraction < 0.5, f"eval_fraction {self.eval_fraction} outside [0, 0.5)", "e.g. 0.05"),
            (not 0 <= self.warmup_ratio < 1, f"warmup_ratio {self.warmup_ratio} outside [0, 1)", "e.g. 0.06"),
            (
                self.mixed_precision not in ("no", "fp16", "bf16"),
                f"mixed precision {self.mixed_precision!r}",
                "use no, fp16 or bf16",
            ),
            (not math.isfinite(self.beta) or self.beta < 0, f"beta {self.beta} is not a finite number >= 0", "fix it"),
            (
                not 0 <= self.weight_decay < math.inf,
                f"weight_decay {self.weight_decay} is not a finite number >= 0",
                "use e.g. 0 or 0.01",
            ),
            (
                not 0 <= self.max_grad_norm < math.inf,
                f"max_grad_norm {self.max_grad_norm} is not a finite number >= 0",
                "use e.g. 1.0 (0 turns clipping off)",
            ),
            (self.r < 1, f"LoRA rank r {self.r} < 1", "use e.g. 8"),
            (not 0 <= self.dropout < 1, f"dropout {self.dropout} is outside [0, 1)", "use e.g. 0.05"),
            (self.num_virtual_tokens < 1, f"num_virtual_tokens {self.num_virtual_tokens} < 1", "use e.g. 24"),
            (
                not 0 < self.mlm_probability < 1,
                f"mlm_probability {self.mlm_probability} is outside (0, 1)",
                "use e.g. 0.15",
            ),
        ]
        for bad, problem, fix in checks:
            if bad:
                raise DebiasError(problem, fix)
        from transformers import SchedulerType

        schedulers = [t.value for t in SchedulerType]
        if self.scheduler not in schedulers:
            raise DebiasError(f"unknown scheduler {self.scheduler!r}", f"use one of {', '.join(schedulers)}")
        from peft_debias.cda.dataset import CDAConfig
        from peft_debias.train.objectives import INVARIANCES, REGULARISERS

        if self.invariance not in INVARIANCES:
            raise DebiasError(f"unknown invariance {self.invariance!r}", f"use one of {', '.join(INVARIANCES)}")
        if self.regulariser not in REGULARISERS:
            raise DebiasError(f"unknown regulariser {self.regulariser!r}", f"use one of {', '.join(REGULARISERS)}")
        CDAConfig(
            self.axis, self.cda_mode, self.keep_ratio, names=self.names, max_sentences=self.max_sentences
        ).validate()

    def fingerprint(self) -> str:
        data = {k: v for k, v in asdict(self).items() if k not in _RESUME_FREE}
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class TrainResult:
    """What :func:`train_adapter` produced."""

    output: Path
    steps: int
    train_loss: float | None
    eval_loss: float | None
    seconds: float
    seconds_per_step: float
    rank_fingerprints: list[str]
    model: Any = field(default=None, repr=False)  # the trained PeftModel (unwrapped), in eval mode


def _typed(key: str, value: Any, hint: Any, source: str) -> Any:
    """``value`` as the type of field ``key`` (a recipe's YAML gives strings for numbers like ``2e-4``)."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    kind = next(o for o in options if o is not type(None))
    if typing.get_origin(kind) is list:
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list) and all(isinstance(i, str) for i in items):
            return items
        expected = "a list of strings"
    elif kind is bool:
        if isinstance(value, bool):
            return value
        expected = "true or false"
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        expected = "an integer"
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        expected = "a number"
    else:
        if isinstance(value, kind):
            return value
        expected = f"a {getattr(kind, '__name__', kind)}"
    raise DebiasError(f"{source}: {key} is {value!r}, not {expected}", f"write {key} as {expected}")


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
            changed = sorted(
                k for k, v in previous.get("config", {}).items() if k not in _RESUME_FREE and asdict(config).get(k) != v
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

    config = config or TrainConfig()
    for key, value in overrides.items():
        if not hasattr(config, key):
            raise DebiasError(f"unknown training option {key!r}", "see TrainConfig for the options")
        setattr(config, key, value)
    config.validate()
    work = _check_start(config)
    started = time.perf_counter()
    result = run_training(config, work, step_callback=step_callback)
    result.seconds = time.perf_counter() - started
    return result


def expected_world_size(config: TrainConfig) -> int | None:
    """The world size the run was launched for: the config's, else the launcher's ``WORLD_SIZE``."""
    if config.world_size is not None:
        return config.world_size
    env = os.environ.get("WORLD_SIZE")
    return int(env) if env and env.isdigit() else None
