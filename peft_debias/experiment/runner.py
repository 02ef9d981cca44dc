"""Running a whole experiment: expand the grid, compute the cells not yet cached, analyse, write the report.

Resuming is implicit: a cell whose ``<output>/cells/<run_id>/result.json`` exists is never recomputed, so running
the same config again continues an interrupted grid (and a grown grid, e.g. more seeds, only computes the new
cells). Output folder::

    <output>/experiment.json      the config as run, the data folder and every cell's run id
    <output>/cells/<run_id>/      result.json (+ adapter/ for adapter cells)
    <output>/summary.json         the analysis (:mod:`.analysis`)
    <output>/results.csv          one row per configuration, role and metric
    <output>/report.md            the report (:mod:`.report`)
    <output>/bias_vs_quality.png, lambda_curves.png
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from peft_debias.core.errors import DebiasError
from peft_debias.core.jsonio import write_json
from peft_debias.experiment.cells import RunContext, is_done, load_result, run_cell
from peft_debias.experiment.config import ExperimentConfig
from peft_debias.experiment.grid import Cell, expand_grid

logger = logging.getLogger(__name__)


@dataclass
class ExperimentRun:
    """What :func:`run_experiment` did."""

    output: Path
    cells: list[Cell]
    computed: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    summary: dict[str, Any] | None = None
    written: list[Path] = field(default_factory=list)


def default_output(config: ExperimentConfig) -> Path:
    """``config.output``, else ``experiments/<name>``."""
    return Path(config.output) if config.output else Path("experiments") / config.name


def resolve_data(config: ExperimentConfig, data_dir: str | Path | None) -> Path:
    """The data folder: the argument, else the config's ``data_dir``, else ``$PEFT_DEBIAS_DATA``."""
    from peft_debias.core.data_dir import resolve_data_dir

    return resolve_data_dir(data_dir or config.data_dir).resolve()


def with_dtype(config: ExperimentConfig, dtype: str | None) -> ExperimentConfig:
    """``config`` with every model in ``dtype`` (evaluation, training, biased models); None leaves it as it is."""
    from dataclasses import replace

    from peft_debias.models.placement import dtype_name

    if dtype is None:
        return config
    name = dtype_name(dtype)
    weights = "float32" if name == "auto" else name  # training has no "auto"
    vector = config.vector and replace(config.vector, biased={**config.vector.biased, "dtype": weights})
    return replace(config, eval={**config.eval, "dtype": name}, train={**config.train, "dtype": weights}, vector=vector)


def run_experiment(
    config: ExperimentConfig,
    output: str | Path | None = None,
    *,
    data_dir: str | Path | None = None,
    dry_run: bool = False,
    report_only: bool = False,
    progress: bool = True,
    keep_biased: bool | None = None,
    shard: tuple[int, int] | None = None,
    device: str = "auto",
    dtype: str | None = None,
) -> ExperimentRun:
    """Run (or continue) the experiment and write its report.

    Args:
        config: the parsed experiment (:func:`~peft_debias.experiment.config.load_experiment_config`).
        output: output folder (default :func:`default_output`); reused across runs (it is the cache).
        data_dir: data folder (default the config's ``data_dir`` or ``$PEFT_DEBIAS_DATA``).
        dry_run: only expand the grid and say which cells are cached; nothing is written.
        report_only: compute nothing; analyse and report the cells that are finished.
        progress: progress bars for training.
        keep_biased: keep the biased models of vector cells (default: the config's ``vector.keep_biased``).
        shard: ``(k, n)``: compute only the cells at grid positions ``k - 1, k - 1 + n, ...``, so that ``n``
            processes sharing ``output`` split the grid; the report covers all finished cells.
        device: where every cell runs (``auto``, ``cpu``, ``cuda[:N]``, ``mps``); not part of the cells' ids.
        dtype: the models' dtype for every evaluation, training and biased model (default: the config's; an
            experiment's ``auto`` is float32 on every machine). It is part of the cells' ids.
    """
    from peft_debias.models.placement import resolve_device

    resolve_device(device)
    config = with_dtype(config, dtype)
    data = resolve_data(config, data_dir)
    out = Path(output) if output is not None else default_output(config)
    cells = expand_grid(config, data)
    run = ExperimentRun(out, cells)
    for cell in cells:
        (run.cached if is_done(out, cell) else run.missing).append(cell.run_id)
    if dry_run:
        return run
    if out.exists() and not out.is_dir():
        raise DebiasError(f"output {out} exists and is not a folder", "choose another --output")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "experiment.json", {
        "config": asdict(config), "data_dir": str(data),
        "cells": [{"run_id": c.run_id, "kind": c.kind, "model": c.model, "axis": c.axis, "config": c.config,
                   "role": c.role, "seed": c.seed} for c in cells],
    }, indent=1)  # fmt: skip
    keep = keep_biased if keep_biased is not None else bool(config.vector and config.vector.keep_biased)
    ctx = RunContext(out, data, progress=progress, keep_biased=keep, device=device)
    if not report_only:
        mine = {c.run_id for i, c in enumerate(cells) if shard is None or i % shard[1] == shard[0] - 1}
        todo = [c for c in cells if c.run_id in run.missing and c.run_id in mine]
        for i, cell in enumerate(todo, start=1):
            if is_done(out, cell):  # finished meanwhile by another process sharing the output folder
                logger.info("cell %d/%d: %s finished elsewhere, not recomputed", i, len(todo), cell.run_id)
                continue
            started = time.perf_counter()
            logger.info("cell %d/%d: %s (%s, %s, seed %s)", i, len(todo), cell.run_id, cell.config, cell.role,
                        cell.seed)  # fmt: skip
            run_cell(cell, ctx)
            run.computed.append(cell.run_id)
            logger.info("cell %s done in %.1f s", cell.run_id, time.perf_counter() - started)
        run.missing = [m for m in run.missing if m not in set(run.computed)]
    results = {}
    for cell in cells:
        result = load_result(out, cell)
        if result is not None:
            results[cell.run_id] = result
    from peft_debias.experiment.analysis import analyse
    from peft_debias.experiment.report import write_outputs

    run.summary = analyse(config, cells, results)
    run.written = write_outputs(run.summary, out)
    return run
