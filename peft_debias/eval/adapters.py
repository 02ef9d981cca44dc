"""Attach PEFT adapters to a model for evaluation, with plain ``peft.PeftModel.from_pretrained``.

One adapter is attached as is (LoRA, IA3, prefix or prompt tuning). Several: every mergeable adapter (LoRA,
IA3, ...) is loaded and merged into the base weights in turn, then at most one prompt-learning adapter
(prefix / prompt tuning / p-tuning, which cannot be merged) is attached last. The weights each adapter saved
must all find their module in the model: an adapter trained on another architecture (e.g. on
``BertForMaskedLM`` and loaded on a bare ``BertModel``) would otherwise load silently at its initial value.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from peft_debias.core.errors import DebiasError, one_line

if TYPE_CHECKING:
    from peft_debias.loader.checks import AdapterFiles

logger = logging.getLogger(__name__)

_FIT_FIX = "load it on the base model (and model kind, e.g. --kind masked_lm) it was trained for"


def _source(adapter: str) -> str:
    path = Path(adapter).expanduser()
    if path.is_dir():
        if not (path / "adapter_config.json").is_file():
            raise DebiasError(f"adapter folder {path} has no adapter_config.json", "pass a folder saved by peft")
        return str(path)
    if path.exists():
        raise DebiasError(f"adapter {adapter} is a file, not a folder", "pass the folder holding adapter_config.json")
    looks_local = adapter.startswith((".", "/", "~")) or adapter.count("/") > 1
    if looks_local:
        raise DebiasError(f"adapter {adapter} not found", "pass an adapter folder or a Hub repo id (org/name)")
    return adapter  # a Hub repo id


def _saved_keys(source: str) -> set[str] | None:
    """The tensor names an adapter folder saved (None for Hub ids or unreadable files)."""
    folder = Path(source)
    file = folder / "adapter_model.safetensors"
    if not file.is_file():
        return None
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as fh:
        return set(fh.keys())


def _check_fit(peft_model: Any, source: str, adapter_name: str, label: str) -> None:
    from peft_debias.models.methods import adapter_state_dict

    saved = _saved_keys(source)
    if not saved:
        return
    placed = set(adapter_state_dict(peft_model, adapter_name).keys())
    missing = sorted(saved - placed)
    if missing:
        raise DebiasError(
            f"adapter {label} does not fit the model: {len(missing)} of {len(saved)} saved weights have no place "
            f"in it (e.g. {missing[0]})",
            _FIT_FIX,
        )


def _read_config(source: str, label: str) -> Any:
    from peft import PeftConfig

    try:
        return PeftConfig.from_pretrained(source)
    except (OSError, ValueError, json.JSONDecodeError, TypeError) as err:
        raise DebiasError(
            f"cannot read the adapter config of {label}: {one_line(err, 160)}",
            "pass a folder (or Hub repo) saved by peft's save_pretrained",
        ) from err


def read_adapters(adapters: Sequence[str]) -> list[AdapterFiles]:
    """Find and read every adapter (folder or Hub id) with the loader's checks: a missing or broken folder, pickle
    weights, NaN or infinite tensors are refused before any model is loaded."""
    from peft_debias.loader.checks import read_adapter

    for label in adapters:
        _source(label)  # eval's own messages for a missing folder or one without adapter_config.json
    return [read_adapter(label) for label in adapters]


def attach_adapters(
    model: Any, adapters: Sequence[str | AdapterFiles], *, allow_base_mismatch: bool = False
) -> tuple[Any, list[dict[str, Any]]]:
    """Load ``adapters`` (folders, Hub ids, or what :func:`read_adapters` returned) onto ``model``; returns the
    model to use and what was done.

    Each adapter's recorded base must be ``model`` (the check ``merge`` and ``publish`` apply:
    :func:`peft_debias.loader.checks.check_base`, by weights fingerprint, else by id), unless
    ``allow_base_mismatch``. The returned list has one ``{"path", "peft_type", "task_type", "merged"}`` per
    adapter, in load order. Merging changes ``model``'s weights in place.
    """
    if not adapters:
        return model, []
    from peft import PeftModel

    from peft_debias.loader.checks import AdapterFiles, FingerprintCache, check_base

    files = [a if isinstance(a, AdapterFiles) else read_adapters([str(a)])[0] for a in adapters]
    fingerprints = FingerprintCache(model)
    for adapter in files:  # every base checked before merging changes the weights
        check_base(adapter, fingerprints, allow_base_mismatch)
    configs = [(a.source, str(a.path), _read_config(str(a.path), a.source)) for a in files]
    prompt = [c for c in configs if c[2].is_prompt_learning]
    if len(prompt) > 1:
        raise DebiasError(
            f"{len(prompt)} prompt-learning adapters given ({', '.join(c[0] for c in prompt)}); only one can be active",
            "evaluate them one at a time, or combine one with LoRA adapters",
        )
    merge = len(configs) > 1
    info = []
    for i, (label, source, config) in enumerate([c for c in configs if not c[2].is_prompt_learning] + prompt):
        name = f"adapter{i}"
        try:
            peft_model = PeftModel.from_pretrained(model, source, adapter_name=name, is_trainable=False)
        except DebiasError:
            raise
        except Exception as err:
            raise DebiasError(f"adapter {label} does not load on the model: {one_line(err, 200)}", _FIT_FIX) from err
        _check_fit(peft_model, source, name, label)
        merged = merge and not config.is_prompt_learning
        model = peft_model.merge_and_unload() if merged else peft_model
        peft_type = getattr(config.peft_type, "value", config.peft_type)
        task_type = getattr(config.task_type, "value", config.task_type)
        info.append({"path": label, "peft_type": str(peft_type), "task_type": task_type, "merged": merged})
        logger.info("adapter %s (%s) %s", label, peft_type, "merged" if merged else "attached")
    model.eval()
    return model, info
