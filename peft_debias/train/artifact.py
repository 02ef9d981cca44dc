"""Write a trained adapter folder: plain PEFT files + ``debias_config.json`` + log + model card, atomically."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from peft_debias.core.atomic import atomic_output
from peft_debias.core.provenance import (
    FORMAT_VERSION,
    corpus_provenance,
    render_adapter_card,
    timestamp,
    versions,
    write_json,
)


def adapter_info(
    config,
    loaded,
    kind,
    objective: str,
    axis,
    cda_stats,
    base_fingerprint: str,
    result,
    world: int,
    peft_type: str,
    backbone_fp: str | None = None,
) -> dict[str, Any]:
    """The ``debias_config.json`` content of a trained adapter."""
    method: dict[str, Any] = {"name": config.method, "peft_type": peft_type}
    options, objective_options = config.method_options, config.objective_options
    if config.method == "lora":
        method.update(r=options.r, alpha=options.alpha, dropout=options.dropout, target_modules=options.target_modules)
    elif config.method in ("prefix", "prompt"):
        method.update(num_virtual_tokens=options.num_virtual_tokens)
    return {
        "format_version": FORMAT_VERSION,
        "artifact": "adapter",
        "paper": "peftdebias",
        "axis": axis.name,
        "classes": list(axis.classes),
        "n_groups": len(axis.groups),
        "axis_fingerprint": axis.fingerprint,
        "method": method,
        "objective": objective,
        "base_model": {
            "name": config.base,
            "path": loaded.path,
            "revision": config.revision,
            "kind": kind.value,
            "model_type": getattr(loaded.model.config, "model_type", None),
            "weights_fingerprint": base_fingerprint,
            "backbone_fingerprint": backbone_fp,
        },
        "corpus": corpus_provenance(config.corpus),
        "cda": {"swapped": config.cda, "mode": config.cda_options.mode, **cda_stats.to_dict()},
        "training": {
            "steps": result.steps,
            "seed": config.seed,
            "lr": config.lr,
            "batch_size": config.batch_size,
            "grad_accum": config.grad_accum,
            "world_size": world,
            "max_length": config.max_length,
            "scheduler": config.scheduler,
            "warmup_ratio": config.warmup_ratio,
            "mixed_precision": config.mixed_precision,
            "beta": objective_options.beta,
            "invariance": objective_options.invariance,
            "regulariser": objective_options.regulariser,
            "seconds_per_step": round(result.seconds_per_step, 4),
        },
        "metrics": {"train_loss": result.train_loss, "eval_loss": result.eval_loss},
        "rank_fingerprints": result.rank_fingerprints,
        "train_config": {k: v for k, v in config.to_dict().items() if k not in ("resume", "overwrite", "progress")},
        "versions": versions(),
        "created": timestamp(),
    }


def write_artifact(
    config,
    work: Path,
    model,
    loaded,
    kind,
    objective,
    axis,
    cda_stats,
    base_fingerprint,
    result,
    world: int,
    backbone_fp: str | None = None,
) -> None:
    """Save the adapter folder at ``config.output`` (complete or absent)."""
    peft_type = str(model.peft_config["default"].peft_type.value)
    info = adapter_info(
        config, loaded, kind, objective, axis, cda_stats, base_fingerprint, result, world, peft_type, backbone_fp
    )
    with atomic_output(config.output, overwrite=config.overwrite, directory=True) as tmp:
        model.save_pretrained(str(tmp))
        write_json(tmp / "debias_config.json", info)
        log = work / "training_log.jsonl"
        if log.exists():
            shutil.copyfile(log, tmp / "training_log.jsonl")
        (tmp / "README.md").write_text(render_adapter_card(info), encoding="utf-8")
