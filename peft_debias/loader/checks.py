"""What :func:`peft_debias.loader.attach.load_debias_adapter` checks before and after it touches a model.

* :func:`read_adapter` finds an adapter (local folder or Hub repo, honouring ``HF_HUB_OFFLINE`` and the Hub cache),
  reads ``adapter_config.json``, the optional ``debias_config.json`` sidecar and the weights (safetensors; a pickle
  ``adapter_model.bin`` only with ``allow_pickle=True``), turning every failure into a one-line :class:`DebiasError`.
* :func:`check_base` compares the adapter's recorded base with the given model: the backbone fingerprint
  (:func:`backbone_fingerprint`, equal across heads), else the full-weights fingerprint, else the model id.
* :func:`map_adapter_keys`, :func:`check_tensors` and :func:`check_landed` make sure that every adapter tensor has a
  place in the model (cross-head key mapping derived from the model structure), that shapes agree, and that after
  loading the model holds exactly the file's tensors: a missing key is an error, never peft's silent warning.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from peft_debias.core.errors import DebiasError, one_line
from peft_debias.core.fingerprints import tensors_fingerprint
from peft_debias.core.hub_ids import is_hub_id
from peft_debias.core.provenance import DEBIAS_CONFIG

logger = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
SAFETENSORS_FILE = "adapter_model.safetensors"
PICKLE_FILE = "adapter_model.bin"
PEFT_PREFIX = "base_model.model."
_MISMATCH_FIX = "pass allow_base_mismatch=True (CLI: --allow-base-mismatch) if you are sure they match"


# ---------------------------------------------------------------------------------------------- fingerprints
def _unwrap_peft(model: torch.nn.Module) -> torch.nn.Module:
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) and hasattr(model, "peft_config") else model


def _backbone_tensors(model: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) of the shared backbone: ``model.base_model`` without the pooler, adapter layers stripped."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    model = _unwrap_peft(model)
    backbone = getattr(model, "base_model", model)
    tuner_layers = {name for name, module in backbone.named_modules() if isinstance(module, BaseTunerLayer)}
    for name, param in backbone.named_parameters():
        if name.split(".", 1)[0] == "pooler":  # built only by some heads (BertModel, *ForSequenceClassification)
            continue
        parts = name.split(".")
        owner = next((i for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in tuner_layers), None)
        if owner is not None:
            if parts[owner : owner + 1] != ["base_layer"]:
                continue  # an adapter's own parameter
            name = ".".join(parts[:owner] + parts[owner + 1 :])
        yield name, param


def backbone_fingerprint(model: torch.nn.Module) -> str:
    """First 16 hex digits of a sha256 over the backbone's sorted (name, dtype, shape, bytes).

    The backbone is ``model.base_model`` (``bert`` in ``BertForMaskedLM``, the model itself for a bare ``BertModel``)
    with names relative to it and without the pooler, so ``XForMaskedLM``, ``XModel``, ``XForSequenceClassification``
    and ``XForTokenClassification`` built from the same weights share one fingerprint. Injected adapter layers
    (a ``PeftModel``) are ignored; the dtype is part of the hash.
    """
    return tensors_fingerprint(_backbone_tensors(model))


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class AdapterFiles:
    """A PEFT adapter read from disk: its config, optional debias sidecar and weights (keys as saved)."""

    source: str
    path: Path
    revision: str | None
    peft_config: dict[str, Any]
    debias: dict[str, Any] | None
    weights: dict[str, torch.Tensor] = field(repr=False)

    @property
    def axis(self) -> str | None:
        return (self.debias or {}).get("axis")

    @property
    def peft_type(self) -> str:
        return str(self.peft_config.get("peft_type", "?"))

    @property
    def prompt_learning(self) -> bool:
        return self.peft_type in ("PREFIX_TUNING", "PROMPT_TUNING", "P_TUNING", "MULTITASK_PROMPT_TUNING", "CARTRIDGE")

    @property
    def method(self) -> str:
        return str((self.debias or {}).get("method", {}).get("name") or self.peft_type.lower())


def _looks_like_repo(source: str) -> bool:
    return is_hub_id(source, namespace_required=True)


def _download(repo: str, revision: str | None, allow_pickle: bool, token: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    patterns = [ADAPTER_CONFIG, SAFETENSORS_FILE, DEBIAS_CONFIG, "README.md"] + ([PICKLE_FILE] if allow_pickle else [])
    where = f"{repo}@{revision}" if revision else repo
    try:
        return Path(snapshot_download(repo, revision=revision, allow_patterns=patterns, token=token))
    except RevisionNotFoundError as err:
        raise DebiasError(
            f"adapter repo {repo} has no revision {revision!r}", "check the branch, tag or commit"
        ) from err
    except (RepositoryNotFoundError, GatedRepoError) as err:
        raise DebiasError(
            f"adapter {where} not found (no local folder and no accessible Hub repo)",
            "check the path or repo id, and log in (HF_TOKEN) for private repos",
        ) from err
    except LocalEntryNotFoundError as err:
        raise DebiasError(
            f"adapter {where} is neither a local folder nor in the Hub cache, and the Hub cannot be reached "
            "(offline, or HF_HUB_OFFLINE=1)",
            "pass a local adapter folder, or download it once while online",
        ) from err
    except (HfHubHTTPError, OSError, ValueError) as err:
        raise DebiasError(
            f"downloading adapter {where} failed: {one_line(err, 200)}", "check the id and network"
        ) from err


def resolve_adapter(
    source: str | os.PathLike, revision: str | None = None, *, allow_pickle: bool = False, token: str | None = None
) -> Path:
    """The local folder of an adapter: ``source`` itself, or a Hub snapshot of repo ``source`` at ``revision``."""
    text = os.fspath(source)
    local = Path(text).expanduser()
    if local.is_dir():
        return local.resolve()
    if local.exists():
        raise DebiasError(f"adapter {text} is a file, not a folder", "pass the folder that holds adapter_config.json")
    if not _looks_like_repo(text):
        raise DebiasError(f"adapter {text} not found", "pass an existing adapter folder or a Hub repo id (org/name)")
    return _download(text, revision, allow_pickle, token)


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DebiasError(
            f"{path} is not valid JSON ({one_line(err, 120)})", "restore the file or re-download"
        ) from err


def _read_weights(folder: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    safe, pickled = folder / SAFETENSORS_FILE, folder / PICKLE_FILE
    if safe.is_file():
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(safe), device="cpu")
        except (SafetensorError, OSError, RuntimeError, ValueError) as err:
            raise DebiasError(
                f"{safe} is corrupted or truncated ({one_line(err, 120)})", "re-download or re-train the adapter"
            ) from err
    if pickled.is_file():
        if not allow_pickle:
            raise DebiasError(
                f"{folder} has only a pickle adapter file ({PICKLE_FILE}), refused as unpickling can run code",
                "convert it to safetensors or pass allow_pickle=True (CLI: --allow-pickle)",
            )
        try:
            return torch.load(pickled, map_location="cpu", weights_only=True)
        except Exception as err:
            raise DebiasError(f"{pickled} is unreadable ({one_line(err, 120)})", "re-download the adapter") from err
    raise DebiasError(
        f"{folder} has no {SAFETENSORS_FILE}",
        "pass a complete adapter folder (a pickle adapter_model.bin is only read with allow_pickle=True)",
    )


def check_finite(weights: dict[str, torch.Tensor], file: Path) -> None:
    """Refuse adapter weights holding NaN or infinite values (a diverged run): they would make every score NaN."""
    for name in sorted(weights):
        tensor = weights[name]
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise DebiasError(
                f"adapter file {file} has non-finite values in tensor {name} ({bad} of {tensor.numel()} NaN or "
                "infinite)",
                "re-train the adapter (lower the learning rate) or use an earlier checkpoint",
            )


def read_adapter(
    source: str | os.PathLike, revision: str | None = None, *, allow_pickle: bool = False, token: str | None = None
) -> AdapterFiles:
    """Find and read an adapter; every problem (missing, not an adapter, bad JSON, corrupted weights) is one line."""
    folder = resolve_adapter(source, revision, allow_pickle=allow_pickle, token=token)
    config_path = folder / ADAPTER_CONFIG
    if not config_path.is_file():
        what = "a model, not an adapter" if (folder / "config.json").is_file() else f"no {ADAPTER_CONFIG}"
        raise DebiasError(f"{folder} holds {what}", "pass a PEFT adapter folder (as written by peft-debias train)")
    config = _read_json(config_path)
    if not isinstance(config, dict) or "peft_type" not in config:
        raise DebiasError(f"{config_path} lacks 'peft_type'", "pass a PEFT adapter folder")
    debias = _read_json(folder / DEBIAS_CONFIG) if (folder / DEBIAS_CONFIG).is_file() else None
    if debias is not None and not isinstance(debias, dict):
        raise DebiasError(f"{folder / DEBIAS_CONFIG} is not a JSON object", "restore the file")
    weights = _read_weights(folder, allow_pickle)
    if not weights:
        raise DebiasError(f"the adapter weights in {folder} are empty", "re-train or re-download the adapter")
    check_finite(weights, folder / (SAFETENSORS_FILE if (folder / SAFETENSORS_FILE).is_file() else PICKLE_FILE))
    return AdapterFiles(os.fspath(source), folder, revision, config, debias, weights)


# ---------------------------------------------------------------------------------------------- base check
def model_id(model: torch.nn.Module) -> str:
    """The id or folder a transformers model was loaded from (``config._name_or_path``), or ``""``."""
    base = _unwrap_peft(model)
    return str(getattr(base, "name_or_path", "") or getattr(getattr(base, "config", None), "_name_or_path", "") or "")


def _same_id(a: str, b: str) -> bool:
    if not a or not b:
        return False
    if a == b:
        return True
    pa, pb = Path(a).expanduser(), Path(b).expanduser()
    try:
        return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()
    except OSError:
        return False


class FingerprintCache:
    """Fingerprints of one model, computed at most once (hashing a large model takes seconds)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self._values: dict[str, str] = {}

    def get(self, kind: str) -> str:
        if kind not in self._values:
            from peft_debias.models.loading import weights_fingerprint

            base = _unwrap_peft(self.model)
            self._values[kind] = backbone_fingerprint(base) if kind == "backbone" else weights_fingerprint(base)
        return self._values[kind]

    def incomparable(self, recorded_dtype: str) -> str | None:
        """Why this model's fingerprints cannot match ones recorded in ``recorded_dtype`` (None when they can):
        it is in another dtype, or some weights are offloaded (a device map put them on disk)."""
        first = next((p for p in self.model.parameters() if p.is_floating_point()), None)
        dtype = "float32" if first is None else str(first.dtype).removeprefix("torch.")
        if dtype != recorded_dtype:
            return f"its base was fingerprinted in {recorded_dtype}, the model is in {dtype}"
        if any(p.device.type == "meta" for p in self.model.parameters()):
            return "the model's weights are partly offloaded"
        return None


def check_base(adapter: AdapterFiles, fingerprints: FingerprintCache, allow_mismatch: bool = False) -> None:
    """Refuse an adapter whose recorded base differs from the model (unless ``allow_mismatch``).

    Order: the recorded backbone fingerprint decides if present; else an equal full-weights fingerprint passes;
    else the recorded ids (``debias_config.json`` hub_id/name, an old record's path, ``base_model_name_or_path``)
    must match the model's (its folder, or that folder's Hub id).
    """
    from peft_debias.models.base_ids import resolve_base_id

    recorded = (adapter.debias or {}).get("base_model") or {}
    name = None if recorded.get("local_only") else recorded.get("name")  # else only the folder's last part
    in_config = adapter.peft_config.get("base_model_name_or_path")
    candidates = (recorded.get("hub_id"), name, recorded.get("path"), in_config)
    ids = [str(v) for v in candidates if v]
    trained_on = ids[0] if ids else "an unrecorded base"
    given = model_id(fingerprints.model) or type(_unwrap_peft(fingerprints.model)).__name__
    problem = None
    why = fingerprints.incomparable(recorded.get("dtype", "float32"))
    if why:  # the fingerprints hash the weights' bytes as loaded: compare the ids instead
        logger.info("adapter %s: %s; checking its base by id", adapter.source, why)
        recorded = {k: v for k, v in recorded.items() if not k.endswith("fingerprint")}
    if recorded.get("backbone_fingerprint"):
        mine = fingerprints.get("backbone")
        if mine != recorded["backbone_fingerprint"]:
            problem = (
                f"adapter {adapter.source} was trained on {trained_on} (backbone fingerprint "
                f"{recorded['backbone_fingerprint']}) but the given model {given} has backbone fingerprint {mine}"
            )
    elif recorded.get("weights_fingerprint") and fingerprints.get("weights") == recorded["weights_fingerprint"]:
        return
    elif ids and model_id(fingerprints.model):
        own = model_id(fingerprints.model)
        own_hub_id = resolve_base_id(own)  # a cache snapshot's or bundled folder's Hub id
        if not any(_same_id(i, own) or (own_hub_id is not None and i == own_hub_id) for i in ids):
            problem = f"adapter {adapter.source} was trained on {trained_on} but the given model is {given}"
    else:
        logger.warning("cannot check the base of adapter %s (no recorded base or no model id)", adapter.source)
    if problem is None:
        return
    if allow_mismatch:
        logger.warning("%s; loading anyway (allow_base_mismatch)", problem)
        return
    raise DebiasError(problem, f"load the adapter on its base model (same weights and dtype), or {_MISMATCH_FIX}")


# ---------------------------------------------------------------------------------------------- tensors
def _candidate_maps(prefix: str) -> list[tuple[str, Any]]:
    """Key rewrites for cross-head loading: as saved, backbone prefix added, backbone prefix dropped."""
    head = f"{PEFT_PREFIX}{prefix}."

    def add(key: str) -> str:
        return key if not key.startswith(PEFT_PREFIX) or key.startswith(head) else head + key[len(PEFT_PREFIX) :]

    def drop(key: str) -> str:
        return PEFT_PREFIX + key[len(head) :] if key.startswith(head) else key

    maps: list[tuple[str, Any]] = [("as saved", lambda key: key)]
    if prefix:
        maps += [(f"with {prefix!r} prefix added", add), (f"without the {prefix!r} prefix", drop)]
    return maps


def map_adapter_keys(
    weights: dict[str, torch.Tensor], expected: set[str], backbone_prefix: str
) -> dict[str, torch.Tensor]:
    """Rename the file's keys to the model's layout (e.g. ``encoder.`` <-> ``bert.encoder.``).

    ``expected`` are the keys the model's adapter produces (``get_peft_model_state_dict``); the rewrite that makes
    the most file keys land there wins, ties going to the keys as saved. Prompt-learning keys are left alone.
    """
    best_name, best, best_hits = "", weights, -1
    for name, rewrite in _candidate_maps(backbone_prefix):
        mapped = {rewrite(key): value for key, value in weights.items()}
        hits = len(expected.intersection(mapped))
        if hits > best_hits:
            best_name, best, best_hits = name, mapped, hits
    if best_name != "as saved":
        logger.info("adapter keys mapped to the model's layout: %s", best_name)
    return best


def check_tensors(
    adapter: AdapterFiles,
    name: str,
    expected: dict[str, torch.Tensor],
    given: dict[str, torch.Tensor],
    model_class: str,
) -> None:
    """Every file tensor must have a place of the same shape in the model, and every model slot a file tensor."""
    extra = sorted(set(given) - set(expected))
    if extra:
        raise DebiasError(
            f"adapter tensor {extra[0]} of {adapter.source} has no place in {model_class} "
            f"({len(extra)} of {len(given)} tensors would not load)",
            "load the adapter into a model of the architecture it was trained on (any head of that base works)",
        )
    missing = sorted(set(expected) - set(given))
    if missing:
        raise DebiasError(
            f"{model_class} expects adapter tensor {missing[0]} for adapter {name!r} but {adapter.source} lacks it "
            f"({len(missing)} missing)",
            "the adapter file is incomplete or its target modules also match this model's head: re-download or "
            "re-train it",
        )
    for key in sorted(expected):
        want, have = tuple(expected[key].shape), tuple(given[key].shape)
        if want != have:
            raise DebiasError(
                f"shape mismatch for adapter tensor {key} of {adapter.source}: the file has {have}, {model_class} "
                f"needs {want}",
                "load the adapter on the base model it was trained on (same hidden size and layers)",
            )


def check_landed(
    adapter: AdapterFiles, loaded: dict[str, torch.Tensor], given: dict[str, torch.Tensor], model_class: str
) -> None:
    """After loading, the model's adapter tensors must equal the file's (cast to the model's dtype)."""
    for key, value in given.items():
        have = loaded.get(key)
        if have is None or not torch.equal(have.detach(), value.to(device=have.device, dtype=have.dtype)):
            raise DebiasError(
                f"adapter tensor {key} of {adapter.source} did not load into {model_class}",
                "report this with the peft and transformers versions; the adapter cannot be used as is",
            )
