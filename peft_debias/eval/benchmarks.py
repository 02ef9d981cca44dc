"""The benchmark registry: :class:`EvalConfig`, :class:`Benchmark`, :data:`BENCHMARKS` and the built-in benchmarks.

Each benchmark is a :class:`Benchmark` in :data:`BENCHMARKS`: a ``load`` step that reads and validates its data
(run before the model is loaded, so bad data fails fast) and a ``run`` step that scores a model. Adding one
is :func:`register_benchmark`; a duplicate name is an error, an unknown one lists the known names. The runner,
:func:`peft_debias.eval.runner.evaluate_bias`, drives them.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft_debias.core.bounds import check_bounds
from peft_debias.core.errors import DebiasError
from peft_debias.eval.handle import ModelHandle
from peft_debias.eval.protocols import Protocol, resolve_protocol
from peft_debias.eval.sources import DataSource, hub_rows, parse_names, sha256_of
from peft_debias.eval.splits import check_split, take_split
from peft_debias.models.placement import Placement, dtype_name, resolve_device


@dataclass
class EvalConfig:
    """Options of an evaluation run (the CLI flags map one to one)."""

    seat_tests: str | list[str] = field(
        default="all", metadata={"help": "SEAT tests: 'all' files in seat/, 'axes' (the axes' tests) or names"}
    )
    n_samples: int = field(
        default=100_000, metadata={"help": "SEAT permutation samples (exact if C(2n,n) <= this)", "min": 1}
    )
    n_bootstrap: int = field(
        default=10_000, metadata={"help": "bootstrap resamples for the 95% intervals (0: none)", "min": 0}
    )
    seed: int = field(default=0, metadata={"help": "seed of the permutation tests and bootstraps", "min": 0})
    batch_size: int = field(
        default=32, metadata={"help": "sentences per forward (masked copies: twice as many)", "min": 1}
    )
    protocol: str = field(
        default="default",
        metadata={"help": "scoring protocol: 'default', 'bias-bench' or 'lm-eval' (eval/protocols.py)"},
    )
    causal_bos: str | None = field(
        default=None,
        metadata={"help": "'context': score [BOS]+tokens; 'separate': first token from a BOS-only forward "
                  "(None: the protocol's)"},
    )  # fmt: skip
    crows_mlm_tokens: str | None = field(
        default=None,
        metadata={"help": "CrowS masked scoring: 'shared' or 'diff' tokens (None: the protocol's)"},
    )
    mlm_filler_mean: str | None = field(
        default=None,
        metadata={"help": "StereoSet masked filler score: mean 'logprob' or 'prob' (None: the protocol's)"},
    )
    seat_dir: str | None = field(default=None, metadata={"help": "SEAT folder (default <data>/seat)"})
    crows_file: str | None = field(default=None, metadata={"help": "CrowS-Pairs CSV (default <data>/crows_pairs/...)"})
    stereoset_file: str | None = field(
        default=None, metadata={"help": "StereoSet JSON/JSONL (default <data>/stereoset)"}
    )
    ppl_file: str | None = field(default=None, metadata={"help": "perplexity text (default <data>/wikitext2/...)"})
    ppl_max_tokens: int | None = field(
        default=None, metadata={"help": "tokens scored (default causal 20k, masked 2k)", "min": 1}
    )
    ppl_window: int | None = field(
        default=None, metadata={"help": "window (default causal 1024, masked 128)", "min": 1}
    )
    ppl_stride: int | None = field(default=None, metadata={"help": "causal stride (default window / 2)", "min": 1})
    split: str | None = field(
        default=None,
        metadata={"help": "CrowS/StereoSet items: 'select' or 'report' half (eval/splits.py), None: all"},
    )
    split_seed: int = field(default=0, metadata={"help": "seed of the select/report item split", "min": 0})
    progress: bool | None = field(default=None, metadata={"help": "progress bars (None: only on a terminal)"})
    max_batch_tokens: int | None = field(
        default=None,
        metadata={"help": "padded tokens per forward (default: encoding 2048, LM-head scoring 1024)", "min": 1},
    )
    device: str = field(default="auto", metadata={"help": "auto (the accelerator if present), cpu, cuda[:N], mps"})
    dtype: str = field(
        default="auto",
        metadata={"help": "auto (checkpoint's on an accelerator, float32 on CPU), float32, bfloat16, float16 "
                  "(fp32/bf16/fp16 too); the LM head and log-softmax stay float32"},
    )  # fmt: skip
    device_map: str | None = field(default=None, metadata={"help": "'auto': accelerate spreads a big model out"})
    max_memory: dict[str, str] | None = field(
        default=None, metadata={"help": "with device_map: the most each device may hold, {'cpu': '8GiB'}"}
    )
    offload_folder: str | None = field(default=None, metadata={"help": "with device_map: disk offload (temp)"})
    fidelity: bool = field(
        default=False,
        metadata={"help": "with a dtype below float32: evaluate again in float32, count the decisions that differ"},
    )

    def validate(self) -> EvalConfig:
        for name, low in (("n_samples", 1), ("n_bootstrap", 0), ("batch_size", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < low:
                raise DebiasError(f"{name} is {value!r}", f"pass an integer >= {low}")
        for name in ("ppl_max_tokens", "ppl_window", "ppl_stride", "max_batch_tokens"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise DebiasError(f"{name} is {value!r}", "pass a positive integer")
        check_bounds(self)  # the seeds (and the bounds above, as the CLI checks them while parsing)
        if self.ppl_window and self.ppl_stride and self.ppl_stride >= self.ppl_window:
            raise DebiasError(
                f"perplexity stride {self.ppl_stride} is not below the window {self.ppl_window}",
                "pass a --ppl-stride smaller than --ppl-window",
            )
        self.rules()
        check_split(self.split)
        self.placement()
        if self.fidelity and dtype_name(self.dtype) == "float32":
            raise DebiasError("--fidelity compares against float32, and this run is float32", "add --dtype bfloat16")
        return self

    def placement(self) -> Placement:
        """Where and in what precision the model is loaded (checked; a device that is not here is refused)."""
        placement = Placement(self.device, self.dtype, self.device_map, self.max_memory, self.offload_folder).check()
        if placement.device_map is None:
            resolve_device(placement.device)
        return placement

    def rules(self) -> Protocol:
        """The :class:`~peft_debias.eval.protocols.Protocol` this config scores with (its switches applied)."""
        return resolve_protocol(
            self.protocol,
            causal_bos=self.causal_bos,
            crows_mlm_tokens=self.crows_mlm_tokens,
            mlm_filler_mean=self.mlm_filler_mean,
        )


@dataclass(frozen=True)
class Benchmark:
    """A registered benchmark: which model kinds it takes, how it loads its data and how it runs."""

    name: str
    description: str
    kinds: tuple[str, ...]  # ModelKind values ("masked_lm", "causal_lm", "encoder"); ModelKind is a str enum
    load: Callable[[DataSource, EvalConfig, list[str]], tuple[Any, dict[str, Any]]]
    run: Callable[[ModelHandle, Any, EvalConfig, list[str]], dict[str, Any]]


BENCHMARKS: dict[str, Benchmark] = {}
# Kinds as plain strings, so that importing the registry (and failing fast on a bad name) does not import torch.
_LM_KINDS = ("masked_lm", "causal_lm")


def register_benchmark(benchmark: Benchmark) -> Benchmark:
    """Add a benchmark to :data:`BENCHMARKS`; a name that is taken is an error."""
    if benchmark.name in BENCHMARKS:
        raise ValueError(f"benchmark {benchmark.name!r} is already registered")
    BENCHMARKS[benchmark.name] = benchmark
    return benchmark


def check_benchmarks(names: str | Iterable[str] | None) -> list[str] | None:
    """Validated benchmark names (None = the default for the model kind); unknown ones list the known ones."""
    parsed = parse_names(names)
    if parsed is None:
        return None
    if not parsed:
        raise DebiasError("no benchmark given", f"pass one or more of {', '.join(BENCHMARKS)}")
    for name in parsed:
        if name not in BENCHMARKS:
            raise DebiasError(f"unknown benchmark {name!r} (known: {', '.join(BENCHMARKS)})", "choose known benchmarks")
    return parsed


def _file_info(path: Path) -> dict[str, Any]:
    return {"file": str(path), "sha256": sha256_of(path)} if path.is_file() else {"folder": str(path)}


# ------------------------------------------------------------------------------------------------ benchmarks


def _load_seat(source: DataSource, config: EvalConfig, axes: list[str]) -> tuple[Any, dict[str, Any]]:
    from peft_debias.eval.seat import select_seat_tests

    folder = source.file("seat", config.seat_dir)
    if folder is None:
        raise DebiasError(
            "SEAT needs its test files and has no Hub copy",
            "pass --data-dir DIR (with seat/*.jsonl) or set PEFT_DEBIAS_DATA",
        )
    return select_seat_tests(folder, config.seat_tests, axes), {"folder": str(folder)}


def _run_seat(handle: ModelHandle, tests: Any, config: EvalConfig, axes: list[str]) -> dict[str, Any]:
    from peft_debias.eval.lm_scoring import mean_pooled_embeddings
    from peft_debias.eval.seat import run_seat

    def encode(sentences: list[str]) -> Any:
        return mean_pooled_embeddings(
            handle.model, handle.tokenizer, sentences, batch_size=2 * config.batch_size, progress=config.progress
        )

    return run_seat(
        encode,
        tests,
        axes=axes,
        n_samples=config.n_samples,
        seed=config.seed,
        progress=config.progress,
        protocol=config.rules(),
    )


def _load_items(
    benchmark: str,
    source: DataSource,
    config: EvalConfig,
    axes: list[str],
    explicit: str | None,
    read_file: Callable[[Path], list[Any]],
    from_rows: Callable[[Any, Any, str], list[Any]],
    for_axis: Callable[[list[Any], str, str], Any],
    split_key: Callable[[Any], str],
) -> tuple[Any, dict[str, Any]]:
    """Items of an item benchmark (CrowS-Pairs, StereoSet) from the data folder or the Hub, restricted to the
    ``config.split`` half (keyed by ``split_key``), each axis checked to have items."""
    path = source.file(benchmark, explicit)
    if path is None:
        rows, features, where = hub_rows(benchmark)
        items, info = from_rows(rows, features, where), {"hub": where}
    else:
        items, info, where = read_file(path), _file_info(path), str(path)
    if config.split:
        items = take_split(items, config.split, benchmark=benchmark, key=split_key, seed=config.split_seed)
        info = {**info, "split": config.split, "split_seed": config.split_seed}
    for axis in axes:
        for_axis(items, axis, where)
    return (items, where), info


def _load_crows(source: DataSource, config: EvalConfig, axes: list[str]) -> tuple[Any, dict[str, Any]]:
    from peft_debias.eval.crows import crows_pairs_from_rows, load_crows_pairs, pairs_for_axis

    return _load_items(
        "crows", source, config, axes, config.crows_file, load_crows_pairs, crows_pairs_from_rows, pairs_for_axis,
        lambda pair: pair.id,
    )  # fmt: skip


def _load_stereoset(source: DataSource, config: EvalConfig, axes: list[str]) -> tuple[Any, dict[str, Any]]:
    from peft_debias.eval.stereoset import items_for_axis, load_stereoset, split_group, stereoset_from_rows

    return _load_items(
        "stereoset", source, config, axes, config.stereoset_file, load_stereoset, stereoset_from_rows, items_for_axis,
        split_group,
    )  # fmt: skip


def _run_items(module: str, function: str) -> Callable[[ModelHandle, Any, EvalConfig, list[str]], dict[str, Any]]:
    """The ``run`` step of an item benchmark: ``module.function`` (imported when it runs: ``run_crows``,
    ``run_stereoset``, which share one signature) on the items ``_load_items`` read."""

    def run(handle: ModelHandle, data: Any, config: EvalConfig, axes: list[str]) -> dict[str, Any]:
        items, where = data
        return getattr(importlib.import_module(module), function)(
            handle.model,
            handle.tokenizer,
            handle.kind,
            items,
            axes=axes,
            n_bootstrap=config.n_bootstrap,
            seed=config.seed,
            batch_size=config.batch_size,
            protocol=config.rules(),
            progress=config.progress,
            where=where,
        )

    return run


def _load_perplexity(source: DataSource, config: EvalConfig, axes: list[str]) -> tuple[Any, dict[str, Any]]:
    from peft_debias.eval.perplexity import chars_needed, read_text

    path = source.file("perplexity", config.ppl_file)
    if path is None:
        rows, _, where = hub_rows("perplexity")
        text = "".join(str(r.get("text", "")) for r in rows)
        if not text.strip():
            raise DebiasError(f"perplexity text {where} is empty", "pass --ppl-file")
        return (text, where), {"hub": where}
    return (read_text(path, chars_needed(config.ppl_max_tokens)), path.name), _file_info(path)


def _run_perplexity(handle: ModelHandle, data: Any, config: EvalConfig, axes: list[str]) -> dict[str, Any]:
    from peft_debias.eval.perplexity import run_perplexity

    text, where = data
    return run_perplexity(
        handle.model,
        handle.tokenizer,
        handle.kind,
        text,
        max_tokens=config.ppl_max_tokens,
        window=config.ppl_window,
        stride=config.ppl_stride,
        batch_size=config.batch_size,
        progress=config.progress,
        source=where,
    )


register_benchmark(Benchmark("seat", "SEAT effect sizes and p-values", (*_LM_KINDS, "encoder"), _load_seat, _run_seat))
register_benchmark(
    Benchmark(
        "crows",
        "CrowS-Pairs stereotype score",
        _LM_KINDS,
        _load_crows,
        _run_items("peft_debias.eval.crows", "run_crows"),
    )
)
register_benchmark(
    Benchmark(
        "stereoset",
        "StereoSet intrasentence SS/LMS/ICAT",
        _LM_KINDS,
        _load_stereoset,
        _run_items("peft_debias.eval.stereoset", "run_stereoset"),
    )
)
register_benchmark(
    Benchmark("perplexity", "(pseudo-)perplexity on a text", _LM_KINDS, _load_perplexity, _run_perplexity)
)
