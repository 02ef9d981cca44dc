"""What publishing uploads in place of an artifact's own files: the same files, made portable.

An artifact written before records were portable (or with a local base) may name its base by a folder of the
machine that wrote it. The uploaded copy is fixed, the local folder never touched: ``adapter_config.json`` names the
base by its Hub id (what ``AutoPeftModelFor*.from_pretrained(repo)`` loads), the metadata records the base by Hub id
with no local path anywhere, and a model's ``config.json`` / ``tokenizer_config.json`` lose a local
``_name_or_path`` / ``name_or_path``. :func:`publish_base_id` finds the Hub id (the flag, else the record, else a
bundled alias or a cache folder the old record names) and refuses a base that is only a local folder.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from peft_debias.core.errors import DebiasError
from peft_debias.core.jsonio import dumps
from peft_debias.core.portable import is_local_path, portable_adapter_config, scrub_local_paths
from peft_debias.models.base_ids import FLAG, check_base_model_id, resolve_base_id

if TYPE_CHECKING:
    from peft_debias.hub.artifact import Artifact

METADATA = ("debias_config.json", "bias_vector.json")
# model files that transformers may fill with the folder a model was loaded from
_NAME_KEYS = {"config.json": "_name_or_path", "tokenizer_config.json": "name_or_path"}


def base_entry(info: Mapping[str, Any], kind: str) -> dict[str, Any]:
    """The base record of an artifact's metadata (``base`` in a bias vector, ``base_model`` elsewhere)."""
    entry = info.get("base" if kind == "bias_vector" else "base_model")
    return dict(entry) if isinstance(entry, Mapping) else {}


def recorded_base_id(base: Mapping[str, Any]) -> str | None:
    """The Hub id a base record stands for: its ``hub_id`` (portable records), else, for a record written before
    those, the id of its name or of its recorded folder (bundled alias, Hub id, cache snapshot)."""
    if "hub_id" in base or base.get("local_only"):
        return base.get("hub_id") or None
    name, path = str(base.get("name") or ""), base.get("path") or None
    return resolve_base_id(name, None, path) if name or path else None


def publish_base_id(artifact: Artifact, explicit: str | None = None) -> str:
    """The Hub id the published artifact names as its base: ``explicit`` (``--base-model-id``, checked), else the
    recorded one; a base known only as a local folder is refused with a line that names the flag."""
    if explicit is not None:
        return check_base_model_id(explicit)
    base = base_entry(artifact.info, artifact.kind)
    found = recorded_base_id(base)
    if found:
        return found
    shown = base.get("name") or base.get("path") or "not recorded"
    raise DebiasError(
        f"{artifact.folder} records its base model only as a local folder ({shown}), which no one else can load",
        f"pass {FLAG} ORG/NAME, the base's Hub id",
    )


def portable_info(info: Mapping[str, Any], kind: str, base_id: str) -> dict[str, Any]:
    """The metadata as uploaded: the base recorded by ``base_id`` (an old record's folder dropped) and no local
    path anywhere."""
    out = dict(info)
    key = "base" if kind == "bias_vector" else "base_model"
    base = {k: v for k, v in base_entry(info, kind).items() if k != "path"}
    if is_local_path(base.get("name")) or not base.get("name"):
        base["name"] = base_id
    base.update(hub_id=base_id, local_only=False)
    out[key] = base
    return scrub_local_paths(out)


def _fixed(name: str, data: Any, artifact: Artifact, base_id: str) -> Any:
    if name == "adapter_config.json":
        return portable_adapter_config(data, base_id)
    if name in METADATA:
        return portable_info(data, artifact.kind, base_id)
    if name in _NAME_KEYS and isinstance(data, dict) and is_local_path(data.get(_NAME_KEYS[name])):
        return {k: v for k, v in data.items() if k != _NAME_KEYS[name]}
    return scrub_local_paths(data) if name.endswith(".json") else data


def upload_contents(artifact: Artifact, base_id: str) -> dict[str, bytes]:
    """The files whose uploaded bytes differ from the local ones (name -> bytes), each fixed as the module
    docstring says; every other file is uploaded as it is. The local folder is only read."""
    out: dict[str, bytes] = {}
    for name in artifact.files:
        if not name.endswith(".json") or "/" in name:
            continue
        with artifact.open(name) as fh:  # not following links, the file inspected
            raw = fh.read()
        try:
            data = json.loads(raw)
        except ValueError:
            continue
        fixed = _fixed(name, data, artifact, base_id)
        if fixed != data:
            out[name] = (dumps(fixed, indent=2, sort_keys=name == "adapter_config.json") + "\n").encode("utf-8")
    return out


def portable_artifact(artifact: Artifact, base_id: str) -> Artifact:
    """The artifact with its metadata as uploaded (what its model card is rendered from)."""
    from dataclasses import replace

    return replace(artifact, info=portable_info(artifact.info, artifact.kind, base_id))
