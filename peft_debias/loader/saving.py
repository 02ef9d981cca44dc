"""Saving a fine-tuned model that carries frozen debiasing adapters: the whole model, not only the adapters.

:func:`peft_debias.loader.attach.load_debias_adapter` (freeze and inference modes) returns one of the
``Downstream*`` classes below: the ``PeftModel`` class peft picked, with :meth:`DownstreamSaveMixin.save_pretrained`
replaced. ``model.save_pretrained(dir)``, ``Trainer.save_model(dir)`` and
``accelerator.unwrap_model(model).save_pretrained(dir, is_main_process=..., save_function=accelerator.save)``
then write::

    dir/config.json, model.safetensors   the fine-tuned base model + task head as a plain transformers model
    dir/adapters/<name>/                 each adapter: adapter_config.json, adapter_model.safetensors,
                                         debias_config.json
    dir/downstream.json                  format marker: adapter order, active adapters, peft type, ...
    dir/README.md                        a model card naming the adapters and how to reload

``AutoModelFor...from_pretrained(dir)`` loads the root: the fine-tuned model WITHOUT the adapters.
:func:`peft_debias.loader.reload.load_downstream` rebuilds the model with its adapters, bit for bit. Peft's
own adapter-only save stays available as ``peft.PeftModel.save_pretrained(model, dir)``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, PeftModelForCausalLM, PeftModelForFeatureExtraction, PeftModelForSeq2SeqLM

from peft_debias.core.errors import DebiasError
from peft_debias.core.jsonio import write_json
from peft_debias.core.portable import is_local_path, portable_adapter_config, scrub_local_paths
from peft_debias.core.provenance import DEBIAS_CONFIG

logger = logging.getLogger(__name__)

MARKER = "downstream.json"
FORMAT = "peft-debias-downstream"
FORMAT_VERSION = 1
ADAPTERS_DIR = "adapters"
ROOT_WEIGHTS = "model.safetensors"
RECORDS = "_debias_records"  # model attribute: adapter name -> what was loaded under that name
FREEZE_NORM = "_debias_freeze_layer_norm"


def adapter_record(adapter: Any) -> dict[str, Any]:
    """What to remember of an :class:`~peft_debias.loader.checks.AdapterFiles` loaded into a model: its
    ``debias_config.json`` (a copy), source (no local path), axis, method and recorded base id."""
    base = (adapter.debias or {}).get("base_model") or {}
    base_id = base.get("hub_id") or base.get("name") or adapter.peft_config.get("base_model_name_or_path")
    return scrub_local_paths(
        {
            "source": adapter.source,
            "axis": adapter.axis,
            "method": adapter.method,
            "peft_type": adapter.peft_type,
            "base_model": base_id,
            "debias": dict(adapter.debias) if adapter.debias else None,
        }
    )


def _tuner_modules(module: torch.nn.Module) -> set[str]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return {name for name, sub in module.named_modules() if isinstance(sub, BaseTunerLayer)}


def _plain_name(name: str, tuners: set[str]) -> str | None:
    """A parameter name of the injected model as the plain model has it (``q.base_layer.weight`` -> ``q.weight``),
    or None for an adapter's own tensor (``q.lora_A.gender.weight``)."""
    parts = name.split(".")
    owner = next((i for i in range(len(parts) - 1, 0, -1) if ".".join(parts[:i]) in tuners), None)
    if owner is None:
        return name
    if parts[owner] != "base_layer":
        return None
    return ".".join(parts[:owner] + parts[owner + 1 :])


def base_prefix(peft_model: torch.nn.Module) -> str:
    """Where the transformers model sits in the ``PeftModel``'s state dict (``base_model.model.`` for LoRA / IA3,
    ``base_model.`` for prefix / prompt tuning), found from the module tree."""
    base = peft_model.get_base_model()
    for name, module in peft_model.named_modules():
        if module is base:
            return f"{name}." if name else ""
    raise DebiasError("the PeftModel does not contain its base model", "report this with the peft version")


def plain_state_dict(peft_model: Any, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The fine-tuned transformers model's tensors under its own key names: adapter tensors removed, peft's
    ``base_layer`` wrappers folded back. ``state_dict`` (a full ``PeftModel`` state dict, as Trainer passes under
    FSDP / DeepSpeed) is used when given, else the model's own."""
    base = peft_model.get_base_model()
    if any(type(m).__name__ == "ModulesToSaveWrapper" for m in base.modules()):
        raise DebiasError(
            "the adapters carry modules_to_save copies, which the downstream layout cannot fold back",
            "save with peft.PeftModel.save_pretrained(model, dir), or merge the adapters first",
        )
    prefix, tuners = base_prefix(peft_model), _tuner_modules(base)
    source = peft_model.state_dict() if state_dict is None else state_dict
    clean: dict[str, torch.Tensor] = {}
    for name in base.state_dict():
        plain = _plain_name(name, tuners)
        if plain is None:
            continue
        if prefix + name not in source:
            raise DebiasError(
                f"the state dict to save lacks {prefix + name}",
                "pass the full PeftModel state dict (or none) to save_pretrained",
            )
        clean[plain] = source[prefix + name]
    return clean


def _adapter_names(peft_model: Any) -> list[str]:
    return list(peft_model.peft_config)


def downstream_info(peft_model: Any) -> dict[str, Any]:
    """The ``downstream.json`` record of a model with adapters."""
    from peft_debias.core.version import __version__

    records = getattr(peft_model, RECORDS, {})
    names = _adapter_names(peft_model)
    types = {str(getattr(c.peft_type, "value", c.peft_type)) for c in peft_model.peft_config.values()}
    bases = sorted({str(r["base_model"]) for r in records.values() if r.get("base_model")})
    return scrub_local_paths(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "adapters": names,
            "active": [n for n in peft_model.active_adapters if n in names],
            "peft_type": types.pop() if len(types) == 1 else sorted(types),
            "freeze_layer_norm": bool(getattr(peft_model, FREEZE_NORM, False)),
            "base_model": bases[0] if len(bases) == 1 else (bases or None),
            "model_class": type(peft_model.get_base_model()).__name__,
            "root_weights": "transformers",
            "peft_debias_version": __version__,
        }
    )


def _save_adapter(peft_model: Any, folder: Path, name: str, state_dict: dict[str, torch.Tensor] | None) -> None:
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    tensors = get_peft_model_state_dict(peft_model, state_dict=state_dict, adapter_name=name)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = peft_model.peft_config[name]
    kept = config.inference_mode
    config.inference_mode = True
    try:
        config.save_pretrained(str(folder))
    finally:
        config.inference_mode = kept
    written = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    base_id = written.get("base_model_name_or_path")
    local = base_id is not None and (is_local_path(base_id) or Path(base_id).expanduser().exists())
    write_json(folder / "adapter_config.json", portable_adapter_config(written, None if local else base_id))
    record = getattr(peft_model, RECORDS, {}).get(name) or {}
    if record.get("debias"):
        write_json(folder / DEBIAS_CONFIG, scrub_local_paths(record["debias"]))


def save_downstream(
    peft_model: Any,
    save_directory: str | os.PathLike,
    state_dict: dict[str, torch.Tensor] | None = None,
    is_main_process: bool = True,
    save_function: Callable[..., Any] | None = None,
) -> None:
    """Write the downstream layout (see the module docstring) of ``peft_model`` into ``save_directory``."""
    from peft_debias.cards.downstream import render_downstream_card

    if not is_main_process:  # the other ranks' state dicts may be partial (ZeRO-3): they write nothing
        return
    folder = Path(save_directory)
    if folder.is_file():
        raise DebiasError(f"{folder} is a file", "pass a folder to save_pretrained")
    clean = plain_state_dict(peft_model, state_dict)
    if save_function is not None:  # transformers >= 5 always writes safetensors itself; so do the adapters
        logger.debug("save_function ignored: the downstream layout is written as safetensors")
    folder.mkdir(parents=True, exist_ok=True)
    for stale in ("adapter_config.json", "adapter_model.safetensors"):  # an adapter-only save's root files
        if (folder / stale).is_file():
            logger.info("removing %s from %s: the root would read as an adapter", stale, folder)
            (folder / stale).unlink()
    base = peft_model.get_base_model()
    base.save_pretrained(str(folder), state_dict=clean, is_main_process=True)
    for name in _adapter_names(peft_model):
        _save_adapter(peft_model, folder / ADAPTERS_DIR / name, name, state_dict)
    info = downstream_info(peft_model)
    write_json(folder / MARKER, info)
    records = getattr(peft_model, RECORDS, {})
    adapters = [{"name": n, **(records.get(n) or {"source": "?"})} for n in info["adapters"]]
    (folder / "README.md").write_text(render_downstream_card(info, adapters, folder.resolve().name), "utf-8")
    logger.info("saved the fine-tuned model with adapters %s to %s", ", ".join(info["adapters"]), folder)


class DownstreamSaveMixin:
    """``save_pretrained`` writes the whole fine-tuned model plus its adapters (module docstring), not only the
    adapters as peft does."""

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        state_dict: dict[str, torch.Tensor] | None = None,
        is_main_process: bool = True,
        save_function: Callable[..., Any] | None = None,
        safe_serialization: bool = True,
        **kwargs: Any,
    ) -> None:
        """Save the fine-tuned base model and task head (root, loadable with ``AutoModelFor...``), the adapters
        (``adapters/<name>/``), ``downstream.json`` and a model card; reload with ``load_downstream``.

        Args:
            save_directory: the folder (created if needed).
            state_dict: the full ``PeftModel`` state dict to save instead of the model's own (Trainer under FSDP /
                DeepSpeed passes one).
            is_main_process: only the main process writes.
            save_function: accepted for compatibility (accelerate passes ``accelerator.save``); the files are
                safetensors, which transformers >= 5 writes itself.
            safe_serialization: must stay True (the layout is safetensors only).
            **kwargs: ignored peft / transformers options (logged).
        """
        if not safe_serialization:
            raise DebiasError(
                "safe_serialization=False is not supported for a model with debiasing adapters",
                "save as safetensors (the default)",
            )
        if kwargs:
            logger.info("save_pretrained options ignored for the downstream layout: %s", ", ".join(sorted(kwargs)))
        save_downstream(self, save_directory, state_dict, is_main_process, save_function)


class DownstreamPeftModel(DownstreamSaveMixin, PeftModel):
    """A ``PeftModel`` with frozen debiasing adapters whose ``save_pretrained`` saves the whole model."""


class DownstreamPeftModelForFeatureExtraction(DownstreamSaveMixin, PeftModelForFeatureExtraction):
    """``PeftModelForFeatureExtraction`` (classifiers, encoders) whose ``save_pretrained`` saves the whole model."""


class DownstreamPeftModelForCausalLM(DownstreamSaveMixin, PeftModelForCausalLM):
    """``PeftModelForCausalLM`` whose ``save_pretrained`` saves the whole model."""


class DownstreamPeftModelForSeq2SeqLM(DownstreamSaveMixin, PeftModelForSeq2SeqLM):
    """``PeftModelForSeq2SeqLM`` whose ``save_pretrained`` saves the whole model."""


_CLASSES: dict[type, type] = {
    PeftModel: DownstreamPeftModel,
    PeftModelForFeatureExtraction: DownstreamPeftModelForFeatureExtraction,
    PeftModelForCausalLM: DownstreamPeftModelForCausalLM,
    PeftModelForSeq2SeqLM: DownstreamPeftModelForSeq2SeqLM,
}


def adopt(peft_model: Any, records: dict[str, dict[str, Any]], freeze_layer_norm: bool) -> Any:
    """Give ``peft_model`` the downstream ``save_pretrained`` (its class becomes the matching ``Downstream*``
    subclass) and remember what was loaded under each adapter name. Unknown peft wrappers are left as they are."""
    cls = type(peft_model)
    if not isinstance(peft_model, DownstreamSaveMixin):
        target = _CLASSES.get(cls)
        if target is None:
            logger.warning("%s keeps peft's adapter-only save_pretrained (no downstream subclass)", cls.__name__)
            return peft_model
        peft_model.__class__ = target
    known = dict(getattr(peft_model, RECORDS, {}))
    known.update(records)
    peft_model.__dict__[RECORDS] = known
    peft_model.__dict__[FREEZE_NORM] = bool(freeze_layer_norm or getattr(peft_model, FREEZE_NORM, False))
    return peft_model
