"""What defines a training run: :class:`TrainConfig` with its nested option groups, and what a run returns.

A :class:`TrainConfig` holds the run's own settings (base model, axis, steps, optimiser, logging) and three nested
option groups, each the dataclass its consumer takes:

* ``cda_options`` (:class:`~peft_debias.cda.corpora.CDAConfig`): how the corpus becomes CDA rows;
* ``method_options`` (:class:`~peft_debias.models.options.MethodOptions`): the PEFT module's hyper-parameters;
* ``objective_options`` (:class:`ObjectiveConfig`): the objective's options.

The fields of a group that the run sets itself (the CDA axis and seed, the objective's ``max_length``) are taken
from the run when the group is used. Everything else is also reachable through **flat keys** (``r``, ``beta``,
``cda_mode``, ...): keyword arguments, attributes, recipe keys, command-line options (``--r``), and the content of
``train_config.json`` and of the fingerprint, which are exactly what they were before the options were grouped.
"""

from __future__ import annotations

import copy
import json
import math
import os
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from peft_debias.cda.dataset import CDAConfig
from peft_debias.core.bounds import check_minimums
from peft_debias.core.errors import DebiasError
from peft_debias.core.fingerprints import sha256_text
from peft_debias.models.options import MethodOptions
from peft_debias.train.flat import (
    default_of,
    flat_dataclass,
    flat_keys,
    flat_property,
    group_metadata,
    groups,
    same_names,
    typed,
)

OBJECTIVES = ("mlm", "clm", "counterfactual", "equalize")
# Objectives that train on their own sentences (templates), not on a corpus.
TEMPLATE_OBJECTIVES = ("equalize",)
INVARIANCES = ("distribution", "likelihood", "both", "tokens")
REGULARISERS = ("lm", "base")
# The method that trains every weight of the model itself (no PEFT wrapper): the biased model of a bias vector.
FULL = "full"
# Called as step_callback(step, model, tokenizer) after each optimizer step (see train_adapter).
StepCallback = Callable[[int, Any, Any], None]
# Flat keys added after v0.1, with their defaults: left out of the flat form while at them.
LATER_KEYS: dict[str, Any] = {"equalize_data": None, "device": "auto", "dtype": "float32", "optimizer": "adamw"}
# Flat keys that may change between a run and its resumption.
RESUME_FREE = {"resume", "overwrite", "log_every", "save_every", "eval_every", "progress", "base_model_id", "device"}


@dataclass
class ObjectiveConfig:
    """Options of the objectives (:mod:`peft_debias.train.objectives`)."""

    mlm_probability: float = field(default=0.15, metadata={"help": "share of the tokens masked (mlm)"})
    whole_word_mask: bool = field(default=False, metadata={"help": "mask whole words (mlm)"})
    beta: float = field(default=1.0, metadata={"help": "weight of the counterfactual invariance term"})
    invariance: str = field(
        default="distribution",
        metadata={"help": "counterfactual term: distribution | likelihood | both (causal LMs) | tokens (encoders)"},
    )
    regulariser: str = field(
        default="lm",
        metadata={"help": "counterfactual objective, causal LMs: lm (LM loss) | base (KL to the frozen base model)"},
    )
    equalize_data: str | None = field(
        default=None,
        metadata={"help": "equalize: JSON file of persons (and templates, attributes); default: the package's"},
    )
    max_length: int = field(default=128, metadata={"help": "tokens per sequence"})


@dataclass(init=False)
class TrainConfig:
    """Everything that defines a training run (YAML recipes and the command line use the flat keys).

    Construct it with flat keys (``TrainConfig(lr=1e-3, r=4, cda_mode="one")``), nested groups
    (``TrainConfig(method_options=MethodOptions(r=4))``) or both (flat keys win); read and set flat keys as
    attributes (``config.r`` is ``config.method_options.r``).
    """

    base: str = field(default="", metadata={"help": "base model: Hub id, local folder or bundled alias"})
    base_model_id: str | None = field(
        default=None,
        metadata={"help": "Hub id of the base, recorded in the adapter (default: from --base; needed for a folder)"},
    )
    axis: str = field(default="gender", metadata={"help": "bias axis name or axis file"})
    corpus: list[str] = field(default_factory=list, metadata={"help": "corpus files, folders or Hub dataset ids"})
    output: str = field(default="", metadata={"help": "output adapter folder"})
    method: str = field(default="lora", metadata={"help": "lora | prefix | prompt | ia3"})
    objective: str | None = field(
        default=None, metadata={"help": "mlm | clm | counterfactual | equalize (default by model)"}
    )
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
    seed: int = field(default=0, metadata={"help": "random seed", "min": 0})
    mixed_precision: str = field(default="no", metadata={"help": "no | fp16 | bf16"})
    optimizer: str = field(default="adamw", metadata={"help": "adamw | adamw_8bit | paged_adamw_8bit (bitsandbytes)"})
    device: str = field(default="auto", metadata={"help": "auto (the accelerator if present) | cpu | cuda[:N] | mps"})
    dtype: str = field(default="float32", metadata={"help": "the base's weights: float32 | bfloat16 | float16"})
    eval_fraction: float = field(default=0.05, metadata={"help": "held-out share of the CDA sentences"})
    eval_max_rows: int = field(default=256, metadata={"help": "cap on held-out rows", "min": 0})
    eval_every: int = field(default=50, metadata={"help": "held-out loss every N steps (0: at the end only)", "min": 0})
    save_every: int = field(default=100, metadata={"help": "checkpoint every N steps (0: never)", "min": 0})
    log_every: int = field(default=10, metadata={"help": "log line every N steps", "min": 1})
    world_size: int | None = field(default=None, metadata={"help": "expected number of processes"})
    cda: bool = field(default=True, metadata={"help": "False trains the no-swap control on the same sentences"})
    cda_options: CDAConfig = field(
        default_factory=CDAConfig,
        metadata=group_metadata(
            "how the corpus becomes CDA rows (the axis and seed are the run's)",
            {"cda_mode": "mode", "keep_ratio": "keep_ratio", "names": "names", "max_sentences": "max_sentences"},
            ("axis", "seed"),
            names="also swap the N most frequent first names of each gender (gender axis; needs faker)",
        ),
    )
    method_options: MethodOptions = field(
        default_factory=MethodOptions,
        metadata=group_metadata("hyper-parameters of the PEFT module", same_names(MethodOptions)),
    )
    objective_options: ObjectiveConfig = field(
        default_factory=ObjectiveConfig,
        metadata=group_metadata(
            "options of the objective (max_length is the run's)",
            same_names(ObjectiveConfig, "max_length"),
            ("max_length",),
        ),
    )
    revision: str | None = None
    trust_remote_code: bool = False
    allow_pickle: bool = False
    resume: bool = False
    overwrite: bool = False
    progress: bool = True

    def __init__(self, **values: Any) -> None:
        for f in fields(self):
            setattr(self, f.name, default_of(f))
        for name in _GROUPS:  # whole groups first (copied: a config never shares a group), then flat keys
            if name in values:
                setattr(self, name, replace(values.pop(name)))
        for key, value in values.items():
            if key not in FLAT_KEYS:
                raise TypeError(f"TrainConfig() got an unexpected keyword argument {key!r}")
            setattr(self, key, _listed(key, value))

    def update(self, **values: Any) -> TrainConfig:
        """Set flat keys or whole groups (copied); an unknown key is a :class:`DebiasError`."""
        for key, value in values.items():
            if key not in FLAT_KEYS and key not in _GROUPS:
                raise DebiasError(f"unknown training option {key!r}", "see TrainConfig for the options")
            setattr(self, key, replace(value) if key in _GROUPS else _listed(key, value))
        return self

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "config") -> TrainConfig:
        """A config from flat keys (a recipe), with values checked and converted (YAML gives ``2e-4`` as text);
        a group's name may map to a mapping of its fields."""
        known = [*FLAT_KEYS, *_GROUPS]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise DebiasError(f"{source} has unknown keys {unknown}", f"use only: {', '.join(sorted(known))}")
        values = {
            key: _GROUPS[key].parse(value, source) if key in _GROUPS else typed(key, value, FLAT_KEYS[key].hint, source)
            for key, value in data.items()
        }
        return cls(**values)

    @classmethod
    def flat_options(cls) -> type:
        """A dataclass with one field per flat key (name, type, default and help): the command-line options."""
        return flat_dataclass("TrainOptions", FLAT_KEYS)

    def to_dict(self) -> dict[str, Any]:
        """The flat form (``train_config.json``, the artifact's ``train_config``, the fingerprint): every flat key
        in order (a key added later only when it differs from its default, so that earlier fingerprints, resumable
        runs and cached cells stay valid), then each group's remaining fields that differ from their defaults, under
        the group's name."""
        out = {
            name: copy.deepcopy(getattr(self, name))
            for name in FLAT_KEYS
            if name not in LATER_KEYS or getattr(self, name) != LATER_KEYS[name]
        }
        for name, option_group in _GROUPS.items():
            extra = option_group.extra(getattr(self, name))
            if extra:
                out[name] = extra
        return out

    def fingerprint(self) -> str:
        """A digest of every setting that changes the result (a resumed run must match it)."""
        data = {k: v for k, v in self.to_dict().items() if k not in RESUME_FREE}
        return sha256_text(json.dumps(data, sort_keys=True, default=str))

    def cda_config(self) -> CDAConfig:
        """The CDA options with the run's axis and seed."""
        return replace(self.cda_options, axis=self.axis, seed=self.seed)

    def objective_config(self, max_length: int | None = None) -> ObjectiveConfig:
        """The objective's options with the run's ``max_length`` (or a smaller one the model allows)."""
        return replace(self.objective_options, max_length=self.max_length if max_length is None else max_length)

    def validate(self, *, given_texts: bool = False) -> None:
        """Refuse settings that cannot run. ``given_texts``: the caller supplies the training text itself (no
        corpus, no CDA; the axis is then only a label)."""
        if self.method != FULL:
            from peft_debias.models.methods import get_method

            get_method(self.method)
        check_minimums(self)
        if self.base_model_id is not None:
            from peft_debias.models.base_ids import check_base_model_id

            check_base_model_id(self.base_model_id)
        for bad, problem, fix in [*self._run_checks(given_texts), *self._option_checks()]:
            if bad:
                raise DebiasError(problem, fix)
        from peft_debias.models.placement import check_training_placement
        from peft_debias.train.optim import check_optimizer

        check_training_placement(self.device, self.dtype)
        check_optimizer(self.optimizer)
        from transformers import SchedulerType

        schedulers = [t.value for t in SchedulerType]
        if self.scheduler not in schedulers:
            raise DebiasError(f"unknown scheduler {self.scheduler!r}", f"use one of {', '.join(schedulers)}")
        objective = self.objective_options
        if objective.invariance not in INVARIANCES:
            raise DebiasError(f"unknown invariance {objective.invariance!r}", f"use one of {', '.join(INVARIANCES)}")
        if objective.regulariser not in REGULARISERS:
            raise DebiasError(f"unknown regulariser {objective.regulariser!r}", f"use one of {', '.join(REGULARISERS)}")
        if not given_texts and not self.uses_templates:
            self.cda_config().validate()

    @property
    def uses_templates(self) -> bool:
        """True when the objective trains on its own templates rather than a corpus (``equalize``)."""
        return self.objective in TEMPLATE_OBJECTIVES

    def _run_checks(self, given_texts: bool) -> list[tuple[bool, str, str]]:
        data = self.objective_options.equalize_data
        return [
            (not self.base, "no base model given", "pass --base MODEL"),
            (
                not self.corpus and not given_texts and not self.uses_templates,
                "no corpus given",
                "pass --corpus PATH_OR_ID",
            ),
            (
                bool(self.corpus) and self.uses_templates,
                f"objective {self.objective!r} trains on its templates, not on a corpus",
                "drop --corpus",
            ),
            (
                data is not None and not self.uses_templates,
                "equalize_data is set but the objective is not equalize",
                "use --objective equalize or drop --equalize-data",
            ),
            (
                data is not None and not Path(data).is_file(),
                f"equalize data file {data} not found",
                "point --equalize-data at a JSON file",
            ),
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
        ]

    def _option_checks(self) -> list[tuple[bool, str, str]]:
        method, objective = self.method_options, self.objective_options
        return [
            (
                not math.isfinite(objective.beta) or objective.beta < 0,
                f"beta {objective.beta} is not a finite number >= 0",
                "fix it",
            ),
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
            (not 0 <= method.dropout < 1, f"dropout {method.dropout} is outside [0, 1)", "use e.g. 0.05"),
            (
                not 0 < objective.mlm_probability < 1,
                f"mlm_probability {objective.mlm_probability} is outside (0, 1)",
                "use e.g. 0.15",
            ),
        ]


def _listed(key: str, value: Any) -> Any:
    """A list key given one path (``corpus="corpus.txt"``) as a list of it; paths as strings. Iterating a string
    would read each of its characters as a corpus."""
    if typing.get_origin(_base_hint(FLAT_KEYS[key].hint)) is not list:
        return value
    if isinstance(value, str | os.PathLike):
        return [os.fspath(value)]
    if isinstance(value, list | tuple):
        return [os.fspath(v) if isinstance(v, os.PathLike) else v for v in value]
    return value


def _base_hint(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1 else hint


_GROUPS = groups(TrainConfig)
# Every flat key in the order of the flat interface (recipes, command line, train_config.json).
FLAT_KEYS = flat_keys(TrainConfig)
for _key in FLAT_KEYS.values():
    if _key.group is not None:
        setattr(TrainConfig, _key.name, flat_property(_key.group, _key.field.name))


@dataclass
class TrainResult:
    """What a training run produced."""

    output: Path
    steps: int
    train_loss: float | None
    eval_loss: float | None
    seconds: float
    seconds_per_step: float
    rank_fingerprints: list[str]
    model: Any = field(default=None, repr=False)  # the trained model (unwrapped), in eval mode
    # A sharded (FSDP) run's whole state dict, gathered for the main process to save (there the model holds shards
    # only); None when the model holds its own weights.
    full_state: dict[str, Any] | None = field(default=None, repr=False)


def expected_world_size(config: TrainConfig) -> int | None:
    """The world size the run was launched for: the config's, else the launcher's ``WORLD_SIZE``."""
    if config.world_size is not None:
        return config.world_size
    env = os.environ.get("WORLD_SIZE")
    return int(env) if env and env.isdigit() else None


@dataclass
class Trained:
    """A finished run, handed to the writer of its output folder (on the main process only)."""

    config: TrainConfig
    work: Path  # the work folder (its training_log.jsonl goes into the output)
    model: Any  # the trained model (a PeftModel, or the fully fine-tuned model), unwrapped, in eval mode
    tokenizer: Any
    loaded: Any  # the LoadedModel of the base
    objective: str
    axis: Any  # the BiasAxis, or None when the caller gave the training text (the axis is then a label)
    data: dict[str, Any]  # CDA statistics, or the counts of the given sentences
    base_fingerprint: str
    backbone_fingerprint: str
    result: TrainResult
    world: int


# Writes the output folder of a finished run (default: the adapter artifact, peft_debias.train.artifact).
Writer = Callable[[Trained], None]
