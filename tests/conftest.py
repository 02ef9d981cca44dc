"""Shared fixtures: the shared data folder and tiny saved models (see :mod:`support.tiny_models`)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared data folder: ``$PEFT_DEBIAS_DATA``, else ``<repo>/../shared/data``. Missing -> the test fails."""
    path = Path(os.environ.get("PEFT_DEBIAS_DATA") or REPO_ROOT.parent / "shared" / "data").expanduser()
    if not path.is_dir():
        pytest.fail(
            f"test data folder {path} not found: set PEFT_DEBIAS_DATA to the shared data folder "
            "(it holds crows_pairs/, seat/, stereoset/, wikitext2/, ...)",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Saved tiny random models with trained tokenizers: bert, bert_encoder, roberta, llama, gpt2 -> folder."""
    from support.tiny_models import build_all

    return build_all(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def hub_server(tmp_path_factory: pytest.TempPathFactory):
    """A local Hub-compatible HTTP server (tests/support/hub_server.py) on 127.0.0.1, one per session.

    Point a *fresh* process at it (``HF_ENDPOINT=hub_server.url``, ``HF_TOKEN=hub_server.token``, a temporary
    ``HF_HOME``, ``HF_HUB_DISABLE_XET=1``): huggingface_hub reads them at import. Faults: ``hub_server.fail(...)``.
    """
    from support.hub_server import HubServer

    server = HubServer(tmp_path_factory.mktemp("hub"), token="hf_peftDebiasSessionToken7c1e5a9b3d").start()
    yield server
    server.stop()


@pytest.fixture
def hub_offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hub offline mode for one test.

    ``huggingface_hub`` reads ``HF_HUB_OFFLINE`` once, at import, so setting the variable alone has no effect
    on an already-imported library: the module constant is patched too.
    """
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="session")
def hub_bases(hub_server, tiny_models) -> dict[str, str]:
    """The tiny llama and the tiny bare BERT encoder served by ``hub_server`` under made-up Hub ids
    (``tiny-org/tiny-llama``, ``tiny-org/tiny-bert``; the encoder as a mean-pooled, normalised sentence encoder):
    name -> id. A fresh client process resolves them by id (tests/support/hub_models.py)."""
    from support.hub_models import serve_tiny_models

    return serve_tiny_models(hub_server, tiny_models)
