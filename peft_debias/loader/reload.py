"""Reload a fine-tuned model saved with its debiasing adapters (the layout of :mod:`peft_debias.loader.saving`).

:func:`load_downstream` builds the transformers class named in the root ``config.json``, loads the fine-tuned
weights, and puts every adapter of ``adapters/<name>/`` back with
:func:`~peft_debias.loader.attach.load_debias_adapter`, in the saved order and activation: the outputs equal those
of the model that was saved, bit for bit. The root weights may be transformers' (``save_pretrained``) or the full
``PeftModel`` state dict that ``accelerator.save_model(model, dir)`` writes over them; both load strictly.

(This lives apart from :mod:`~peft_debias.loader.saving` because ``attach`` imports the saving side.)
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from peft_debias.core.errors import DebiasError, one_line
from peft_debias.loader.attach import MODES, _set_trainability, load_debias_adapter
from peft_debias.loader.saving import ADAPTERS_DIR, FORMAT, FORMAT_VERSION, MARKER, ROOT_WEIGHTS

ROOT_INDEX = "model.safetensors.index.json"

logger = logging.getLogger(__name__)


def _not_downstream(folder: Path) -> DebiasError:
    if (folder / "adapter_config.json").is_file():
        return DebiasError(
            f"{folder} is an adapter folder, not a fine-tuned model saved with its adapters (no {MARKER})",
            "load it into a model with peft_debias.load_debias_adapter(model, folder)",
        )
    if (folder / "config.json").is_file():
        return DebiasError(
            f"{folder} is a plain transformers model (config.json without {MARKER})",
            "load it with transformers' AutoModelFor....from_pretrained(folder)",
        )
    return DebiasError(
        f"{folder} has no {MARKER}", "pass a folder written by save_pretrained of a model with debiasing adapters"
    )


def read_downstream(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``downstream.json`` of a downstream folder (format, version, adapter folders present)."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DebiasError(f"{folder} is not a folder", "pass the folder written by save_pretrained")
    marker = folder / MARKER
    if not marker.is_file():
        raise _not_downstream(folder)
    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DebiasError(f"{marker} is not valid JSON ({one_line(err, 120)})", "save the model again") from err
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise DebiasError(f"{marker} is not a peft-debias downstream record", "save the model again")
    if info.get("format_version") != FORMAT_VERSION:
        raise DebiasError(
            f"{marker} has format version {info.get('format_version')!r}; this peft-debias reads {FORMAT_VERSION}",
            "install the peft-debias version that wrote it",
        )
    names = info.get("adapters")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise DebiasError(f"{marker} lists no adapters", "save the model again")
    for name in names:
        if not (folder / ADAPTERS_DIR / name / "adapter_config.json").is_file():
            raise DebiasError(
                f"adapter {name!r} listed in {marker} is missing ({ADAPTERS_DIR}/{name}/ has no adapter_config.json)",
                "copy the whole folder, adapters/ included, or save the model again",
            )
    if not (folder / "config.json").is_file():
        raise DebiasError(f"{folder} lacks config.json", "copy the whole folder or save the model again")
    return info


def _model_class(folder: Path) -> tuple[Any, Any]:
    import transformers
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(folder))
    names = getattr(config, "architectures", None) or []
    cls = getattr(transformers, names[0], None) if names else None
    if cls is None:
        raise DebiasError(
            f"{folder}/config.json names no transformers model class ({names or 'no architectures'})",
            "save the model again with a transformers model inside",
        )
    return cls, config


def _root_files(folder: Path) -> list[Path]:
    """The root weight files: ``model.safetensors``, or the shards of ``model.safetensors.index.json`` (the newer of
    the two when both exist, e.g. after ``accelerator.save_model`` sharded a large model over a single file)."""
    single, index = folder / ROOT_WEIGHTS, folder / ROOT_INDEX
    if index.is_file() and (not single.is_file() or index.stat().st_mtime >= single.stat().st_mtime):
        try:
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, AttributeError) as err:
            raise DebiasError(f"{index} is unreadable ({one_line(err, 120)})", "save the model again") from err
        return [folder / shard for shard in shards]
    if not single.is_file():
        raise DebiasError(f"{folder} lacks {ROOT_WEIGHTS}", "copy the whole folder or save the model again")
    return [single]


def _peft_layout(files: list[Path]) -> bool:
    """Whether the root weights hold a ``PeftModel`` state dict (``accelerator.save_model``) instead of
    transformers' own."""
    from safetensors import safe_open

    names: list[str] = []
    for file in files:
        with safe_open(str(file), framework="pt") as handle:
            names.extend(handle.keys())
    return any(key.startswith("base_model.") for key in names)


def _load_strict(model: torch.nn.Module, files: list[Path]) -> None:
    """Load a ``PeftModel`` state dict from the root weights; only tensors tied to a loaded one may be absent."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file), device="cpu"))
    own = model.state_dict()
    unexpected = sorted(set(state) - set(own))
    by_storage = {own[k].untyped_storage().data_ptr() for k in state if k in own}
    missing = sorted(k for k in set(own) - set(state) if own[k].untyped_storage().data_ptr() not in by_storage)
    if unexpected or missing:
        key = (unexpected or missing)[0]
        raise DebiasError(
            f"the root weights of {files[0].parent} do not match the model with its adapters: "
            f"{'unexpected' if unexpected else 'missing'} tensor {key} ({len(unexpected)} unexpected, "
            f"{len(missing)} missing)",
            "save the model again with save_pretrained",
        )
    with torch.no_grad():
        for key, value in state.items():
            own[key].copy_(value)
    logger.info("root weights read as a PeftModel state dict (accelerator.save_model) from %s", files[0].parent)


def _base(folder: Path, accelerate_layout: bool) -> torch.nn.Module:
    cls, config = _model_class(folder)
    if accelerate_layout:
        return cls._from_config(config, dtype=getattr(config, "dtype", None))
    model, info = cls.from_pretrained(str(folder), output_loading_info=True)
    wrong = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
    if wrong:
        kind, keys = next(iter(wrong.items()))
        raise DebiasError(
            f"{folder / ROOT_WEIGHTS} does not fit {cls.__name__}: {kind.replace('_', ' ')} {sorted(keys)[0]}",
            "save the model again with save_pretrained",
        )
    return model


class _DropMismatch(logging.Filter):
    """Drops the base-mismatch warnings of :mod:`peft_debias.loader.checks`: here the base was fine-tuned after
    the adapters were trained, so its fingerprint differs from the recorded one by design."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "allow_base_mismatch" not in record.getMessage()


@contextlib.contextmanager
def _expected_mismatch() -> Iterator[None]:
    checks, dropped = logging.getLogger("peft_debias.loader.checks"), _DropMismatch()
    checks.addFilter(dropped)
    try:
        yield
    finally:
        checks.removeFilter(dropped)
    logger.info("adapters re-attached to the fine-tuned base (its fingerprint differs from their recorded base)")


def load_downstream(path: str | os.PathLike, *, mode: str = "inference") -> Any:
    """Reload a fine-tuned model saved with ``save_pretrained`` of a model from ``load_debias_adapter``.

    Args:
        path: the folder (``downstream.json``, ``config.json``, ``model.safetensors``, ``adapters/<name>/``).
        mode: ``inference`` (everything frozen, eval mode) or ``freeze`` (adapters frozen, base model and head
            trainable: ready to fine-tune further, in train mode).

    Returns:
        The ``PeftModel`` with every saved adapter, in the saved order and activation; its outputs equal the
        saved model's.

    Raises:
        DebiasError: not a downstream folder (an adapter folder or a plain model is named as such), an unknown
            format version, a missing adapter folder, root weights that do not fit the model.
    """
    if mode not in MODES or mode == "merge":
        raise DebiasError(f"unknown mode {mode!r} for load_downstream", "use mode='inference' or mode='freeze'")
    folder = Path(path).expanduser()
    info = read_downstream(folder)
    names = list(info["adapters"])
    files = _root_files(folder)
    accelerate_layout = _peft_layout(files)
    model = _base(folder, accelerate_layout)
    freeze_norm = bool(info.get("freeze_layer_norm", False))
    with _expected_mismatch():
        peft_model = load_debias_adapter(
            model,
            [str(folder / ADAPTERS_DIR / name) for name in names],
            mode=mode,
            adapter_name=names,
            allow_base_mismatch=True,  # the base was fine-tuned after the adapters were trained
            freeze_layer_norm=freeze_norm,
        )
    active = [n for n in info.get("active", names) if n in names] or names
    if list(peft_model.active_adapters) != active:
        peft_model.base_model.set_adapter(active if len(active) > 1 else active[0])
        _set_trainability(peft_model, mode, freeze_norm)
    if accelerate_layout:
        _load_strict(peft_model, files)
    peft_model.train(mode == "freeze")
    return peft_model
