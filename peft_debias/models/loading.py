"""Model loading: a Hub id, a local folder or a bundled alias -> model, tokenizer and model kind.

Safe defaults: only safetensors weights are read unless ``allow_pickle=True``, remote code never runs unless
``trust_remote_code=True``, and every failure a user can cause is a one-line :class:`DebiasError`.

Bundled aliases (``bundled:minilm``, ``bundled:smollm2``) work offline: see :mod:`peft_debias.models.bundled`.
Model kinds live in :mod:`peft_debias.models.kinds`; both are re-exported here.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import torch

from peft_debias.core.errors import DebiasError, one_line
from peft_debias.core.fingerprints import tensors_fingerprint
from peft_debias.core.hub_ids import is_hub_id
from peft_debias.models.bundled import BUNDLED_PREFIX, bundled_entry, bundled_file, bundled_model_path, list_bundled
from peft_debias.models.kinds import ModelKind, as_kind, detect_kind
from peft_debias.models.placement import (
    Placement,
    check_mapped,
    dtype_name,
    remove_with,
    resolve_placement,
    temporary_offload,
)

logger = logging.getLogger(__name__)

_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt")


@dataclass
class LoadedModel:
    """A model in eval mode and its tokenizer; ``name`` is what the user passed, ``path`` its source."""

    model: Any
    tokenizer: Any
    kind: ModelKind
    name: str
    path: str
    revision: str | None = None
    placement: dict[str, Any] = field(default_factory=dict)  # Resolved.record(): device, dtype, device map


def check_model_name(name: str, *, what: str = "model", allow_pickle: bool = False) -> None:
    """Check a model name before any work, loading, converting or downloading nothing: not empty, a bundled alias
    whose package is installed, a model folder (config.json, no pickle-only weights) or a well-formed Hub id."""
    if not name or not name.strip():
        raise DebiasError(f"{what} name is empty", f"pass a folder, a Hub id or one of {', '.join(list_bundled())}")
    if name.startswith(BUNDLED_PREFIX):
        bundled_file(name, bundled_entry(name))
    elif (source := _resolve(name)).local:
        _check_local_folder(Path(source.path), allow_pickle)


@dataclass(frozen=True)
class _Source:
    path: str
    local: bool
    kind: ModelKind | None = None  # the registry's kind for bundled aliases


def _resolve(name: str) -> _Source:
    if name.startswith(BUNDLED_PREFIX):
        return _Source(str(bundled_model_path(name)), True, bundled_entry(name).kind)
    local = Path(name).expanduser()
    if local.is_dir():
        return _Source(str(local.resolve()), True)
    if local.exists():
        raise DebiasError(f"model {name} is a file, not a folder", "pass the folder that holds config.json")
    if not is_hub_id(name):  # a local path never is one
        raise DebiasError(
            f"model {name} not found",
            f"pass an existing model folder, a Hub id (org/model) or one of {', '.join(list_bundled())}",
        )
    return _Source(name, False)


def _check_local_folder(folder: Path, allow_pickle: bool) -> None:
    config = folder / "config.json"
    if not config.is_file():
        adapter = (folder / "adapter_config.json").is_file()
        what = "an adapter, not a model: load it on its base model" if adapter else "no config.json"
        raise DebiasError(f"{folder} holds {what}", "pass a Hugging Face model folder")
    try:
        json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise DebiasError(f"{config} is not valid JSON: {one_line(err)}", "fix or re-create it") from err
    files = [p.name for p in folder.iterdir() if p.is_file()]
    pickled = any(f.endswith(_PICKLE_SUFFIXES) for f in files)
    if pickled and not allow_pickle and not any(f.endswith(".safetensors") for f in files):
        raise DebiasError(
            f"{folder} has only pickle checkpoints (.bin/.pt/.pth/.ckpt), refused as unpickling can run code",
            "convert to safetensors or pass --allow-pickle / allow_pickle=True",
        )


def _load_error(source: _Source, name: str, err: Exception) -> DebiasError:
    full = " ".join(str(err).split())
    cause = one_line(re.split(r"(?<=[.!?])\s", full, maxsplit=1)[0], 200)  # the first sentence
    if "use_safetensors" in full:
        return DebiasError(
            f"{name} has no safetensors weights and pickle checkpoints are refused",
            "convert to safetensors or pass --allow-pickle / allow_pickle=True",
        )
    if "trust_remote_code" in full:
        return DebiasError(f"{name} needs its own code to load", "pass trust_remote_code=True if you trust it")
    if source.local:
        return DebiasError(f"loading {source.path} failed: {cause}", "check that the model folder is complete")
    return DebiasError(
        f"could not load {name} from the Hugging Face Hub: {cause}",
        "check the id and the connection; with HF_HUB_OFFLINE=1 only models already in the Hub cache load, "
        "so pass a local folder or a bundled: alias instead",
    )


def _load_tokenizer(source: _Source, name: str, revision: str | None, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(source.path, revision=revision, trust_remote_code=trust_remote_code)
    except Exception as err:
        raise _load_error(source, name, err) from err
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(name: str, revision: str | None = None, trust_remote_code: bool = False) -> Any:
    """Load only the tokenizer of ``name`` (Hub id, folder or bundled alias); with no pad token, pad = eos."""
    return _load_tokenizer(_resolve(name), name, revision, trust_remote_code)


def _kind_or_none(config: Any) -> ModelKind | None:
    try:
        return detect_kind(config)
    except DebiasError:
        return None


def _no_conversion():
    """Without this, transformers asks a Hub bot to convert pickle-only repos: a remote side effect."""
    return mock.patch.dict(os.environ, {"DISABLE_SAFETENSORS_CONVERSION": "1"})


def _config(source: _Source, name: str, revision: str | None, trust_remote_code: bool, extra: dict) -> Any:
    from transformers import AutoConfig

    try:
        with _no_conversion():
            return AutoConfig.from_pretrained(
                source.path, revision=revision, trust_remote_code=trust_remote_code, **extra
            )
    except Exception as err:
        raise _load_error(source, name, err) from err


def load_config(
    name: str, *, revision: str | None = None, allow_pickle: bool = False, trust_remote_code: bool = False
) -> Any:
    """Only the transformers config of ``name`` (no weights), with the checks :func:`load_model` makes first:
    enough to refuse settings the model cannot hold before anything large loads."""
    source = _resolve(name)
    if source.local:
        _check_local_folder(Path(source.path), allow_pickle)
    return _config(source, name, revision, trust_remote_code, {})


def _warn_untrained_head(name: str, config: Any, wanted: ModelKind, detected: ModelKind | None) -> None:
    """Warn when a masked LM is asked of a checkpoint whose MLM head is not trained (a bare encoder)."""
    architectures = list(getattr(config, "architectures", None) or [])
    mlm_head = any(a.endswith(("ForMaskedLM", "ForPreTraining")) for a in architectures)
    if wanted is ModelKind.MASKED_LM and (detected is ModelKind.ENCODER or (architectures and not mlm_head)):
        logger.warning(
            "%s (%s) has no trained masked-LM head: the head is built untrained, so fill-mask predictions "
            "and MLM-based scores on it are not meaningful",
            name,
            ", ".join(architectures) or config.model_type,
        )


def load_model(
    name: str,
    kind: ModelKind | str | None = None,
    *,
    revision: str | None = None,
    device: str = "auto",
    dtype: str | torch.dtype = "auto",
    device_map: str | None = None,
    max_memory: dict[str, str] | None = None,
    offload_folder: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    num_labels: int | None = None,
) -> LoadedModel:
    """Load a model and its tokenizer, in eval mode.

    Args:
        name: a Hub id (``org/model``), a local model folder, or a bundled alias (see :func:`list_bundled`).
        kind: masked_lm, causal_lm or encoder (bare hidden states); ``None`` detects it (:func:`detect_kind`).
            masked_lm on a bare encoder works, but its MLM head is untrained (a warning says so).
        revision: Hub branch, tag or commit.
        device: ``auto`` (the accelerator if present, else the CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``;
            the weights load straight onto it.
        dtype: ``auto`` (the checkpoint's dtype on an accelerator, float32 on the CPU), ``float32``, ``bfloat16``,
            ``float16`` (or ``fp32``/``bf16``/``fp16``, or a torch dtype).
        device_map: ``"auto"``: accelerate spreads the model over the devices, the CPU and disk (instead of
            ``device``); ``max_memory`` caps each (``{"cpu": "2GiB", "0": "20GiB"}``), ``offload_folder`` takes
            what fits nowhere (default: a temporary folder removed with the model).
        allow_pickle: also read ``.bin``/``.pt`` pickle checkpoints (safetensors are still preferred).
        trust_remote_code: run code shipped with the model; off by default.
        num_labels: set on the config, for a classification head built from it later.
    """
    from transformers import AutoModel, AutoModelForCausalLM, AutoModelForMaskedLM

    placement = Placement(device, dtype_name(dtype), device_map, max_memory, offload_folder).check()
    source = _resolve(name)
    if source.local:
        _check_local_folder(Path(source.path), allow_pickle)
    extra = {} if num_labels is None else {"num_labels": num_labels}
    config = _config(source, name, revision, trust_remote_code, extra)
    no_conversion = _no_conversion()
    detected = source.kind or (detect_kind(config) if kind is None else _kind_or_none(config))
    wanted = as_kind(kind) if kind is not None else detected
    _warn_untrained_head(name, config, wanted, detected)
    auto = {ModelKind.MASKED_LM: AutoModelForMaskedLM, ModelKind.CAUSAL_LM: AutoModelForCausalLM}
    resolved, offload = temporary_offload(resolve_placement(placement, config))
    try:
        with no_conversion:
            model = auto.get(wanted, AutoModel).from_pretrained(
                source.path,
                config=config,
                revision=revision,
                **resolved.load_kwargs(),
                # use_safetensors=False would make transformers skip safetensors files; None prefers them.
                use_safetensors=None if allow_pickle else True,
                trust_remote_code=trust_remote_code,
            )
    except Exception as err:
        if offload is not None:
            shutil.rmtree(offload, ignore_errors=True)
        if "Unrecognized configuration class" in str(err):
            raise DebiasError(
                f"{name} ({config.model_type}) has no {wanted.value} architecture in transformers",
                f"pass another kind{f' (it looks like {detected.value})' if detected else ''}",
            ) from err
        raise _load_error(source, name, err) from err
    tokenizer = _load_tokenizer(source, name, revision, trust_remote_code)
    if wanted is ModelKind.CAUSAL_LM and getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
        generation = getattr(model, "generation_config", None)
        if generation is not None and generation.pad_token_id is None:
            generation.pad_token_id = tokenizer.pad_token_id
    model.eval()
    remove_with(model, offload)
    check_mapped(model, name)
    record = resolved.record(model)
    logger.info("loaded %s as %s from %s (%s)", name, wanted.value, source.path, record)
    return LoadedModel(model, tokenizer, wanted, name, source.path, revision, record)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """First 16 hex digits of a sha256 over the sorted (name, dtype, shape, bytes) of the state dict."""
    return tensors_fingerprint(model.state_dict().items())
