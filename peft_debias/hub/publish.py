"""Publish an artifact folder to the Hugging Face Hub: validated first, one commit, with its model card.

:func:`publish_artifact` takes a folder written by peft-debias (a debiasing adapter from ``train``, a bias vector,
a debiased model or negated adapter from ``vector``, a merged model from ``merge``), checks it, renders its model
card from ``model_cards/`` (Hub metadata, tags, and the evaluation results as a ``model-index`` when a results file
is given) and uploads the folder with the rendered ``README.md`` in ONE commit (``HfApi.create_commit``): the Hub
applies a commit all or nothing, so a failed upload leaves the repo as it was. The local folder is only read.

Checks before any request: the repo id (no path tricks), the revision, the artifact's files, and (unless
``check_load=False``) that an adapter loads on its recorded base model, every tensor landing.

Tokens come from the usual ``huggingface_hub`` sources (``token=``, ``HF_TOKEN``, ``hf auth login``); they never
appear in errors, logs or cards (error messages are scrubbed of them).
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft_debias.core.errors import DebiasError, one_line

logger = logging.getLogger(__name__)

ADAPTER_KINDS = ("adapter", "negated_adapter")
MODEL_KINDS = ("debiased_model", "merged_model")
KINDS = (*ADAPTER_KINDS, "bias_vector", *MODEL_KINDS)
_REPO_PART = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}"
_REPO_ID = re.compile(rf"^(?:{_REPO_PART}/)?{_REPO_PART}$")
_BRANCH = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(?:/[A-Za-z0-9_.-]+)*$")
# files of an earlier artifact that a new one replaces: removed in the same commit when the new folder lacks them
_STALE = (".safetensors", ".safetensors.index.json", ".bin", ".pt", ".pth")
_STALE_NAMES = ("adapter_config.json", "debias_config.json", "bias_vector.json", "config.json", "training_log.jsonl")


@dataclass
class PublishResult:
    """What :func:`publish_artifact` uploaded."""

    repo_id: str
    revision: str
    commit: str  # the commit id on the Hub
    url: str  # the commit's URL
    kind: str  # adapter | negated_adapter | bias_vector | debiased_model | merged_model
    files: list[str] = field(default_factory=list)  # paths written (README.md included)
    deleted: list[str] = field(default_factory=list)  # stale files of an earlier artifact removed
    card: str = ""  # the README.md uploaded


@dataclass
class Artifact:
    """An artifact folder as read for publishing."""

    folder: Path
    kind: str
    info: dict[str, Any]  # debias_config.json (bias_vector.json for vectors)
    files: list[str]  # relative paths to upload (README.md excluded: it is rendered)


# ---------------------------------------------------------------------------------------------- names
def check_repo_id(repo_id: Any) -> str:
    """``org/name`` or ``name``, refused (before any request) if empty, nested, or a path in disguise."""
    text = repo_id if isinstance(repo_id, str) else ""
    fix = "pass a Hub repo id such as my-org/gender-debias-lora (letters, digits, '-', '_', '.')"
    if not text.strip():
        raise DebiasError("the repo id is empty", fix)
    if text != text.strip() or any(ch.isspace() for ch in text):
        raise DebiasError(f"repo id {text!r} contains spaces", fix)
    if text.count("/") > 1 or text.startswith("/") or text.endswith("/"):
        raise DebiasError(f"repo id {text!r} is not 'namespace/name'", fix)
    if ".." in text or "\\" in text or "--" in text or text.endswith(".git") or not _REPO_ID.match(text):
        raise DebiasError(f"repo id {text!r} is not a valid Hub repo id", fix)
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError as err:
        raise DebiasError(f"repo id {text!r} is not a valid Hub repo id ({one_line(err, 120)})", fix) from err
    return text


def check_revision(revision: str | None) -> str:
    """A branch name (created if missing); ``None`` is ``main``. Commit ids and odd names are refused."""
    if revision is None:
        return "main"
    text = str(revision)
    if re.fullmatch(r"[0-9a-f]{40}", text):
        raise DebiasError(f"revision {text} is a commit id", "publish to a branch name (it is created if missing)")
    if not _BRANCH.match(text) or ".." in text or text.endswith((".lock", "/")):
        raise DebiasError(f"revision {text!r} is not a valid branch name", "use letters, digits, '-', '_', '.', '/'")
    return text


# ---------------------------------------------------------------------------------------------- the folder
def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DebiasError(
            f"{path} is not valid JSON ({one_line(err, 120)})", "restore the file or re-create it"
        ) from err
    if not isinstance(data, dict):
        raise DebiasError(f"{path} is not a JSON object", "restore the file or re-create it")
    return data


def _local_files(folder: Path) -> list[str]:
    """Files to upload: every regular file, hidden files and folders left out, README.md rendered instead."""
    out = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if any(part.startswith(".") or part == "__pycache__" for part in rel.parts) or not path.is_file():
            continue
        if rel.as_posix() != "README.md":
            out.append(rel.as_posix())
    return out


def _require(folder: Path, files: list[str], needed: list[str], what: str) -> None:
    missing = [name for name in needed if name not in files]
    if missing:
        raise DebiasError(
            f"{folder} is an incomplete {what}: {', '.join(missing)} missing", "re-create it with peft-debias"
        )


def _model_weights(folder: Path, files: list[str]) -> None:
    index = "model.safetensors.index.json"
    if index in files:
        shards = sorted(set(_read_json(folder / index).get("weight_map", {}).values()))
        _require(folder, files, shards, "model folder (shards of its index)")
        names = shards
    elif "model.safetensors" in files:
        names = ["model.safetensors"]
    else:
        raise DebiasError(f"{folder} holds no model.safetensors", "publish a complete model folder (safetensors)")
    from safetensors import safe_open

    for name in names:
        try:
            with safe_open(str(folder / name), framework="pt") as fh:
                fh.keys()
        except Exception as err:
            raise DebiasError(f"{folder / name} is unreadable ({one_line(err, 120)})", "re-create the model") from err


def inspect_artifact(folder: str | os.PathLike) -> Artifact:
    """Read an artifact folder: which kind it is, its metadata, and that the files its kind needs are there."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DebiasError(f"{folder} is not a folder", "pass the folder written by peft-debias train, vector or merge")
    files = _local_files(folder)
    if "bias_vector.json" in files:
        info = _read_json(folder / "bias_vector.json")
        _require(folder, files, list(info.get("files") or ["vector.safetensors"]), "bias vector")
        return Artifact(folder, "bias_vector", info, files)
    if "debias_config.json" not in files:
        raise DebiasError(
            f"{folder} has no debias_config.json (nor bias_vector.json)",
            "publish a folder written by peft-debias train, vector or merge",
        )
    info = _read_json(folder / "debias_config.json")
    kind = info.get("artifact") or ("adapter" if "adapter_config.json" in files else "unknown")
    if kind in ("biased_model", "biased_adapter"):
        raise DebiasError(
            f"{folder} is a deliberately biased {kind.split('_')[1]}, made only to compute a bias vector",
            "publish the bias vector or the debiased model instead",
        )
    if kind not in KINDS:
        raise DebiasError(f"{folder} holds an artifact of unknown kind {kind!r}", f"publish one of {', '.join(KINDS)}")
    if kind in ADAPTER_KINDS:
        _require(folder, files, ["adapter_config.json", "adapter_model.safetensors"], "adapter")
        if kind == "adapter" and ("axis" not in info or "base_model" not in info):
            raise DebiasError(f"{folder / 'debias_config.json'} lacks 'axis' or 'base_model'", "restore or retrain")
    else:
        _require(folder, files, ["config.json"], "model folder")
        _model_weights(folder, files)
    return Artifact(folder, kind, info, files)


def _base_source(base: Mapping[str, Any]) -> str:
    """Where to load an artifact's recorded base from: its name, else its recorded local path."""
    from peft_debias.models.loading import BUNDLED_PREFIX

    name, path = str(base.get("name") or ""), str(base.get("path") or "")
    if name.startswith(BUNDLED_PREFIX) or Path(name).expanduser().exists():
        return name
    if path and Path(path).expanduser().exists():
        return path
    return name or path


def check_adapter_loads(artifact: Artifact) -> None:
    """Load the adapter on its recorded base model (base checks and every tensor landing, as downstream)."""
    from peft_debias.loader.attach import load_debias_adapter
    from peft_debias.models.loading import load_model

    base = artifact.info.get("base_model") or {}
    source = _base_source(base)
    if not source:
        raise DebiasError(f"{artifact.folder} records no base model", "re-create it with peft-debias")
    try:
        loaded = load_model(source, revision=base.get("revision"))
    except DebiasError as err:
        raise DebiasError(
            f"cannot load the adapter's base model {source} to check the adapter ({err.problem})",
            "make the base model available here, or pass --skip-load-check (check_load=False)",
        ) from err
    try:
        load_debias_adapter(loaded.model, artifact.folder, mode="inference")
    except DebiasError as err:
        raise DebiasError(
            f"the adapter does not load on its recorded base {source}: {err.problem}",
            "publish adapters that load on the base in their debias_config.json (retrain on it), "
            "or pass --skip-load-check (check_load=False) if you are sure",
        ) from err
    logger.info("checked: %s loads on %s", artifact.folder, source)


def _check_loads(artifact: Artifact) -> None:
    if artifact.kind in ADAPTER_KINDS:
        check_adapter_loads(artifact)
    elif artifact.kind == "bias_vector":
        from peft_debias.vector.bias_vector import BiasVector

        vector = BiasVector.load(artifact.folder)
        if len(vector) == 0:
            raise DebiasError(f"the bias vector in {artifact.folder} is empty", "re-create it")


# ---------------------------------------------------------------------------------------------- results and card
def read_results(results: str | os.PathLike | Mapping[str, Any] | None, artifact: Artifact) -> dict[str, Any] | None:
    """The evaluation results to put on the card (a results file or dict from ``peft-debias eval``), checked
    against the artifact."""
    if results is None:
        return None
    if isinstance(results, Mapping):
        data = dict(results)
        if "schema_version" not in data or "model" not in data:
            raise DebiasError("the results dict has no schema_version/model keys", "pass what peft-debias eval wrote")
    else:
        from peft_debias.eval.results import load_results

        data = load_results(results)
    if artifact.kind == "bias_vector":
        raise DebiasError(
            "a bias vector is not a model, so it has no evaluation results of its own",
            "publish the results with the debiased model (peft-debias vector --output) instead",
        )
    if artifact.kind in ADAPTER_KINDS and not data.get("adapters"):
        raise DebiasError(
            f"the results evaluate {data.get('model')} without any adapter, not this adapter",
            "pass the output of peft-debias eval --adapter <this folder> (with --compare base.json for before/after)",
        )
    return data


def render_card(artifact: Artifact, repo_id: str, results: Mapping[str, Any] | None = None) -> str:
    """The README.md for the Hub (metadata, how to load it, provenance, evaluation results)."""
    from peft_debias.cards.vector import render_debiased_card, render_vector_card
    from peft_debias.core.provenance import render_adapter_card

    try:
        if artifact.kind == "adapter":
            return render_adapter_card(artifact.info, repo_id, results=dict(results or {}) or None, for_hub=True)
        if artifact.kind == "bias_vector":
            return render_vector_card(artifact.info, repo_id, for_hub=True)
        adapter = artifact.kind == "negated_adapter"
        return render_debiased_card(
            artifact.info, adapter=adapter, repo_id=repo_id, results=dict(results or {}) or None, for_hub=True
        )
    except DebiasError:
        raise
    except Exception as err:  # a template or metadata problem in the artifact's sidecar
        raise DebiasError(
            f"cannot render the model card of {artifact.folder} ({type(err).__name__}: {one_line(err, 160)})",
            "check its debias_config.json, or re-create the artifact",
        ) from err


# ---------------------------------------------------------------------------------------------- the upload
def publish_artifact(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    results: str | os.PathLike | Mapping[str, Any] | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    check_load: bool = True,
) -> PublishResult:
    """Validate an artifact folder and upload it, with its rendered model card, to ``repo_id`` in one commit.

    Args:
        folder: a folder written by ``peft-debias train`` (adapter), ``vector`` (bias vector, debiased model,
            negated adapter) or ``merge`` (merged model). It is only read.
        repo_id: ``org/name`` (or ``name``, in the token owner's namespace). Created if missing.
        private: create the repo private; refused if the repo already exists and is public.
        revision: the branch to commit to (created from ``main`` if missing, and then left in place should the
            commit fail); default ``main``.
        results: a ``peft-debias eval`` results file or dict; its figures (and the ``compare`` baseline's) go
            into the card's table and ``model-index``.
        token: a Hub token; default: ``HF_TOKEN`` or the token saved by ``hf auth login``.
        commit_message: the commit title.
        check_load: load an adapter on its recorded base before uploading (loads the base model).

    Files of an earlier artifact in the repo that this folder lacks (weights, shards, configs) are removed in
    the same commit, so a republished repo never mixes two artifacts; other files are kept.

    Raises:
        DebiasError: a bad repo id or revision, an incomplete or invalid artifact, no token, or the Hub
            refusing or failing the upload (the repo is then as it was).
    """
    repo_id = check_repo_id(repo_id)
    revision = check_revision(revision)
    artifact = inspect_artifact(folder)
    data = read_results(results, artifact)
    card = render_card(artifact, repo_id, data)  # before any request: a card problem costs no upload
    if check_load:
        _check_loads(artifact)
    from peft_debias.hub.session import HubSession

    session = HubSession(token)
    if "/" not in repo_id:
        repo_id = session.full_repo_id(repo_id)
        card = render_card(artifact, repo_id, data)
    message = commit_message or f"Publish {artifact.kind.replace('_', ' ')} with peft-debias"
    commit, deleted = session.commit(artifact, card, repo_id, revision, private, message)
    files = [*artifact.files, "README.md"]
    logger.info(
        "published %s to %s@%s (%d files, commit %s)", artifact.folder, repo_id, revision, len(files), commit.oid
    )
    return PublishResult(repo_id, revision, commit.oid, commit.commit_url, artifact.kind, files, deleted, card)


def is_stale(path: str) -> bool:
    """Whether a file in the repo belongs to an artifact (weights, shards, configs) rather than to the user."""
    return path.endswith(_STALE) or path.rsplit("/", 1)[-1] in _STALE_NAMES
