"""lm-evaluation-harness tasks for the peft-debias benchmarks: CrowS-Pairs and StereoSet intrasentence, read from
the local data folder. Point ``lm_eval --include_path`` at :func:`tasks_dir` (``python -m
peft_debias.evaluate_modules.lm_eval_tasks`` prints it)."""

from __future__ import annotations

from pathlib import Path

TASKS = tuple(
    f"peft_debias_{bench}{suffix}"
    for bench in ("crows_pairs", "stereoset")
    for suffix in ("", "_gender", "_race", "_religion")
)


def tasks_dir() -> Path:
    """The folder holding the task YAML files, for ``lm_eval --include_path``."""
    return Path(__file__).resolve().parent
