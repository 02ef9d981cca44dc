"""Merge LoRA / IA3 debiasing adapters into their base model and save a plain model folder.

The folder holds ``config.json``, safetensors weights and the tokenizer (``AutoModel*.from_pretrained`` loads it,
no peft needed) and a ``debias_config.json`` (artifact ``merged_model``) recording the base, the adapters in merge
order with their own ``debias_config.json``, and the library versions. Written atomically; an existing output is
refused unless ``overwrite``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any


def merge_to_folder(
    base: str,
    adapters: Sequence[str],
    output: str | Path,
    *,
    kind: str | None = None,
    revision: str | None = None,
    base_model_id: str | None = None,
    adapter_revision: str | None = None,
    allow_base_mismatch: bool = False,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    overwrite: bool = False,
    device: str = "auto",
    dtype: str = "auto",
) -> dict[str, Any]:
    """Merge ``adapters`` (folders or Hub ids, in order) into ``base`` and write the model to ``output``.

    Every adapter is checked to be mergeable before the base model is loaded. ``base_model_id`` is the base's Hub id
    to record (default: from ``base``, see :func:`~peft_debias.models.base_ids.resolve_base_id`); no local path is
    written. ``device`` and ``dtype`` (:mod:`peft_debias.models.placement`) are where the merge runs and the dtype
    the base loads, merges and is saved in. Returns the ``debias_config.json`` written with the model.
    """
    from peft_debias.core.atomic import atomic_output, check_destination
    from peft_debias.core.provenance import sidecar, write_sidecar
    from peft_debias.loader.attach import check_mergeable, load_debias_adapter
    from peft_debias.loader.checks import backbone_fingerprint, read_adapter
    from peft_debias.models.base_ids import base_record, check_base_model_id
    from peft_debias.models.loading import load_model, weights_fingerprint

    check_destination(output, overwrite=overwrite)
    if base_model_id is not None:
        check_base_model_id(base_model_id)
    files = [read_adapter(a, adapter_revision, allow_pickle=allow_pickle) for a in adapters]
    for adapter in files:  # before the (possibly large) base model is loaded
        check_mergeable(adapter)
    loaded = load_model(
        base,
        kind,
        revision=revision,
        device=device,
        dtype=dtype,
        allow_pickle=allow_pickle,
        trust_remote_code=trust_remote_code,
    )
    base_info = {
        **base_record(base, loaded.path, base_model_id, revision),
        "kind": loaded.kind.value,
        "model_type": getattr(loaded.model.config, "model_type", None),
        "weights_fingerprint": weights_fingerprint(loaded.model),
        "backbone_fingerprint": backbone_fingerprint(loaded.model),
        "dtype": loaded.placement["dtype"],
    }
    merged = load_debias_adapter(loaded.model, files, mode="merge", allow_base_mismatch=allow_base_mismatch)
    axes = [a.axis or "unknown" for a in files]
    info = sidecar(
        "merged_model",
        axis="+".join(axes),
        axes=axes,
        base_model=base_info,
        adapters=[_adapter_record(a) for a in files],
        placement=loaded.placement,
        merged={
            "weights_fingerprint": weights_fingerprint(merged),
            "backbone_fingerprint": backbone_fingerprint(merged),
        },
    )
    with atomic_output(output, overwrite=overwrite, directory=True) as tmp:
        merged.save_pretrained(str(tmp))
        loaded.tokenizer.save_pretrained(str(tmp))
        write_sidecar(tmp, info)
    return info


def _adapter_record(adapter: Any) -> dict[str, Any]:
    """What the merged model's ``debias_config.json`` records of one merged adapter."""
    from peft_debias.core.fingerprints import sha256_files
    from peft_debias.loader.checks import SAFETENSORS_FILE

    a = adapter
    return {
        "source": Path(a.source).resolve().name if Path(a.source).exists() else a.source,
        "revision": a.revision,
        "axis": a.axis,
        "method": a.method,
        "peft_type": a.peft_type,
        "weights_sha256": sha256_files([a.path / SAFETENSORS_FILE]) if (a.path / SAFETENSORS_FILE).is_file() else None,
        "debias_config": a.debias,
    }
