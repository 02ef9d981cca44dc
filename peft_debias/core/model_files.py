"""The files a model folder carries besides its weights, in one place: what ``vector`` copies next to new weights
and what ``publish`` uploads with them.

Configs, generation settings and tokenizer files, as transformers and sentence-transformers write them (top level
only). Anything else in a base model's folder (notes, keys, caches) is neither copied nor uploaded.
"""

from __future__ import annotations

import fnmatch

#: ``fnmatch`` patterns of a model folder's side files (matched against the file name).
SIDE_FILE_PATTERNS: tuple[str, ...] = (
    "config.json", "generation_config.json", "preprocessor_config.json",
    "tokenizer*", "special_tokens_map.json", "added_tokens.json", "vocab*.txt", "vocab*.json", "merges*.txt",
    "*.model", "*.spm", "chat_template.jinja", "chat_template.json",
    "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json",
)  # fmt: skip


def is_side_file(name: str) -> bool:
    """Whether ``name`` (a file name, no folder) is a config or tokenizer file of a model folder."""
    return "/" not in name and any(fnmatch.fnmatchcase(name, pattern) for pattern in SIDE_FILE_PATTERNS)
