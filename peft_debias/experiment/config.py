"""The experiment configuration: one YAML file describes a whole grid (see ``recipes/experiments/``).

A grid is base model x axis x method x objective x searched values x seed; every treatment cell (trained on the
counterfactually augmented text) has a **control** cell trained identically on the same sentences without the
swaps (``TrainConfig.cda = False``). An optional ``vector`` block adds Bias Vector cells (one biased model per
seed, evaluated at every lambda) with their own control. Paths may use ``${PEFT_DEBIAS_DATA}`` (the data folder:
``--data-dir``, the ``data_dir`` key or the environment variable) and other environment variables.

Example (every key but ``models`` and ``corpus`` has a default)::

    name: smollm2-gender
    models: [bundled:smollm2]
    axes: [gender]
    methods: [lora, prefix]
    objectives: [clm, counterfactual]
    seeds: 3                                   # or a list: [0, 1, 2]
    corpus: ["${PEFT_DEBIAS_DATA}/gutenberg"]
    ppl_text: ${PEFT_DEBIAS_DATA}/wikitext2/wiki.test.raw   # must not be part of the corpus
    benchmarks: [crows, stereoset, perplexity]
    eval_steps: [150]                          # checkpoints evaluated besides the last step
    train: {max_steps: 300, lr: 2.0e-4, batch_size: 4}      # TrainConfig keys shared by all cells
    method_train: {prefix: {lr: 5.0e-3}}       # per-method TrainConfig keys
    search: {lr: [1.0e-4, 2.0e-4]}             # TrainConfig values tried, chosen on the select half
    eval: {ppl_max_tokens: 8000}               # EvalConfig keys
    selection: {metric: crows, criterion: effect, ppl_budget: 0.03}
    vector: {lambdas: [0.5, 1, 2], control: anti-stereotype, biased: {method: full, max_steps: 150}}
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from peft_debias.core.errors import DebiasError, one_line

BIAS_BENCHMARKS = ("crows", "stereoset", "seat")
# TrainConfig keys the grid sets itself (a `train:` block may not set them).
GRID_TRAIN_KEYS = ("base", "axis", "method", "objective", "seed", "cda", "corpus", "output", "resume", "overwrite")
GRID_BIASED_KEYS = (
    "base", "axis", "seed", "corpus", "output", "data_dir", "overwrite", "stereoset_split", "split_seed",
)  # fmt: skip
VECTOR_CONTROLS = ("anti-stereotype", "unrelated", "none")
VECTOR_TRAIN_ITEMS = ("select", "all")
CRITERIA = ("effect", "bias")


def _err(problem: str, fix: str) -> DebiasError:
    return DebiasError(problem, fix)


def check_keys(data: dict[str, Any], allowed: Iterable[str], where: str) -> None:
    """Refuse keys of ``data`` outside ``allowed``, naming them and the known ones."""
    names = sorted(set(allowed))
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise _err(f"{where} has unknown key(s) {', '.join(unknown)}", f"known keys: {', '.join(names)}")


def _known(cls: type, data: dict[str, Any], where: str) -> None:
    check_keys(data, (f.name for f in fields(cls)), where)


def _str_list(value: Any, where: str, allow_empty: bool = False) -> list[str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(v, str) and v.strip() for v in items):
        raise _err(f"{where} must be a list of names, got {one_line(value, 80)}", f"write e.g. {where}: [a, b]")
    if not items and not allow_empty:
        raise _err(f"{where} is empty", f"list at least one entry under {where}")
    return list(dict.fromkeys(v.strip() for v in items))


def _number(value: Any, where: str, low: float = 0.0, high: float = math.inf) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= float(value) <= high:
        raise _err(f"{where} is {value!r}", f"use a number in [{low:g}, {high:g}]")
    return float(value)


@dataclass
class SelectionSpec:
    """How settings are chosen on the select half (steps, searched values, lambda, the best configuration)."""

    metric: str | None = field(default=None, metadata={"help": "crows | stereoset | seat (default: first evaluated)"})
    criterion: str = field(
        default="effect", metadata={"help": "effect: most bias removed beyond the control; bias: least bias"}
    )
    ppl_budget: float | None = field(
        default=0.03, metadata={"help": "largest relative perplexity increase over the base a choice may have"}
    )


@dataclass
class Targets:
    """Thresholds the report checks (the issue's acceptance targets)."""

    crows_effect: float = 4.0  # CrowS points toward 50 beyond the control
    ss_effect: float = 2.0  # StereoSet SS points toward 50 beyond the control
    ppl_increase: float = 0.03  # relative out-of-domain perplexity increase over the base
    seat_abs_es: float = 0.5  # SEAT mean |effect size| of the axis
    p_value: float = 0.05  # combined paired p-value


@dataclass
class VectorSpec:
    """Bias Vector cells: a biased model per seed (peft_debias.train.biased), evaluated at every lambda."""

    lambdas: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    control: str = field(default="anti-stereotype", metadata={"help": "control text: anti-stereotype | unrelated"})
    train_items: str = field(
        default="select", metadata={"help": "StereoSet items the biased model trains on: select half | all"}
    )
    ppl_budget: float = field(default=0.10, metadata={"help": "largest relative perplexity increase for lambda"})
    criterion: str = field(
        default="bias", metadata={"help": "lambda choice on the select half: bias (least) | effect (beyond control)"}
    )
    seeds: list[int] | None = None
    keep_biased: bool = field(default=False, metadata={"help": "keep the biased model folders (large)"})
    biased: dict[str, Any] = field(default_factory=dict, metadata={"help": "BiasedConfig keys"})


@dataclass
class ExperimentConfig:
    """A grid of debiasing runs with controls, seeds and evaluations (the ``peft-debias experiment`` YAML)."""

    name: str = "experiment"
    description: str = ""
    output: str | None = None
    data_dir: str | None = None
    models: list[str] = field(default_factory=list)
    axes: list[str] = field(default_factory=lambda: ["gender"])
    methods: list[str] = field(default_factory=lambda: ["lora"])
    objectives: list[str] = field(default_factory=lambda: ["clm"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    corpus: list[str] = field(default_factory=list)
    ppl_text: str | None = "${PEFT_DEBIAS_DATA}/wikitext2/wiki.test.raw"
    benchmarks: list[str] = field(default_factory=lambda: ["crows", "stereoset", "perplexity"])
    eval_steps: list[int] = field(default_factory=list)
    paraphrase: bool = False
    split_seed: int = 0
    train: dict[str, Any] = field(default_factory=dict)
    method_train: dict[str, dict[str, Any]] = field(default_factory=dict)
    search: dict[str, list[Any]] = field(default_factory=dict)
    eval: dict[str, Any] = field(default_factory=dict)
    selection: SelectionSpec = field(default_factory=SelectionSpec)
    targets: Targets = field(default_factory=Targets)
    vector: VectorSpec | None = None

    @classmethod
    def from_dict(cls, data: Any, source: str = "experiment config") -> ExperimentConfig:
        """Parse and validate a mapping (a loaded YAML file); any problem is a one-line :class:`DebiasError`."""
        if not isinstance(data, dict):
            raise _err(f"{source} is not a mapping", "write key: value lines (see recipes/experiments/)")
        data = dict(data)
        _known(cls, data, source)
        nested = {"selection": SelectionSpec, "targets": Targets, "vector": VectorSpec}
        for key, sub in nested.items():
            if data.get(key) is None:
                data.pop(key, None)
                continue
            if not isinstance(data[key], dict):
                raise _err(f"{source}: {key} must be a mapping", f"write {key}: {{...}} with known keys")
            _known(sub, data[key], f"{source}: {key}")
            data[key] = sub(**data[key])
        config = cls(**data)
        return config.validate(source)

    def validate(self, source: str = "experiment config") -> ExperimentConfig:
        """Check names, numbers and the nested blocks (does not touch the file system)."""
        from peft_debias.eval.benchmarks import BENCHMARKS
        from peft_debias.eval.sources import AXES
        from peft_debias.models.methods import METHODS
        from peft_debias.train.objectives import OBJECTIVES

        self.models = _str_list(self.models, "models")
        self.axes = _str_list(self.axes, "axes")
        self.methods = _str_list(self.methods, "methods", allow_empty=True)
        self.objectives = _str_list(self.objectives, "objectives")
        self.benchmarks = _str_list(self.benchmarks, "benchmarks")
        from peft_debias.train.config import TEMPLATE_OBJECTIVES

        corpus_free = not self.methods or all(o in TEMPLATE_OBJECTIVES for o in self.objectives)
        self.corpus = _str_list(self.corpus, "corpus", allow_empty=corpus_free)
        for kind, names, known in (
            ("axis", self.axes, AXES),
            ("method", self.methods, tuple(METHODS)),
            ("objective", self.objectives, OBJECTIVES),
            ("benchmark", self.benchmarks, tuple(BENCHMARKS)),
        ):
            for name in names:
                if name not in known:
                    raise _err(f"{source}: unknown {kind} {name!r} (known: {', '.join(known)})", f"use a known {kind}")
        self.seeds = _seeds(self.seeds, "seeds")
        if not self.methods and self.vector is None:
            raise _err(f"{source} has no methods and no vector block", "list methods or add a vector block")
        self._validate_train(source)
        self._validate_eval(source)
        self._validate_selection(source)
        for f in fields(Targets):
            _number(getattr(self.targets, f.name), f"targets.{f.name}")
        if self.vector is not None:
            self._validate_vector(source)
        return self

    def _validate_train(self, source: str) -> None:
        from peft_debias.train.config import FLAT_KEYS, TrainConfig

        blocks = {"train": self.train, **{f"method_train.{m}": v for m, v in (self.method_train or {}).items()}}
        tunable = sorted(name for name in FLAT_KEYS if name not in GRID_TRAIN_KEYS)
        for where, block in blocks.items():
            if not isinstance(block, dict):
                raise _err(f"{source}: {where} must be a mapping", "write TrainConfig keys under it")
            unknown = sorted(set(block) - set(tunable) - set(GRID_TRAIN_KEYS))
            if unknown:
                problem = f"{source}: {where} has unknown key(s) {', '.join(unknown)}"
                raise _err(problem, f"known keys: {', '.join(tunable)}")
            grid = sorted(set(block) & set(GRID_TRAIN_KEYS))
            if grid:
                raise _err(f"{source}: {where} sets {', '.join(grid)}", "these are set by the grid (top-level keys)")
            TrainConfig.from_dict(dict(block), source=f"{source}: {where}")
        extra = sorted(set(self.method_train or {}) - set(self.methods))
        if extra:
            raise _err(f"{source}: method_train names {', '.join(extra)}, not in methods", "list them in methods")
        if not isinstance(self.search, dict):
            raise _err(f"{source}: search must be a mapping of TrainConfig key -> list", "e.g. search: {lr: [1e-4]}")
        for key, values in self.search.items():
            if key in GRID_TRAIN_KEYS or not isinstance(values, list) or not values:
                raise _err(f"{source}: search.{key} is not a non-empty list of a tunable key", "e.g. lr: [1e-4, 2e-4]")
            TrainConfig.from_dict({key: values[0]}, source=f"{source}: search")
        for steps in self.max_steps_values():
            if steps is None or steps < 1:
                raise _err(f"{source}: max_steps is {steps!r}", "set train.max_steps (experiments need fixed steps)")
        for step in self.eval_steps:
            if isinstance(step, bool) or not isinstance(step, int) or step < 1:
                raise _err(f"{source}: eval step {step!r} is not a positive integer", "list steps like [100, 200]")
            if step > min(self.max_steps_values()):
                raise _err(f"{source}: eval step {step} is beyond max_steps", "use steps <= max_steps")

    def max_steps_values(self) -> list[int | None]:
        """Every ``max_steps`` a cell can get (train block, per-method blocks and searched values)."""
        from peft_debias.train.config import TrainConfig

        base = self.train.get("max_steps", TrainConfig.max_steps)
        values = [m.get("max_steps", base) for m in (self.method_train or {}).values()] + [base]
        return [*values, *self.search.get("max_steps", [])]

    def _validate_eval(self, source: str) -> None:
        from dataclasses import replace

        from peft_debias.eval.benchmarks import EvalConfig

        if not isinstance(self.eval, dict):
            raise _err(f"{source}: eval must be a mapping of EvalConfig keys", "e.g. eval: {n_bootstrap: 1000}")
        _known(EvalConfig, self.eval, f"{source}: eval")
        for key in ("split", "progress"):
            if key in self.eval:
                raise _err(f"{source}: eval.{key} is set by the harness", f"remove eval.{key}")
        replace(EvalConfig(), **self.eval).validate()
        if "perplexity" in self.benchmarks and not self.ppl_text:
            raise _err(f"{source}: perplexity needs ppl_text", "point ppl_text at text from another source")

    def _validate_selection(self, source: str) -> None:
        sel = self.selection
        evaluated = [b for b in BIAS_BENCHMARKS if b in self.benchmarks]
        if not evaluated:
            raise _err(f"{source}: no bias benchmark in {self.benchmarks}", f"add one of {', '.join(BIAS_BENCHMARKS)}")
        sel.metric = sel.metric or evaluated[0]
        if sel.metric not in evaluated:
            raise _err(f"{source}: selection.metric {sel.metric!r} is not evaluated", f"use one of {evaluated}")
        if sel.criterion not in CRITERIA:
            raise _err(f"{source}: selection.criterion {sel.criterion!r}", f"use one of {', '.join(CRITERIA)}")
        if sel.ppl_budget is not None:
            _number(sel.ppl_budget, "selection.ppl_budget")

    def _validate_vector(self, source: str) -> None:
        from peft_debias.train.biased import BiasedConfig
        from peft_debias.vector.meta import check_scalar

        vec = self.vector
        assert vec is not None
        if not isinstance(vec.lambdas, list) or not vec.lambdas:
            raise _err(f"{source}: vector.lambdas must be a non-empty list", "e.g. lambdas: [0.5, 1, 2]")
        vec.lambdas = sorted({check_scalar(x) for x in vec.lambdas})
        if any(x <= 0 for x in vec.lambdas):
            raise _err(f"{source}: vector.lambdas must be > 0 (lambda 0 is the baseline)", "drop 0 and negatives")
        if vec.control not in VECTOR_CONTROLS:
            raise _err(f"{source}: vector.control {vec.control!r}", f"use one of {', '.join(VECTOR_CONTROLS)}")
        if vec.train_items not in VECTOR_TRAIN_ITEMS:
            raise _err(f"{source}: vector.train_items {vec.train_items!r}", "use select or all")
        _number(vec.ppl_budget, "vector.ppl_budget")
        if vec.criterion not in CRITERIA:
            raise _err(f"{source}: vector.criterion {vec.criterion!r}", f"use one of {', '.join(CRITERIA)}")
        vec.seeds = self.seeds if vec.seeds is None else _seeds(vec.seeds, "vector.seeds")
        if not isinstance(vec.biased, dict):
            raise _err(f"{source}: vector.biased must be a mapping of BiasedConfig keys", "e.g. {max_steps: 150}")
        _known(BiasedConfig, vec.biased, f"{source}: vector.biased")
        grid = sorted(set(vec.biased) & set(GRID_BIASED_KEYS))
        if grid:
            raise _err(f"{source}: vector.biased sets {', '.join(grid)}", "these are set by the grid")
        BiasedConfig(base="m", output="o", **vec.biased).validate()


def _seeds(value: Any, where: str) -> list[int]:
    if isinstance(value, bool):
        raise _err(f"{where} is {value!r}", "give a count (e.g. 3) or a list of integers")
    if isinstance(value, int):
        if value < 1:
            raise _err(f"{where} is {value} (< 1)", "use at least 1 seed (3 or more to estimate noise)")
        return list(range(value))
    ints = isinstance(value, list) and all(isinstance(s, int) and not isinstance(s, bool) for s in value)
    if not ints or not value:
        raise _err(f"{where} is {one_line(value, 60)}", "give a count (e.g. 3) or a non-empty list of integers")
    negative = [s for s in value if s < 0]
    if negative:
        raise _err(f"{where} has negative seeds {negative}", "use seeds >= 0")
    return list(dict.fromkeys(value))


def read_experiment_yaml(path: str | Path) -> Any:
    """The content of an experiment YAML file (``name`` defaults to the file's stem); one-line errors."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise _err(f"cannot read experiment config {path} ({one_line(err)})", "check the path") from err
    except yaml.YAMLError as err:
        raise _err(f"experiment config {path} is not valid YAML ({one_line(err, 160)})", "fix the syntax") from err
    if isinstance(data, dict):
        data.setdefault("name", path.stem)
    return data


def load_experiment_config(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment YAML file (``name`` defaults to the file's stem)."""
    data = read_experiment_yaml(path)
    if isinstance(data, dict) and "downstream" in data:
        raise _err(
            f"experiment config {path} is a downstream experiment (a downstream: block), not a grid of cells",
            "run it with peft-debias experiment, or read it with peft_debias.experiment.downstream.parse_downstream",
        )
    return ExperimentConfig.from_dict(data, source=f"experiment config {path}")
