"""Hugging Face Hub ids: one rule for every place that tells a Hub id from a local path.

The rule is the Hub's own (``huggingface_hub.utils.validate_repo_id``), restricted to ASCII: ``name`` or
``namespace/name``; each part 1 to 96 characters among letters, digits, ``-``, ``_`` and ``.``, neither starting nor
ending with ``-`` or ``.``; no ``--`` or ``..`` anywhere; not ending in ``.git``. A dataset source may add a
configuration, ``id:config``. Branch names (publishing) have their own check, :func:`check_revision`.
"""

from __future__ import annotations

import re
from typing import Any

from peft_debias.core.errors import DebiasError

_PART = r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"(?:{_PART}/)?{_PART}")
_CONFIG = re.compile(r"[A-Za-z0-9_.-]+")
_BRANCH = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*(?:/[A-Za-z0-9_.-]+)*")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_ID_FIX = "pass a Hub repo id such as my-org/gender-debias-lora (letters, digits, '-', '_', '.')"


def is_hub_id(text: Any, *, namespace_required: bool = False) -> bool:
    """Whether ``text`` is a valid Hub repo id (``namespace/name``, or a bare ``name`` unless ``namespace_required``).

    A local path never is: it starts with ``.``, ``/`` or ``~``, has a backslash, ``..`` or more than one ``/``.
    """
    if not isinstance(text, str) or not _HUB_ID.fullmatch(text):
        return False
    if "--" in text or ".." in text or text.endswith(".git"):
        return False
    return "/" in text or not namespace_required


def split_config(text: str) -> tuple[str, str | None]:
    """``("id", "config")`` for ``id:config`` (a dataset configuration), ``("id", None)`` without one."""
    repo, sep, config = text.partition(":")
    return repo, (config if sep else None)


def is_dataset_source(text: Any) -> bool:
    """Whether ``text`` names a Hub dataset: a Hub id, optionally followed by ``:config``."""
    if not isinstance(text, str):
        return False
    repo, config = split_config(text)
    return is_hub_id(repo) and (config is None or bool(_CONFIG.fullmatch(config)))


def check_repo_id(repo_id: Any) -> str:
    """``repo_id`` if it is a Hub id (``org/name`` or ``name``); else a :class:`DebiasError` saying what is wrong
    (empty, spaces, nested, or a path in disguise)."""
    text = repo_id if isinstance(repo_id, str) else ""
    if not text.strip():
        raise DebiasError("the repo id is empty", _ID_FIX)
    if text != text.strip() or any(ch.isspace() for ch in text):
        raise DebiasError(f"repo id {text!r} contains spaces", _ID_FIX)
    if text.count("/") > 1 or text.startswith("/") or text.endswith("/"):
        raise DebiasError(f"repo id {text!r} is not 'namespace/name'", _ID_FIX)
    if not is_hub_id(text):
        raise DebiasError(f"repo id {text!r} is not a valid Hub repo id", _ID_FIX)
    return text


def check_revision(revision: str | None) -> str:
    """A branch name to publish to (created if missing); ``None`` is ``main``. Commit ids and odd names are
    refused with a :class:`DebiasError`."""
    if revision is None:
        return "main"
    text = str(revision)
    if _COMMIT.fullmatch(text):
        raise DebiasError(f"revision {text} is a commit id", "publish to a branch name (it is created if missing)")
    if not _BRANCH.fullmatch(text) or ".." in text or text.endswith((".lock", "/")):
        raise DebiasError(f"revision {text!r} is not a valid branch name", "use letters, digits, '-', '_', '.', '/'")
    return text
