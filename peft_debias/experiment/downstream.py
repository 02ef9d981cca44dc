"""The downstream experiment (a ``downstream:`` block in an experiment YAML): does a frozen debiasing adapter
lower downstream bias beyond its no-swap control, at the same accuracy?

Arms, each fine-tuned with the same task options and the same seeds (seed ``s`` fixes the head's initialisation,
the data order and the upstream training of that seed):

* ``plain``: the classifier on the base model, no adapter;
* ``adapter``: an adapter trained upstream (``upstream:``, :class:`~peft_debias.train.config.TrainConfig` keys) on
  the counterfactually augmented text, frozen during fine-tuning;
* ``control``: the same adapter training on the same sentences without the swaps (``cda: false``), frozen;
* ``vector``: the Bias Vector model ``base - scale x (biased - base)`` (``vector:``: ``biased`` holds
  :class:`~peft_debias.train.biased.BiasedConfig` keys, ``scale`` the lambda) as the starting point.

Example (``recipes/experiments/minilm-winobias-downstream.yaml``)::

    name: minilm-winobias
    downstream:
      model: bundled:minilm
      task: winobias
      seeds: 5
      arms: [plain, adapter, control, vector]
      options: {epochs: 5, lr: 1.0e-4}           # DownstreamConfig keys shared by every arm
      upstream: {method: lora, objective: counterfactual, max_steps: 200}
      vector: {scale: 1.0, biased: {max_steps: 150}}
    targets: {gap_reduction: 0.3, p_value: 0.05, accuracy_within: 1.0}

The output folder is the cache: ``upstream/<arm>-seed<s>/`` (adapters, vector models) and ``runs/<arm>-seed<s>/``
(``peft-debias downstream`` outputs) are reused when the command runs again; ``--shard K/N`` splits the runs over
processes. The analysis is :mod:`peft_debias.experiment.downstream_report`.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from peft_debias.core.errors import DebiasError
from peft_debias.downstream.config import DownstreamConfig
from peft_debias.experiment.config import check_keys

logger = logging.getLogger(__name__)

ARMS = ("plain", "adapter", "control", "vector")
_SET_BY_GRID = ("model", "adapter", "output", "seed", "data_dir", "overwrite")


@dataclass
class DownstreamTargets:
    """What counts as success: the gap shrinks by ``gap_reduction`` (a share of plain fine-tuning's gap) AND
    beyond the control, each with p < ``p_value``, and overall accuracy within ``accuracy_within`` points of plain."""

    gap_reduction: float = 0.3
    p_value: float = 0.05
    accuracy_within: float = 1.0


@dataclass
class DownstreamGrid:
    """A parsed ``downstream:`` experiment."""

    name: str
    model: str
    task: str = "winobias"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2, 3, 4])
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    options: dict[str, Any] = field(default_factory=dict)
    upstream: dict[str, Any] = field(default_factory=dict)
    vector: dict[str, Any] = field(default_factory=dict)
    targets: DownstreamTargets = field(default_factory=DownstreamTargets)
    description: str = ""
    data_dir: str | None = None

    def runs(self) -> list[tuple[str, int]]:
        """(arm, seed) in the order they are computed: seed by seed, so a partial grid stays paired."""
        return [(arm, seed) for seed in self.seeds for arm in self.arms]


def parse_downstream(data: dict[str, Any]) -> DownstreamGrid:
    """Validate an experiment YAML's content with a ``downstream:`` block (one-line errors naming the key)."""
    from peft_debias.train.biased import BiasedConfig
    from peft_debias.train.config import FLAT_KEYS, TrainConfig

    check_keys(data, {"name", "description", "downstream", "targets", "data_dir"}, "the experiment")
    block = dict(data["downstream"] or {})
    check_keys(block, {f.name for f in fields(DownstreamGrid)} - {"name", "targets", "description", "data_dir"},
                "downstream:")  # fmt: skip
    if not block.get("model"):
        raise DebiasError("downstream: has no model", "add model: (a Hub id, local folder or bundled alias)")
    seeds = block.get("seeds", 5)
    block["seeds"] = list(range(seeds)) if isinstance(seeds, int) else [int(s) for s in seeds]
    if len(block["seeds"]) < 2 or len(set(block["seeds"])) != len(block["seeds"]):
        raise DebiasError(f"downstream: seeds {seeds!r}", "give at least two distinct seeds (paired tests need them)")
    arms = block.setdefault("arms", list(ARMS))
    bad = [a for a in arms if a not in ARMS]
    if bad or not arms or "plain" not in arms:
        raise DebiasError(f"downstream: arms {arms!r}", f"list arms from {', '.join(ARMS)}, plain included")
    check_keys(block.get("options") or {}, {f.name for f in fields(DownstreamConfig)} - set(_SET_BY_GRID),
                "downstream: options")  # fmt: skip
    grid_train = {"base", "seed", "cda", "output", "resume", "overwrite", "progress"}
    check_keys(block.get("upstream") or {}, ({f.name for f in fields(TrainConfig)} | set(FLAT_KEYS)) - grid_train,
                "downstream: upstream")  # fmt: skip
    vector = dict(block.get("vector") or {})
    check_keys(vector, {"scale", "biased"}, "downstream: vector")
    check_keys(vector.get("biased") or {}, {f.name for f in fields(BiasedConfig)} - grid_train - {"data_dir"},
                "downstream: vector.biased")  # fmt: skip
    if {"adapter", "control"} & set(arms) and not block.get("upstream"):
        raise DebiasError("downstream: the adapter/control arms need an upstream: block", "add upstream: {...}")
    targets = DownstreamTargets(**_targets(data.get("targets") or {}))
    return DownstreamGrid(
        name=str(data.get("name") or "downstream"), targets=targets, description=str(data.get("description") or ""),
        data_dir=data.get("data_dir"), **block,
    )  # fmt: skip


def _targets(values: dict[str, Any]) -> dict[str, Any]:
    check_keys(values, {f.name for f in fields(DownstreamTargets)}, "targets:")
    return {k: float(v) for k, v in values.items()}


def _done(folder: Path, marker: str) -> bool:
    return (folder / marker).is_file()


def _train_upstream(grid: DownstreamGrid, arm: str, seed: int, folder: Path, data_dir: Path) -> None:
    from peft_debias.experiment.grid import expand_path
    from peft_debias.train.adapter import train_adapter
    from peft_debias.train.config import TrainConfig

    spec = dict(grid.upstream)
    corpus = spec.pop("corpus", [])
    spec["corpus"] = [
        expand_path(c, data_dir, "upstream corpus") for c in ([corpus] if isinstance(corpus, str) else corpus)
    ]
    config = TrainConfig(**spec, base=grid.model, seed=seed, cda=arm == "adapter", output=str(folder), progress=False)
    train_adapter(config)


def _masked_lm_base(model: str, seed: int, folder: Path) -> str:
    """A bare encoder (``all-MiniLM-L6-v2``) as a masked LM: its weights plus a new, seeded MLM head, saved to
    ``folder``, so that the biased copy is fine-tuned from this very model and ``V`` is ``biased - pre``."""
    from transformers import set_seed

    from peft_debias.models.loading import load_model, load_tokenizer

    set_seed(seed)
    load_model(model, kind="masked_lm").model.save_pretrained(folder)
    load_tokenizer(model).save_pretrained(folder)
    return str(folder)


def _vector_model(grid: DownstreamGrid, seed: int, folder: Path, data_dir: Path) -> None:
    """Train the biased copy, take ``V = biased - pre`` and write ``pre - scale x V`` to ``folder``; a bare encoder
    gets a masked-LM head first (:func:`_masked_lm_base`: the head is untrained, see docs/downstream.md)."""
    from peft_debias.models.base_ids import resolve_base_id
    from peft_debias.models.kinds import ModelKind, detect_kind
    from peft_debias.models.loading import load_config
    from peft_debias.train.biased import BiasedConfig, train_biased
    from peft_debias.vector.bias_vector import BiasVector

    work = folder.with_name(folder.name + ".work")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    spec, pre = dict(grid.vector.get("biased") or {}), grid.model
    if detect_kind(load_config(grid.model)) == ModelKind.ENCODER:
        pre = _masked_lm_base(grid.model, seed, work / "pre")
        spec.setdefault("base_model_id", resolve_base_id(grid.model))
    biased = work / "biased"
    train_biased(BiasedConfig(**spec, base=pre, seed=seed, output=str(biased), data_dir=str(data_dir),
                              progress=False))  # fmt: skip
    vector = BiasVector.from_models(pre, str(biased), axis=spec.get("axis", "gender"))
    vector.apply_to(pre, scale=-float(grid.vector.get("scale", 1.0)), output=str(folder))
    shutil.rmtree(work, ignore_errors=True)


def upstream_artifact(grid: DownstreamGrid, arm: str, seed: int, out: Path, data_dir: Path) -> Path | None:
    """The arm's adapter or starting model for ``seed`` (trained once, then read from the cache); None for plain."""
    if arm == "plain":
        return None
    folder = out / "upstream" / f"{arm}-seed{seed}"
    marker = "config.json" if arm == "vector" else "adapter_config.json"
    if not _done(folder, marker):
        started = time.perf_counter()
        if arm == "vector":
            _vector_model(grid, seed, folder, data_dir)
        else:
            _train_upstream(grid, arm, seed, folder, data_dir)
        logger.info("upstream %s seed %d done in %.0f s", arm, seed, time.perf_counter() - started)
    return folder


def run_one(grid: DownstreamGrid, arm: str, seed: int, out: Path, data_dir: Path) -> dict[str, Any]:
    """One fine-tuning run of ``arm`` with ``seed`` (cached in ``runs/<arm>-seed<s>/metrics.json``)."""
    from peft_debias.downstream.run import run_downstream

    folder = out / "runs" / f"{arm}-seed{seed}"
    if not _done(folder, "metrics.json"):
        artifact = upstream_artifact(grid, arm, seed, out, data_dir)
        options = {"save_model": False, **grid.options}
        config = DownstreamConfig(
            **options, task=grid.task, model=str(artifact) if arm == "vector" else grid.model, seed=seed,
            adapter=[str(artifact)] if arm in ("adapter", "control") else [], data_dir=str(data_dir),
            output=str(folder), overwrite=True,
        )  # fmt: skip
        started = time.perf_counter()
        run_downstream(config)
        logger.info("run %s seed %d done in %.0f s", arm, seed, time.perf_counter() - started)
    return json.loads((folder / "metrics.json").read_text(encoding="utf-8"))


def finished_runs(grid: DownstreamGrid, out: Path) -> dict[str, dict[int, dict[str, Any]]]:
    """``{arm: {seed: metrics}}`` of the runs that are finished."""
    found: dict[str, dict[int, dict[str, Any]]] = {arm: {} for arm in grid.arms}
    for arm, seed in grid.runs():
        path = out / "runs" / f"{arm}-seed{seed}" / "metrics.json"
        if path.is_file():
            found[arm][seed] = json.loads(path.read_text(encoding="utf-8"))
    return found


def run_downstream_grid(
    grid: DownstreamGrid,
    output: str | Path,
    *,
    data_dir: str | Path | None = None,
    report_only: bool = False,
    shard: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Compute the missing runs (or this shard's), then analyse every finished one and write ``summary.json`` and
    ``report.md`` into ``output``; returns the summary."""
    from peft_debias.core.data_dir import resolve_data_dir
    from peft_debias.experiment.downstream_report import analyse_downstream, write_downstream_report

    out = Path(output)
    data = resolve_data_dir(data_dir or grid.data_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not report_only:
        for i, (arm, seed) in enumerate(grid.runs()):
            if shard is None or i % shard[1] == shard[0] - 1:
                run_one(grid, arm, seed, out, data)
    summary = analyse_downstream(grid, finished_runs(grid, out))
    write_downstream_report(summary, out)
    return summary
