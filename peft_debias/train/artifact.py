"""Write a trained adapter folder: plain PEFT files + ``debias_config.json`` + log + model card, atomically."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peft_debias.cards.adapter import render_adapter_card
from peft_debias.cda.corpora import corpus_provenance
from peft_debias.core.atomic import atomic_output
from peft_debias.core.provenance import sidecar, write_sidecar
from peft_debias.train.config import Trained


def base_model_info(trained: Trained) -> dict[str, Any]:
    """The ``base_model`` entry of a trained artifact's ``debias_config.json``: where the base came from."""
    config, loaded = trained.config, trained.loaded
    return {
        "name": config.base,
        "path": loaded.path,
        "revision": config.revision,
        "kind": loaded.kind.value,
        "model_type": getattr(loaded.model.config, "model_type", None),
        "weights_fingerprint": trained.base_fingerprint,
    }


def adapter_info(trained: Trained, peft_type: str) -> dict[str, Any]:
    """The ``debias_config.json`` content of a trained adapter."""
    config, result, axis = trained.config, trained.result, trained.axis
    options, objective_options = config.method_options, config.objective_options
    method: dict[str, Any] = {"name": config.method, "peft_type": peft_type}
    if config.method == "lora":
        method.update(r=options.r, alpha=options.alpha, dropout=options.dropout, target_modules=options.target_modules)
    elif config.method in ("prefix", "prompt"):
        method.update(num_virtual_tokens=options.num_virtual_tokens)
    fields = {
        "paper": "peftdebias",
        "axis": axis.name if axis is not None else config.axis,
        "classes": list(axis.classes) if axis is not None else [],
        "n_groups": len(axis.groups) if axis is not None else 0,
        "axis_fingerprint": axis.fingerprint if axis is not None else None,
        "method": method,
        "objective": trained.objective,
        "base_model": {**base_model_info(trained), "backbone_fingerprint": trained.backbone_fingerprint},
        "corpus": corpus_provenance(config.corpus),
        "cda": {"swapped": config.cda, "mode": config.cda_options.mode, **trained.data},
        "training": {
            "steps": result.steps,
            "seed": config.seed,
            "lr": config.lr,
            "batch_size": config.batch_size,
            "grad_accum": config.grad_accum,
            "world_size": trained.world,
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
    }
    return sidecar("adapter", fields)


def write_folder(trained: Trained, info: dict[str, Any], card: str, save: Callable[[Path], None]) -> None:
    """Write ``config.output`` (complete or absent): ``save(folder)`` puts the weights there, then
    ``debias_config.json``, the training log and the card ``README.md``."""
    config = trained.config
    with atomic_output(config.output, overwrite=config.overwrite, directory=True) as tmp:
        save(tmp)
        write_sidecar(tmp, info)
        log = trained.work / "training_log.jsonl"
        if log.exists():
            shutil.copyfile(log, tmp / "training_log.jsonl")
        (tmp / "README.md").write_text(card, encoding="utf-8")


def write_artifact(trained: Trained) -> None:
    """Save the adapter folder at ``config.output`` (the loop's default writer)."""
    model = trained.model
    info = adapter_info(trained, str(model.peft_config["default"].peft_type.value))
    write_folder(trained, info, render_adapter_card(info), lambda folder: model.save_pretrained(str(folder)))
