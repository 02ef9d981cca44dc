"""Provenance helpers: versions, timestamps."""

from __future__ import annotations

import platform
import subprocess
import sys
import time

from peft_debias.core import provenance
from peft_debias.core.version import __version__


def test_timestamp_is_utc_with_z(monkeypatch) -> None:
    moment = time.gmtime(86400 + 3600 + 62)
    monkeypatch.setattr(provenance.time, "gmtime", lambda: moment)
    assert provenance.timestamp() == "1970-01-02T01:01:02Z"


def test_versions_cover_every_key_recorded_before_with_the_same_strings() -> None:
    import accelerate
    import numpy
    import peft
    import torch
    import transformers

    got = provenance.versions()
    # union of the three former versions() dicts (core, vector cards, eval runner)
    assert set(got) >= {"peft_debias", "python", "torch", "transformers", "peft", "accelerate", "numpy",
                        "safetensors", "huggingface_hub"}  # fmt: skip
    assert got["peft_debias"] == __version__ and got["python"] == platform.python_version()
    for module in (torch, transformers, peft, accelerate, numpy):
        assert got[module.__name__] == module.__version__


def test_versions_of_chosen_packages_skip_missing_ones() -> None:
    got = provenance.versions(("numpy", "no-such-package-for-peft-debias"))
    assert list(got) == ["peft_debias", "python", "numpy"]


def test_versions_import_nothing_heavy() -> None:
    code = "import sys; from peft_debias.core.provenance import versions; versions(); print('torch' in sys.modules)"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "False"


def test_sidecar_key_order_and_written_file(monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(provenance, "timestamp", lambda: "2025-01-31T09:05:00Z")
    monkeypatch.setattr(provenance, "versions", lambda: {"peft_debias": "9.9"})
    data = provenance.sidecar("negated_adapter", {"axis": "gender", "lambda": -1.0}, scale=float("nan"), base_model={})
    assert list(data) == ["format_version", "artifact", "axis", "lambda", "scale", "base_model", "versions", "created"]
    assert data["format_version"] == provenance.FORMAT_VERSION == 1 and data["artifact"] == "negated_adapter"
    assert data["versions"] == {"peft_debias": "9.9"} and data["created"] == "2025-01-31T09:05:00Z"
    path = provenance.write_sidecar(tmp_path, data)
    assert path == tmp_path / "debias_config.json"
    assert '"scale": null' in path.read_text() and provenance.read_debias_config(tmp_path)["lambda"] == -1.0
    assert provenance.write_sidecar(tmp_path, {}, "bias_vector.json").read_text() == "{}\n"
