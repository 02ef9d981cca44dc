"""The Hub id of a base model, and the portable record of a base in an artifact's metadata.

A published adapter's ``adapter_config.json`` names its base in ``base_model_name_or_path``, and
``AutoPeftModelFor*.from_pretrained(repo)`` loads exactly that: it must be a Hub id, never a folder of the machine
that trained it. :func:`resolve_base_id` finds that id, in this order:

1. the id the user passes (``--base-model-id`` / ``base_model_id=``), checked as a Hub repo id;
2. a bundled alias's Hub id (``bundled:minilm`` -> ``sentence-transformers/all-MiniLM-L6-v2``);
3. the name itself when it is a Hub id (and not a local folder of that name);
4. an id recorded in a local folder: a Hugging Face cache snapshot (``.../models--org--name/snapshots/<sha>``), a
   bundled package's folder or the cache of a converted bundled model (``peft_debias_source.json``), or a folder
   whose ``debias_config.json`` has a top-level ``hub_id``;
5. otherwise ``None``: the base is local only, and ``publish`` refuses it until an id is passed.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from peft_debias.core.errors import DebiasError
from peft_debias.core.hub_ids import check_repo_id, is_hub_id
from peft_debias.core.portable import is_local_path
from peft_debias.models.bundled import (
    BUNDLED_PREFIX,
    SMOLLM2_HUB_ID,
    SOURCE_FILE,
    bundled_hub_id,
    bundled_package_dirs,
)

FLAG = "--base-model-id"
_SNAPSHOT = re.compile(r"models--(?P<repo>[^/\\]+)[/\\]snapshots[/\\](?P<sha>[0-9a-f]{40})")


def check_base_model_id(value: Any) -> str:
    """``value`` if it is a Hub repo id; else a one-line :class:`DebiasError` that names ``--base-model-id``."""
    try:
        return check_repo_id(value)
    except DebiasError as err:
        raise DebiasError(f"{FLAG} {value!r}: {err.problem}", f"pass the base's Hub id, e.g. {FLAG} org/model") from err


def snapshot_id(path: str | Path) -> tuple[str, str] | None:
    """``(hub id, commit)`` of a Hugging Face cache snapshot folder (``models--org--name/snapshots/<sha>``)."""
    found = _SNAPSHOT.search(str(path))
    if found is None:
        return None
    repo = found["repo"].replace("--", "/", 1)  # the cache folder of org/name is models--org--name
    return (repo, found["sha"]) if is_hub_id(repo) else None


def _read_object(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def recorded_hub_id(folder: str | Path) -> str | None:
    """The Hub id a local model folder records of itself (see the module docstring, step 4), or ``None``."""
    snapshot = snapshot_id(folder)
    if snapshot is not None:
        return snapshot[0]
    path = Path(folder).expanduser()
    if not path.is_dir():
        return None
    resolved = path.resolve()
    for alias, package in bundled_package_dirs().items():
        if resolved == package.resolve() or package.resolve() in resolved.parents:
            return bundled_hub_id(alias)
    source = _read_object(path / SOURCE_FILE)
    if is_hub_id(source.get("hub_id")):
        return str(source["hub_id"])
    if str(source.get("gguf_file", "")).lower().startswith("smollm2"):  # converted before ids were recorded
        return SMOLLM2_HUB_ID
    own = _read_object(path / "debias_config.json").get("hub_id")
    return str(own) if is_hub_id(own) else None


def resolve_base_id(name: str, explicit: str | None = None, path: str | Path | None = None) -> str | None:
    """The Hub id of the base ``name`` (what the user typed; ``path`` the folder it was loaded from), or ``None``
    when it is only a local folder (see the module docstring for the order). ``explicit`` is checked."""
    if explicit is not None:
        return check_base_model_id(explicit)
    if name.startswith(BUNDLED_PREFIX):
        return bundled_hub_id(name)
    if is_hub_id(name) and not Path(name).expanduser().is_dir():
        return name
    for folder in (name, path):
        if folder:
            found = recorded_hub_id(folder)
            if found:
                return found
    return None


def base_record(
    name: str, path: str | Path | None = None, explicit: str | None = None, revision: str | None = None
) -> dict[str, Any]:
    """The portable identity of a base in an artifact's metadata: ``name`` (what the user typed if it is not a
    path, else the Hub id, else the folder's name), ``hub_id`` (or ``None``), ``revision`` (a cache snapshot's
    commit when none was given) and ``local_only`` (no Hub id: publishing needs ``--base-model-id``)."""
    hub_id = resolve_base_id(name, explicit, path)
    snapshot = snapshot_id(path or name)
    if revision is None and snapshot is not None and snapshot[0] == hub_id:
        revision = snapshot[1]
    local = is_local_path(name) or Path(name).expanduser().is_dir()
    shown = (hub_id or Path(name).expanduser().resolve().name) if local else name
    return {"name": shown, "hub_id": hub_id, "revision": revision, "local_only": hub_id is None}
