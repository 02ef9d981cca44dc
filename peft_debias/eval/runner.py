""":func:`evaluate_bias`, the one entry point behind ``peft-debias eval``.

It reads and checks every benchmark's data (the registry in :mod:`peft_debias.eval.benchmarks`) before loading
the model, then runs the benchmarks on it and assembles the results dict.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import asdict, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peft_debias.core.errors import DebiasError
from peft_debias.core.provenance import timestamp, versions
from peft_debias.eval.batching import batch_token_budget
from peft_debias.eval.benchmarks import BENCHMARKS, EvalConfig, check_benchmarks
from peft_debias.eval.handle import ModelHandle, peek_kind, resolve_model
from peft_debias.eval.protocols import OVERRIDES, check_masked, check_protocol_benchmarks
from peft_debias.eval.results import PAIRED, SCHEMA_VERSION, compare_results, load_results
from peft_debias.eval.sources import DataSource, check_axes

if TYPE_CHECKING:
    from peft_debias.models.loading import ModelKind

logger = logging.getLogger(__name__)
_VERSIONED = ("torch", "transformers", "peft", "numpy")  # the libraries that decide the numbers


def _defaults(kind: ModelKind, config: EvalConfig) -> list[str]:
    names = check_protocol_benchmarks(
        config.rules(), [n for n, b in BENCHMARKS.items() if kind in b.kinds], explicit=False
    )
    if not names:
        raise DebiasError(
            f"--protocol {config.protocol} defines no benchmark for a model of kind {kind.value}",
            "use --protocol default",
        )
    return names


def _check_kinds(names: list[str], kind: ModelKind | None, model_name: Any, config: EvalConfig) -> None:
    if kind is not None and kind.value == "masked_lm":  # before the model loads (the scorers check it again)
        check_masked(config.rules(), " and ".join(names))
    for name in names:
        if kind is not None and kind not in BENCHMARKS[name].kinds:
            raise DebiasError(
                f"{name} scores sentences with a language-model head, and {model_name or 'the model'} is a bare "
                "encoder (kind encoder: no masked-LM head; bundled:minilm's is not trained)",
                "run seat on it, or evaluate a causal LM or a masked LM with a trained head",
            )


def _label(handle: ModelHandle) -> str:
    if not handle.adapters:
        return handle.name
    return f"{handle.name} + {', '.join(Path(a['path']).name for a in handle.adapters)}"


def _header(
    handle: ModelHandle, label: str | None, names: list[str], axes: list[str], config: EvalConfig
) -> dict[str, Any]:
    """The results dict's fields that describe the run (the benchmark blocks are added after it)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "label": label or _label(handle),
        "model": handle.name,
        "model_kind": handle.kind.value,
        "adapters": handle.adapters,
        "placement": handle.placement,
        "benchmarks": names,
        "axes": axes,
        "protocol": config.rules().record(),
        "config": {k: v for k, v in asdict(config).items() if k != "progress"} | _switches(config),
        "versions": versions(_VERSIONED),
        "created": timestamp(),
    }


def _switches(config: EvalConfig) -> dict[str, Any]:
    """The protocol switches as they were applied (a config field left None takes the protocol's value)."""
    rules = config.rules()
    return {key: getattr(rules, key) for key in OVERRIDES}


def evaluate_bias(
    model: Any,
    tokenizer: Any = None,
    *,
    benchmarks: str | Iterable[str] | None = None,
    axes: str | Iterable[str] | None = None,
    data_dir: str | Path | None = None,
    adapters: Iterable[str] = (),
    kind: str | ModelKind | None = None,
    config: EvalConfig | None = None,
    compare: str | Path | Mapping[str, Any] | None = None,
    label: str | None = None,
    allow_base_mismatch: bool = False,
    **options: Any,
) -> dict[str, Any]:
    """Evaluate a model's social bias and LM quality; returns the results dict (schema in :mod:`peft_debias.eval`).

    Args:
        model: a Hub id, local folder or bundled alias (``bundled:minilm``, ``bundled:smollm2``), a
            :class:`~peft_debias.models.loading.LoadedModel`,
            or a model object (PEFT-wrapped or not) with ``tokenizer``.
        benchmarks: names from :data:`BENCHMARKS` (``"seat,crows"`` or a list); default: every benchmark the
            model kind supports (an encoder gets SEAT only).
        axes: ``gender``, ``race``, ``religion`` (default all three).
        data_dir: data folder (default ``$PEFT_DEBIAS_DATA``; without either, CrowS-Pairs, StereoSet and
            WikiText-2 come from the Hub).
        adapters: adapter folders / Hub ids to attach first (merging changes a passed model in place).
        kind: ``masked_lm``, ``causal_lm`` or ``encoder`` to override detection.
        config: an :class:`EvalConfig`; ``options`` override its fields (e.g. ``n_samples=1000``).
        compare: another results dict or file: adds a ``compare`` section (flips and McNemar p-values).
        label: name of this run in reports and charts (default: model name + adapters).
        allow_base_mismatch: attach adapters even if their recorded base (weights fingerprint or id) is not
            ``model`` (by default such an adapter is refused, as ``merge`` and ``publish`` refuse it).
    """
    started = time.perf_counter()
    config = _config(model, config, options)
    axes_list = check_axes(axes)
    names = check_benchmarks(benchmarks)
    if names is not None:
        check_protocol_benchmarks(config.rules(), names, explicit=True)
    other = load_results(compare) if isinstance(compare, (str, Path)) else compare
    source = DataSource.resolve(data_dir)
    expected = peek_kind(model, kind)
    if names is None and expected is not None:
        names = _defaults(expected, config)
    data: dict[str, tuple[Any, dict[str, Any]]] = {}
    if names is not None:  # read and check the data, and the kind, before loading the model
        _check_kinds(names, expected, model if isinstance(model, (str, Path)) else None, config)
        for name in names:
            data[name] = BENCHMARKS[name].load(source, config, axes_list)
    t0 = time.perf_counter()
    handle = resolve_model(
        model,
        tokenizer,
        kind=kind,
        adapters=adapters,
        allow_base_mismatch=allow_base_mismatch,
        placement=config.placement(),
    )
    seconds: dict[str, float] = {"load": time.perf_counter() - t0}
    if names is None:
        names = _defaults(handle.kind, config)
        for name in names:
            data[name] = BENCHMARKS[name].load(source, config, axes_list)
    _check_kinds(names, handle.kind, handle.name, config)
    results = _header(handle, label, names, axes_list, config)
    results.update(_run_benchmarks(handle, names, data, config, axes_list, seconds))
    seconds["total"] = time.perf_counter() - started
    results["seconds"] = seconds
    if other is not None:
        results["compare"] = compare_results(results, other)
    if config.fidelity:
        again = {"benchmarks": names, "axes": axes_list, "data_dir": data_dir, "adapters": adapters, "kind": kind}
        results["fidelity"] = _fidelity(model, results, config, allow_base_mismatch=allow_base_mismatch, **again)
    return results


def _config(model: Any, config: EvalConfig | None, options: dict[str, Any]) -> EvalConfig:
    """``config`` with ``options`` (EvalConfig fields) applied, checked."""
    unknown = sorted(set(options) - {f.name for f in fields(EvalConfig)})
    if unknown:
        known = ", ".join(f.name for f in fields(EvalConfig))
        raise DebiasError(f"unknown option(s) {', '.join(unknown)}", f"use fields of EvalConfig: {known}")
    config = replace(config or EvalConfig(), **options).validate()
    if config.fidelity and not isinstance(model, (str, Path)):
        raise DebiasError("fidelity loads the model a second time, in float32", "pass the model by name or folder")
    return config


def _run_benchmarks(
    handle: ModelHandle,
    names: list[str],
    data: dict[str, tuple[Any, dict[str, Any]]],
    config: EvalConfig,
    axes: list[str],
    seconds: dict[str, float],
) -> dict[str, Any]:
    """Each benchmark's block (with its data's source and its time, also put in ``seconds``)."""
    blocks = {}
    for name in names:
        payload, info = data[name]
        t0 = time.perf_counter()
        logger.info("running %s on %s", name, handle.name)
        with batch_token_budget(config.max_batch_tokens):
            block = BENCHMARKS[name].run(handle, payload, config, axes)
        seconds[name] = time.perf_counter() - t0
        blocks[name] = {**block, "source": info, "seconds": seconds[name]}
    return blocks


def _fidelity(model: Any, results: dict[str, Any], config: EvalConfig, **again: Any) -> dict[str, Any]:
    """The run again in float32 on the same device: how many CrowS / StereoSet decisions differ, how far SEAT and
    perplexity move (:func:`compare_results`, the float32 run as the other side)."""
    if results["placement"]["dtype"] == "float32":
        return {"skipped": "the run was in float32 already"}
    reference = evaluate_bias(model, config=replace(config, dtype="float32", fidelity=False), **again)
    compared = compare_results(results, reference)
    flips = {}
    for bench, (_, yes, no) in PAIRED.items():
        for axis, figures in compared.get(bench, {}).items():
            flips.setdefault(bench, {})[axis] = {
                "differ": len(figures[yes]) + len(figures[no]),
                "of": figures["n_common"],
            }
    return {"reference": reference["placement"], "decisions": flips, "compare": compared}
