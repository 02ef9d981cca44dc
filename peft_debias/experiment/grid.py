"""Expanding an :class:`~peft_debias.experiment.config.ExperimentConfig` into cells with deterministic run ids.

Three kinds of cell:

* ``baseline``: a base model without adapter, evaluated once on every axis of the grid;
* ``adapter``: one training run (model, axis, method, objective, searched values, seed) in a **treatment**
  (``cda: true``) or **control** (``cda: false``: the same sentences without the counterfactual swaps) role,
  evaluated at every checkpoint step in ``steps``;
* ``vector``: one biased model per seed (StereoSet items of the axis filled with the stereotype for the treatment,
  with the anti-stereotype or unrelated option for the control), evaluated at every lambda.

A cell's ``spec`` is its full configuration with paths expanded and resolved and every default filled in (the
complete TrainConfig / BiasedConfig / EvalConfig field values); the run id is a readable slug plus the first 12
hex digits of the SHA-256 of ``spec`` as canonical JSON. Equal specs give equal ids on any machine and in any
order; any change that can change a result (a learning rate, a default, a data path, the harness version) gives a
new id. Settings that cannot change results (logging, held-out-loss and checkpoint intervals) live in
``spec["runtime"]``, which the run id leaves out.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from peft_debias.core.errors import DebiasError
from peft_debias.core.fingerprints import sha256_text
from peft_debias.experiment.config import ExperimentConfig

HARNESS_VERSION = 1
# Harness defaults for the evaluation (a config's eval block overrides them).
EVAL_DEFAULTS: dict[str, Any] = {"n_bootstrap": 1000, "seat_tests": "axes"}
_VOLATILE_TRAIN = {"output", "resume", "overwrite", "progress", "log_every", "save_every", "eval_every", "device"}
# TrainConfig fields added after the first cached grids: left out of the spec while at their default, so that the
# ids of cells cached before they existed stay valid.
_LATER_TRAIN_DEFAULTS = {"invariance": "distribution", "names": 0, "regulariser": "lm"}


def _train_spec(train: Any) -> dict[str, Any]:
    return {
        k: v
        for k, v in train.to_dict().items()
        if k not in _VOLATILE_TRAIN and not (k in _LATER_TRAIN_DEFAULTS and v == _LATER_TRAIN_DEFAULTS[k])
    }


_VOLATILE_BIASED = {"output", "overwrite", "progress", "corpus", "device"}
# Where a model runs, not what it computes: never part of a cell's id (the run's --device decides it).
_EVAL_RUNTIME = ("progress", "device", "device_map", "max_memory", "offload_folder")
# The dtype as cell ids have always named it; experiments read "auto" as float32, on every machine alike.
_SPEC_DTYPE = {"auto": "fp32", "float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
_PATH_EVAL_KEYS = ("seat_dir", "crows_file", "stereoset_file", "ppl_file")
KINDS = ("baseline", "adapter", "vector")


@dataclass(frozen=True)
class Cell:
    """One unit of work; ``model`` is the expanded model name, ``config`` names the configuration (e.g.
    ``lora/clm``), ``role`` is baseline, treatment or control."""

    kind: str
    run_id: str
    model: str
    axis: str | None
    config: str
    role: str
    seed: int | None
    spec: dict[str, Any] = field(compare=False, hash=False, repr=False)

    @property
    def group(self) -> tuple[str, str, str | None, str]:
        """What treatment and control cells of one configuration share: (kind, model, axis, config)."""
        return (self.kind, self.model, self.axis, self.config)


def expand_path(text: str, data_dir: Path | None, what: str) -> str:
    """Expand ``${PEFT_DEBIAS_DATA}`` (to ``data_dir``) and other variables; an existing path becomes absolute."""
    raw = str(text)
    if data_dir is not None:
        raw = raw.replace("${PEFT_DEBIAS_DATA}", str(data_dir)).replace("$PEFT_DEBIAS_DATA", str(data_dir))
    out = os.path.expandvars(raw)
    if "$" in out:
        raise DebiasError(f"{what} {text!r} names an unset variable", "set it, or pass --data-dir for PEFT_DEBIAS_DATA")
    path = Path(out).expanduser()
    return str(path.resolve()) if path.exists() else out


def _slug(text: str) -> str:
    name = text.split(":")[-1].rstrip("/")
    name = Path(name).name or name
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()[-40:] or "model"


def run_id(slug: str, spec: dict[str, Any]) -> str:
    """``<slug>-<12 hex digits of SHA-256(canonical JSON of spec)>``."""
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return f"{slug}-{sha256_text(blob, 12)}"


def variants(search: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every combination of the searched values (sorted keys; ``[{}]`` when nothing is searched)."""
    keys = sorted(search)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(search[k] for k in keys))]


def variant_label(variant: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in variant.items())


def _check_sources(corpus: list[str], ppl: str | None) -> None:
    """Perplexity must be measured on text from another source than the training corpus."""
    if not ppl:
        return
    ppl_path = Path(ppl)
    if not ppl_path.is_file():
        raise DebiasError(f"perplexity text {ppl} not found", "point ppl_text at an existing text file")
    for source in corpus:
        path = Path(source)
        if path.exists() and (path == ppl_path or (path.is_dir() and path in ppl_path.parents)):
            raise DebiasError(
                f"the perplexity text {ppl} is part of the training corpus {source}",
                "measure quality on text from another source (e.g. train on gutenberg, ppl on wikitext2)",
            )


class _Expander:
    """Resolved pieces shared by all cells of a config."""

    def __init__(self, config: ExperimentConfig, data_dir: Path | None) -> None:
        from peft_debias.eval.benchmarks import EvalConfig

        self.config, self.data_dir = config, data_dir
        self.models = {m: expand_path(m, data_dir, "model") for m in config.models}
        self.corpus = [expand_path(c, data_dir, "corpus") for c in config.corpus]
        ppl = expand_path(config.ppl_text, data_dir, "ppl_text") if config.ppl_text else None
        if "perplexity" in config.benchmarks:
            _check_sources(self.corpus, ppl)
        options = {**EVAL_DEFAULTS, **config.eval}
        for key in _PATH_EVAL_KEYS:
            if isinstance(options.get(key), str):
                options[key] = expand_path(options[key], data_dir, f"eval.{key}")
        if ppl:
            options["ppl_file"] = ppl
        self.eval_config = replace(EvalConfig(), **options).validate()

    def eval_spec(self, axes: list[str]) -> dict[str, Any]:
        from peft_debias.models.placement import dtype_name

        config = {k: v for k, v in asdict(self.eval_config).items() if k not in _EVAL_RUNTIME}
        config["dtype"] = _SPEC_DTYPE[dtype_name(config["dtype"])]
        if not config["fidelity"]:  # added later: named only when on
            del config["fidelity"]
        return {"benchmarks": list(self.config.benchmarks), "axes": axes, "config": config}

    def stereoset_file(self) -> str:
        from peft_debias.eval.sources import DataSource

        path = DataSource.resolve(self.data_dir).file("stereoset", self.eval_config.stereoset_file)
        if path is None:
            raise DebiasError("bias-vector cells need a StereoSet file", "pass --data-dir with stereoset/ in it")
        return str(Path(path).resolve())


def _cell(kind: str, slug: str, model: str, axis: str | None, config: str, role: str, seed, spec) -> Cell:
    spec = {"harness": HARNESS_VERSION, "kind": kind, **spec}
    hashed = {k: v for k, v in spec.items() if k != "runtime"}
    return Cell(kind, run_id(slug, hashed), model, axis, config, role, seed, spec)


def expand_grid(config: ExperimentConfig, data_dir: str | Path | None = None) -> list[Cell]:
    """All cells of the experiment, baselines first, then adapter cells, then vector cells (stable order)."""
    from peft_debias.train.config import TEMPLATE_OBJECTIVES, TrainConfig

    data = Path(data_dir).resolve() if data_dir is not None else None
    ex = _Expander(config, data)
    cells: list[Cell] = []
    for model in config.models:
        spec = {"model": ex.models[model], "eval": ex.eval_spec(list(config.axes)), "paraphrase": config.paraphrase}
        name = ex.models[model]
        cells.append(_cell("baseline", f"baseline-{_slug(name)}", name, None, "baseline", "baseline", None, spec))
    for model, axis, method, objective in itertools.product(
        config.models, config.axes, config.methods, config.objectives
    ):
        for variant in variants(config.search):
            label = f"{method}/{objective}" + (f" {variant_label(variant)}" if variant else "")
            for seed, role in itertools.product(config.seeds, ("treatment", "control")):
                values = {**config.train, **config.method_train.get(method, {}), **variant}
                values.update(
                    base=ex.models[model], axis=axis, method=method, objective=objective, seed=seed,
                    cda=role == "treatment", corpus=[] if objective in TEMPLATE_OBJECTIVES else list(ex.corpus),
                    output="",
                )  # fmt: skip
                train = TrainConfig.from_dict(values, source="experiment train block")
                steps = sorted({s for s in config.eval_steps if s <= train.max_steps} | {train.max_steps})
                spec = {
                    "model": ex.models[model], "axis": axis, "method": method, "objective": objective,
                    "variant": variant, "role": role, "seed": seed, "steps": steps,
                    "train": _train_spec(train),
                    "runtime": {k: v for k, v in train.to_dict().items() if k in _VOLATILE_TRAIN - {"output"}},
                    "eval": ex.eval_spec([axis]), "paraphrase": config.paraphrase,
                }  # fmt: skip
                tag = "cda" if role == "treatment" else "control"
                slug = f"adapter-{_slug(ex.models[model])}-{axis}-{method}-{objective}-{tag}-s{seed}"
                cells.append(_cell("adapter", slug, ex.models[model], axis, label, role, seed, spec))
    if config.vector is not None:
        cells += _vector_cells(config, ex)
    return cells


def _biased_spec(biased: Any) -> dict[str, Any]:
    """The hashed settings of a vector cell's biased training (a float32 dtype, the default, left out)."""
    spec = {k: v for k, v in asdict(biased).items() if k not in _VOLATILE_BIASED}
    if spec.get("dtype") == "float32":
        del spec["dtype"]
    return spec


def _vector_cells(config: ExperimentConfig, ex: _Expander) -> list[Cell]:
    from peft_debias.train.biased import BiasedConfig

    vec = config.vector
    assert vec is not None
    fills = {"treatment": "stereotype"}
    if vec.control != "none":
        fills["control"] = vec.control
    stereoset = ex.stereoset_file()
    cells = []
    for model, axis, seed in itertools.product(config.models, config.axes, vec.seeds or config.seeds):
        biased = BiasedConfig(**vec.biased, base=ex.models[model], axis=axis, output="-", seed=seed)
        biased.validate()
        label = f"vector/{biased.method}"
        for role, fill in fills.items():
            spec = {
                "model": ex.models[model], "axis": axis, "role": role, "seed": seed, "fill": fill,
                "stereoset_file": stereoset, "train_items": vec.train_items,
                "split_seed": config.split_seed if vec.train_items == "select" else None,
                "biased": _biased_spec(biased),
                "lambdas": list(vec.lambdas), "eval": ex.eval_spec([axis]), "paraphrase": config.paraphrase,
            }  # fmt: skip
            if vec.train_items == "select":  # halves keyed by template (earlier cells: by item id; new ids recompute)
                spec["split_key"] = "template"
            slug = f"vector-{_slug(ex.models[model])}-{axis}-{biased.method}-{fill}-s{seed}"
            cells.append(_cell("vector", slug, ex.models[model], axis, label, role, seed, spec))
    return cells
