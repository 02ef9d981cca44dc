"""Write a trained adapter folder: plain PEFT files + ``debias_config.json`` + log + model card, atomically."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peft_debias.cards.adapter import render_adapter_card
from peft_debias.cda.corpora import corpus_provenance
from peft_debias.core.atomic import atomic_output
from peft_debias.core.jsonio import write_json
from peft_debias.core.portable import portable_adapter_config, scrub_local_paths
from peft_debias.core.provenance import sidecar, write_sidecar
from peft_debias.models.base_ids import base_record
from peft_debias.models.placement import dtype_name
from peft_debias.train.config import Trained


def base_model_info(trained: Trained) -> dict[str, Any]:
    """The ``base_model`` entry of a trained artifact's ``debias_config.json``: which base it was trained on, by
    Hub id and weights fingerprint, never by local path (:func:`~peft_debias.models.base_ids.base_record`)."""
    config, loaded = trained.config, trained.loaded
    return {
        **base_record(config.base, loaded.path, config.base_model_id, config.revision),
        "kind": loaded.kind.value,
        "model_type": getattr(loaded.model.config, "model_type", None),
        "weights_fingerprint": trained.base_fingerprint,
        "dtype": dtype_name(loaded.model.dtype),  # what the fingerprints were taken in
    }


def training_setup(trained: Trained) -> dict[str, str]:
    """How the run trained: the main process's device, the dtype of the base's weights, the optimizer."""
    from peft_debias.models.placement import model_device

    config = trained.config
    return {"device": str(model_device(trained.model)), "dtype": config.dtype, "optimizer": config.optimizer}


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
        **_training_data(trained),
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
            **training_setup(trained),
            "beta": objective_options.beta,
            "invariance": objective_options.invariance,
            "regulariser": objective_options.regulariser,
            "seconds_per_step": round(result.seconds_per_step, 4),
        },
        "metrics": {"train_loss": result.train_loss, "eval_loss": result.eval_loss},
        "rank_fingerprints": result.rank_fingerprints,
        "train_config": portable_run_config(config.to_dict(), ("resume", "overwrite", "progress")),
    }
    return sidecar("adapter", fields)


def _training_data(trained: Trained) -> dict[str, Any]:
    """The ``corpus`` and ``cda`` entries: the corpus and its CDA, or for ``equalize`` the templates (by name and
    sha256) and whether the groups were equalized (False: the control)."""
    config, data = trained.config, trained.data
    if config.uses_templates:
        source = {"source": f"equalize templates ({data['data']})", "sha256": data["data_sha256"]}
        return {"corpus": [source], "cda": {"equalized": config.cda, **data}}
    return {
        "corpus": corpus_provenance(config.corpus),
        "cda": {"swapped": config.cda, "mode": config.cda_options.mode, **data},
    }


def portable_run_config(values: dict[str, Any], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """A run's options as recorded in an artifact: ``skip`` left out, the base and output by name, each local
    corpus by its name, and no other local path (:func:`~peft_debias.core.portable.scrub_local_paths`)."""
    out = {k: v for k, v in values.items() if k not in skip}
    if out.get("base"):
        out["base"] = base_record(out["base"], None, out.get("base_model_id"))["name"]
    if out.get("output"):
        out["output"] = Path(out["output"]).name
    out["corpus"] = [Path(c).resolve().name if Path(c).exists() else c for c in out.get("corpus") or []]
    return scrub_local_paths(out)


def save_adapter(model: Any, folder: Path, base_id: str | None, state_dict: dict[str, Any] | None = None) -> None:
    """``model.save_pretrained(folder)``, then ``adapter_config.json`` rewritten to name the base by its Hub id
    (``None`` for a local-only base), never by the local folder peft recorded. ``state_dict``: the whole model's
    weights when the model holds shards only (a sharded run)."""
    model.save_pretrained(str(folder), state_dict=state_dict)
    path = folder / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    write_json(path, portable_adapter_config(config, base_id), indent=2, sort_keys=True)


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
    base_id = info["base_model"]["hub_id"]
    state = trained.result.full_state
    write_folder(trained, info, render_adapter_card(info), lambda folder: save_adapter(model, folder, base_id, state))
