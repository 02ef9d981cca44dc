"""Base models served by the local Hub server (tests/support/hub_server.py) under Hub ids.

A fresh client process with ``HF_ENDPOINT`` pointed at the server then resolves ``tiny-org/tiny-llama`` or
``sentence-transformers/all-MiniLM-L6-v2`` exactly as it would on the real Hub: config, safetensors weights and
tokenizer files come from ``/{id}/resolve/main/...``. Nothing is uploaded through the API: the files are committed
directly with :meth:`HubServer.seed`, as if the model's owner had pushed them long ago.

Sentence encoders also get sentence-transformers' own files (``modules.json``, ``sentence_bert_config.json``,
``1_Pooling/config.json``), written here, so ``SentenceTransformer(id)`` builds Transformer -> mean pooling ->
Normalize as the real all-MiniLM-L6-v2 repo does.
"""

from __future__ import annotations

import json
from pathlib import Path

from support.hub_server import HubServer

# made-up ids of the tiny models (tests/support/tiny_models.py) on the local server
TINY_IDS = {"llama": "tiny-org/tiny-llama", "bert_encoder": "tiny-org/tiny-bert"}
MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
SMOLLM2_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
# what a model repo holds; anything else in a local folder (caches, our own sidecars) stays out
_REPO_SUFFIXES = (".json", ".safetensors", ".txt", ".model", ".jinja")
_NOT_REPO_FILES = ("debias_config.json", "peft_debias_source.json")


def sentence_transformers_files(hidden_size: int, max_seq_length: int) -> dict[str, bytes]:
    """The sentence-transformers module files of a mean-pooled, L2-normalised encoder (all-MiniLM-L6-v2's layout)."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    pooling = {
        "word_embedding_dimension": hidden_size,
        "pooling_mode_cls_token": False,
        "pooling_mode_mean_tokens": True,
        "pooling_mode_max_tokens": False,
        "pooling_mode_mean_sqrt_len_tokens": False,
    }
    files = {
        "modules.json": modules,
        "sentence_bert_config.json": {"max_seq_length": max_seq_length, "do_lower_case": False},
        "1_Pooling/config.json": pooling,
    }
    return {name: json.dumps(value, indent=2).encode() for name, value in files.items()}


def model_files(folder: Path) -> dict[str, bytes]:
    """The files of a saved model folder that a Hub model repo would hold (top level only)."""
    return {
        p.name: p.read_bytes()
        for p in sorted(Path(folder).iterdir())
        if p.is_file() and p.name.endswith(_REPO_SUFFIXES) and p.name not in _NOT_REPO_FILES
    }


def serve_model(server: HubServer, repo_id: str, folder: Path, sentence_encoder: bool = False) -> str:
    """Commit a local model folder to the server as ``repo_id``; returns the commit id.

    ``sentence_encoder=True`` adds the sentence-transformers module files (mean pooling + normalize).
    """
    files = model_files(folder)
    if not any(name.endswith(".safetensors") for name in files):
        raise ValueError(f"{folder} has no safetensors weights to serve")
    if sentence_encoder:
        config = json.loads(files["config.json"])
        files.update(sentence_transformers_files(config["hidden_size"], min(config["max_position_embeddings"], 256)))
    return server.seed(repo_id, files)


def serve_tiny_models(server: HubServer, tiny_models: dict[str, Path]) -> dict[str, str]:
    """Serve the tiny llama and the tiny bare BERT encoder (as a sentence encoder) under :data:`TINY_IDS`."""
    for name, repo_id in TINY_IDS.items():
        if server.head(repo_id) is None:
            serve_model(server, repo_id, tiny_models[name], sentence_encoder=name == "bert_encoder")
    return dict(TINY_IDS)


def serve_real_bases(server: HubServer, minilm: Path, smollm2: Path) -> dict[str, str]:
    """Serve the bundled MiniLM and the converted SmolLM2 folders under their real Hub ids (the slow suite)."""
    bases = {"minilm": (MINILM_ID, minilm, True), "smollm2": (SMOLLM2_ID, smollm2, False)}
    for repo_id, folder, sentence_encoder in bases.values():
        if server.head(repo_id) is None:
            serve_model(server, repo_id, folder, sentence_encoder=sentence_encoder)
    return {alias: repo_id for alias, (repo_id, _, _) in bases.items()}
