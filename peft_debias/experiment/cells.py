"""Running one cell and caching its result as ``<output>/cells/<run_id>/result.json``.

A cell works in a hidden sibling folder ``cells/.<run_id>.partial/``; when it is complete, ``result.json`` is
written there atomically and the folder is renamed to ``cells/<run_id>/`` in one step. So a ``cells/<run_id>/``
with a ``result.json`` is always a finished cell (never recomputed), and an interrupted cell leaves only its
partial folder. An adapter cell resumes from that folder: training continues from its last checkpoint (bit for
bit the run it would have been, see :mod:`peft_debias.train.adapter`) when every evaluation up to that checkpoint was
saved; otherwise it starts over.

Results hold, per evaluated point (checkpoint ``step`` or vector ``lambda``), the full
:func:`~peft_debias.eval.evaluate_bias` output (per-item decisions included) plus, when asked, the paraphrase
check (:mod:`.paraphrase`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft_debias.core.errors import DebiasError
from peft_debias.core.jsonio import write_json, write_jsonl
from peft_debias.experiment.grid import Cell

logger = logging.getLogger(__name__)

RESULT = "result.json"


@dataclass
class RunContext:
    """What every cell needs besides its spec."""

    output: Path
    data_dir: Path | None
    progress: bool = True
    keep_biased: bool = False
    device: str = "auto"  # where every cell's model runs (not part of any cell's id)


def cell_dir(output: Path, run_id: str) -> Path:
    return Path(output) / "cells" / run_id


def is_done(output: Path, cell: Cell) -> bool:
    """Whether the cell has a finished result."""
    return (cell_dir(output, cell.run_id) / RESULT).is_file()


def load_result(output: Path, cell: Cell) -> dict[str, Any] | None:
    """A finished cell's result, or None."""
    path = cell_dir(output, cell.run_id) / RESULT
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise DebiasError(f"cell result {path} is not valid JSON", "delete that cell folder and run again") from err


def run_cell(cell: Cell, ctx: RunContext) -> dict[str, Any]:
    """Compute one cell and publish ``cells/<run_id>/result.json`` atomically; returns the result."""
    final = cell_dir(ctx.output, cell.run_id)
    partial = final.parent / f".{cell.run_id}.partial"
    started = time.perf_counter()
    body = RUNNERS[cell.kind](cell, ctx, partial)
    result = {
        "run_id": cell.run_id,
        "kind": cell.kind,
        "model": cell.model,
        "axis": cell.axis,
        "config": cell.config,
        "role": cell.role,
        "seed": cell.seed,
        "spec": cell.spec,
        **body,
        "seconds": time.perf_counter() - started,
    }
    partial.mkdir(parents=True, exist_ok=True)
    write_json(partial / RESULT, result, indent=1)
    if final.exists():  # a folder without result.json (e.g. copied by hand): replaced
        shutil.rmtree(final)
    os.replace(partial, final)
    return result


def evaluate_point(model: Any, tokenizer: Any, spec: dict[str, Any], ctx: RunContext) -> dict[str, Any]:
    """The cell's evaluation of one model state: ``evaluate_bias`` plus the optional paraphrase check."""
    from peft_debias.eval.benchmarks import EvalConfig
    from peft_debias.eval.runner import evaluate_bias
    from peft_debias.models.loading import LoadedModel

    ev = spec["eval"]
    config = EvalConfig(**ev["config"], device=ctx.device, progress=None if ctx.progress else False)
    results = evaluate_bias(model, tokenizer, benchmarks=ev["benchmarks"], axes=ev["axes"], data_dir=ctx.data_dir,
                            config=config)  # fmt: skip
    if spec.get("paraphrase"):
        from peft_debias.experiment.paraphrase import paraphrase_check

        net = model.model if isinstance(model, LoadedModel) else model
        tok = model.tokenizer if isinstance(model, LoadedModel) else tokenizer
        results["paraphrase"] = paraphrase_check(net, tok, ev["axes"], batch_size=config.batch_size)
    return results


def _run_baseline(cell: Cell, ctx: RunContext, partial: Path) -> dict[str, Any]:
    from peft_debias.models.loading import load_model

    loaded = load_model(cell.spec["model"], device=ctx.device, dtype=cell.spec["eval"]["config"]["dtype"])
    return {"points": [{"point": "base", "eval": evaluate_point(loaded, None, cell.spec, ctx)}]}


def _point_file(folder: Path, step: int) -> Path:
    return folder / f"step-{step:08d}.json"


def _resumable(partial: Path, steps: list[int]) -> bool:
    """An interrupted adapter cell can resume when its trainer left a checkpoint state and every evaluation up to
    the last checkpoint was saved."""
    from peft_debias.train.work import work_dir

    work = work_dir(partial / "adapter")
    if not (work / "train_config.json").is_file():
        return False
    done = [int(p.name.split("-")[1]) for p in (work / "checkpoints").glob("step-????????")]
    last = max(done, default=0)
    return all(_point_file(partial / "points", s).is_file() for s in steps if s <= last)


def _run_adapter(cell: Cell, ctx: RunContext, partial: Path) -> dict[str, Any]:
    from peft_debias.train.adapter import train_adapter
    from peft_debias.train.config import TrainConfig

    spec, steps = cell.spec, list(cell.spec["steps"])
    resume = _resumable(partial, steps)
    if not resume:
        shutil.rmtree(partial, ignore_errors=True)
    points = partial / "points"
    points.mkdir(parents=True, exist_ok=True)
    config = TrainConfig.from_dict(
        {**spec["train"], "device": ctx.device, **spec.get("runtime", {}), "output": str(partial / "adapter"),
         "resume": resume, "overwrite": not resume, "progress": ctx.progress},
        source=f"cell {cell.run_id}",
    )  # fmt: skip

    def on_step(step: int, model: Any, tokenizer: Any) -> None:
        if step in steps:
            logger.info("%s: evaluating step %d", cell.run_id, step)
            write_json(_point_file(points, step), evaluate_point(model, tokenizer, spec, ctx), indent=1)

    if resume:
        logger.info("%s: resuming the interrupted training", cell.run_id)
    trained = train_adapter(config, step_callback=on_step)
    evaluated = []
    for step in steps:
        evaluated.append({"point": step, "eval": json.loads(_point_file(points, step).read_text(encoding="utf-8"))})
    shutil.rmtree(points)
    return {
        "train": {"steps": trained.steps, "train_loss": trained.train_loss, "eval_loss": trained.eval_loss,
                  "seconds_per_step": trained.seconds_per_step, "resumed": resume,
                  "adapter_fingerprint": (trained.rank_fingerprints or [None])[0]},
        "adapter": "adapter",
        "points": evaluated,
    }  # fmt: skip


def vector_sentences(spec: dict[str, Any]) -> list[str]:
    """The biased model's training text: StereoSet items of the axis filled with ``spec["fill"]`` (stereotype,
    anti-stereotype or unrelated), only the select half when ``train_items`` is ``select`` (the report half is
    then never trained on)."""
    from peft_debias.eval.splits import take_split
    from peft_debias.eval.stereoset import LABELS, items_for_axis, load_stereoset, split_group

    items = items_for_axis(load_stereoset(spec["stereoset_file"]), spec["axis"], spec["stereoset_file"])
    if spec["train_items"] == "select":
        # the evaluation's halves: keyed by template, so no report item shares its stereotype with a trained one
        items = take_split(items, "select", benchmark="stereoset", key=split_group, seed=spec["split_seed"])
    column = LABELS.index(spec["fill"])
    return [" ".join(item.sentences[column].split()) for item in items]


def _run_vector(cell: Cell, ctx: RunContext, partial: Path) -> dict[str, Any]:
    from peft_debias.models.loading import load_model
    from peft_debias.train.biased import BiasedConfig, train_biased
    from peft_debias.vector.bias_vector import BiasVector
    from peft_debias.vector.sweep import SweepConfig, lambda_sweep

    spec = cell.spec
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    sentences = vector_sentences(spec)
    corpus = partial / "train_text.jsonl"
    write_jsonl(corpus, ({"text": s} for s in sentences))
    biased_dir = partial / "biased"
    config = BiasedConfig(
        **{"device": ctx.device, **spec["biased"]}, output=str(biased_dir), corpus=[str(corpus)], progress=ctx.progress
    )
    trained = train_biased(config)
    if config.method == "lora":
        vector = BiasVector.from_adapter(biased_dir, axis=spec["axis"])
    else:
        vector = BiasVector.from_models(spec["model"], str(biased_dir), axis=spec["axis"])
    loaded = load_model(spec["model"], device=ctx.device, dtype=spec["eval"]["config"]["dtype"])
    calls = {"n": 0}

    def evaluate(model: Any, tokenizer: Any) -> dict[str, Any]:
        calls["n"] += 1
        if calls["n"] == 1:  # lambda_sweep evaluates the unchanged base first: that is the baseline cell's job
            return {}
        return evaluate_point(model, tokenizer, spec, ctx)

    sweep = lambda_sweep(loaded.model, loaded.tokenizer, {"v": vector}, evaluate, SweepConfig(list(spec["lambdas"])))
    points = [{"point": lam, "eval": sweep["results"][f"v@{lam:g}"]} for lam in sweep["lambdas"]]
    del vector, loaded
    if not ctx.keep_biased:
        shutil.rmtree(biased_dir, ignore_errors=True)
    return {
        "train": {"steps": trained.steps, "train_loss": trained.train_loss, "eval_loss": trained.eval_loss,
                  "sentences": trained.sentences},
        "biased": "biased" if ctx.keep_biased else None,
        "points": points,
    }  # fmt: skip


RUNNERS = {"baseline": _run_baseline, "adapter": _run_adapter, "vector": _run_vector}
