"""Model folders for bias vectors: where a model comes from, what travels with its weights, which tensors are tied.

* :func:`resolve_folder`: a local folder, a ``bundled:`` alias or a Hub repo id (downloaded, or from the Hub cache
  under ``HF_HUB_OFFLINE``) -> a local folder;
* :func:`copy_side_files`: config, tokenizer and generation files copied next to merged weights;
* :func:`tied_aliases`: output embeddings that the config ties to the input embeddings.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from peft_debias.core.errors import DebiasError, one_line
from peft_debias.core.hub_ids import is_hub_id
from peft_debias.core.model_files import is_side_file
from peft_debias.models.loading import BUNDLED_PREFIX, bundled_model_path


def copy_side_files(source: Path, dest: Path, limit: int = 64 << 20) -> list[str]:
    """Copy config, tokenizer and generation files (:func:`peft_debias.core.model_files.is_side_file`; top level,
    regular files, each under ``limit``) to ``dest``; anything else in ``source`` is left behind."""
    import shutil

    copied = []
    for path in sorted(source.iterdir()):
        if is_side_file(path.name) and path.is_file() and path.stat().st_size <= limit:
            shutil.copyfile(path, dest / path.name)
            copied.append(path.name)
    return copied


INPUT_EMBEDDINGS = ("embed_tokens.weight", "word_embeddings.weight", "wte.weight", "shared.weight", "embed_in.weight")
OUTPUT_EMBEDDINGS = ("lm_head.weight", "predictions.decoder.weight", "lm_head.decoder.weight", "embed_out.weight")


def tied_aliases(config: dict[str, Any], names: Sequence[str]) -> dict[str, str]:
    """Output-embedding tensors that the config ties to the input embeddings: ``{alias: source}``.

    A checkpoint usually stores only one of the pair; when it stores both, the alias must receive exactly the
    source's result, or the model would change when transformers re-ties them on load.
    """
    if not config.get("tie_word_embeddings", True):
        return {}
    sources = [n for n in names if n.endswith(INPUT_EMBEDDINGS) and "position" not in n]
    if len(sources) != 1:
        return {}
    return {n: sources[0] for n in names if n.endswith(OUTPUT_EMBEDDINGS) and n != sources[0]}


MODEL_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "tokenizer*"]


def resolve_folder(
    name: str | os.PathLike, *, patterns: Sequence[str] = MODEL_PATTERNS, revision: str | None = None
) -> Path:
    """A local folder for a model or artifact: a folder, a ``bundled:`` alias, or a Hub repo id (downloaded, or
    taken from the Hub cache when ``HF_HUB_OFFLINE`` is set)."""
    text = str(name)
    if text.startswith(BUNDLED_PREFIX):
        return bundled_model_path(text)
    local = Path(text).expanduser()
    if local.is_dir():
        return local
    if local.exists():
        raise DebiasError(f"{text} is a file, not a folder", "pass the folder that holds the files")
    if not is_hub_id(text, namespace_required=True):
        raise DebiasError(f"{text} not found", "pass an existing folder, a Hub id (org/name) or a bundled: alias")
    import huggingface_hub
    from huggingface_hub import constants

    try:
        return Path(huggingface_hub.snapshot_download(text, revision=revision, allow_patterns=list(patterns)))
    except Exception as err:
        if constants.HF_HUB_OFFLINE:
            raise DebiasError(
                f"{text} is not in the local Hub cache and HF_HUB_OFFLINE is set",
                "download it while online, or pass a local folder",
            ) from err
        raise DebiasError(f"could not download {text} from the Hub ({one_line(err, 160)})", "check the id") from err
