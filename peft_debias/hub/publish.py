"""Publish an artifact folder to the Hugging Face Hub: validated first, one commit, with its model card.

:func:`publish_artifact` takes a folder written by peft-debias (a debiasing adapter from ``train``, a bias vector,
a debiased model or negated adapter from ``vector``, a merged model from ``merge``), checks it, renders its model
card from ``model_cards/`` (Hub metadata, tags, and the evaluation results as a ``model-index`` when a results file
is given) and uploads the folder with the rendered ``README.md`` in ONE commit (``HfApi.create_commit``): the Hub
applies a commit all or nothing, so a failed upload leaves the repo as it was. The local folder is only read; the
uploaded copy names the base by its Hub id and carries no local path (:mod:`peft_debias.hub.portable`).

Checks before any request: the repo id (no path tricks), the revision, the artifact's files, and (unless
``check_load=False``) that an adapter loads on its recorded base model, every tensor landing.

Tokens come from the usual ``huggingface_hub`` sources (``token=``, ``HF_TOKEN``, ``hf auth login``); they never
appear in errors, logs or cards (error messages are scrubbed of them).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft_debias.core.errors import DebiasError, one_line
from peft_debias.core.hub_ids import check_repo_id, check_revision
from peft_debias.core.portable import is_local_path
from peft_debias.hub.artifact import ADAPTER_KINDS, Artifact, inspect_artifact
from peft_debias.hub.portable import portable_artifact, publish_base_id, upload_contents

logger = logging.getLogger(__name__)


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
    left_out: list[str] = field(default_factory=list)  # files in the folder that are not the artifact's own
    dry_run: bool = False  # nothing was sent: commit and url are empty
    rewritten: list[str] = field(default_factory=list)  # files uploaded as a portable copy, not as they are


def _base_source(base: Mapping[str, Any], base_id: str | None = None) -> str:
    """Where the load check loads an artifact's base from: a bundled alias, or a folder an old record names when
    it exists here; else the base's Hub id (from the Hub cache, or the Hub)."""
    from peft_debias.models.loading import BUNDLED_PREFIX

    name, path = str(base.get("name") or ""), str(base.get("path") or "")
    if name.startswith(BUNDLED_PREFIX) or (is_local_path(name) and Path(name).expanduser().exists()):
        return name
    if path and Path(path).expanduser().exists():
        return path
    return base_id or str(base.get("hub_id") or "") or name or path


def check_adapter_loads(artifact: Artifact, base_id: str | None = None) -> None:
    """Load the adapter on its recorded base model (base checks and every tensor landing, as downstream);
    ``base_id`` is the base's Hub id, used when no local copy of the base is recorded."""
    from peft_debias.loader.attach import load_debias_adapter
    from peft_debias.models.loading import load_model

    base = artifact.info.get("base_model") or {}
    source = _base_source(base, base_id)
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


def _check_loads(artifact: Artifact, base_id: str) -> None:
    if artifact.kind in ADAPTER_KINDS:
        check_adapter_loads(artifact, base_id)
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
    from peft_debias.cards.adapter import render_adapter_card
    from peft_debias.cards.vector import render_debiased_card, render_vector_card

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
    dry_run: bool = False,
    base_model_id: str | None = None,
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
        dry_run: check everything that needs no Hub request and return what would be uploaded, sending nothing
            (no token needed; the stale files an upload would remove are not known then).
        base_model_id: the base's Hub id, for an artifact whose base is recorded only as a local folder (or to
            correct the recorded one); it is what the uploaded ``adapter_config.json`` names as the base.

    The uploaded copy is portable (:mod:`peft_debias.hub.portable`): the base named by its Hub id, no local path
    in any metadata file. The local folder is not changed.

    Only the artifact's own regular files are uploaded (the allowlist of its kind,
    :data:`peft_debias.hub.artifact.ALLOWED`); other files are left out and listed in ``left_out``, and a
    symbolic link, device, FIFO or socket in the folder is refused. Files of an earlier artifact in the repo that
    this folder lacks (weights, shards, configs) are removed in the same commit, so a republished repo never mixes
    two artifacts; other files are kept.

    Raises:
        DebiasError: a bad repo id or revision, an incomplete or invalid artifact, a base with no Hub id (pass
            ``base_model_id``), no token, or the Hub
            refusing or failing the upload (the repo is then as it was).
    """
    repo_id = check_repo_id(repo_id)
    revision = check_revision(revision)
    artifact = inspect_artifact(folder)
    data = read_results(results, artifact)
    base_id = publish_base_id(artifact, base_model_id)
    uploaded = portable_artifact(artifact, base_id)  # the metadata as uploaded: the card is rendered from it
    card = render_card(uploaded, repo_id, data)  # before any request: a card problem costs no upload
    if check_load:
        _check_loads(artifact, base_id)
    contents = upload_contents(artifact, base_id)
    if artifact.left_out:
        logger.warning("not uploaded (not part of a %s): %s", artifact.kind, ", ".join(artifact.left_out))
    if dry_run:
        files = [*artifact.files, "README.md"]
        return PublishResult(
            repo_id, revision, "", "", artifact.kind, files, [], card, artifact.left_out, True, sorted(contents)
        )
    from peft_debias.hub.session import HubSession

    session = HubSession(token)
    if "/" not in repo_id:
        repo_id = session.full_repo_id(repo_id)
        card = render_card(uploaded, repo_id, data)
    message = commit_message or f"Publish {artifact.kind.replace('_', ' ')} with peft-debias"
    commit, deleted = session.commit(artifact, card, repo_id, revision, private, message, contents)
    files = [*artifact.files, "README.md"]
    logger.info(
        "published %s to %s@%s (%d files, commit %s)", artifact.folder, repo_id, revision, len(files), commit.oid
    )
    return PublishResult(
        repo_id, revision, commit.oid, commit.commit_url, artifact.kind, files, deleted, card, artifact.left_out,
        False, sorted(contents),
    )  # fmt: skip
