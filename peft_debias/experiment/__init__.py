"""A reproducible experiment harness: seeded grids with no-swap controls, select/report splits, paired tests.

One YAML file (:mod:`.config`; examples in ``recipes/experiments/``) describes a grid of base model x axis x
method x objective x searched values x seed, each treatment with a control trained identically without the
counterfactual swaps, plus optional Bias Vector cells over lambda. :func:`run_experiment` computes every cell
not yet cached under ``<output>/cells/<run_id>/`` (run ids: :mod:`.grid`), picks steps / lambdas / the best
configuration on the select half of the benchmark items (:mod:`.splits`), reports the report half with seed-level
intervals and paired tests (:mod:`.stats`, :mod:`.analysis`) and writes ``report.md`` with charts (:mod:`.report`).
``peft-debias experiment --config FILE.yaml`` is the command line.
"""

from __future__ import annotations

from peft_debias.experiment.config import ExperimentConfig, load_experiment_config
from peft_debias.experiment.grid import Cell, expand_grid
from peft_debias.experiment.runner import ExperimentRun, run_experiment

__all__ = ["Cell", "ExperimentConfig", "ExperimentRun", "expand_grid", "load_experiment_config", "run_experiment"]
