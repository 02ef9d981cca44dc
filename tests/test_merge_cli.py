"""``peft-debias merge``: a plain merged model folder that transformers loads, and the one-line error contract."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForMaskedLM, AutoTokenizer

from peft_debias.cli.main import main
from peft_debias.core.provenance import read_debias_config
from peft_debias.loader.attach import load_debias_adapter

from support.loader import (
    one_torch_thread,  # noqa: F401 - autouse fixture
    trained_adapter,
)


@pytest.fixture(scope="module")
def adapter(tiny_models, tmp_path_factory):
    def get(model: str, method: str, axis: str = "gender") -> Path:
        return trained_adapter(tiny_models, tmp_path_factory, model, method, axis)

    return get


@pytest.fixture
def cli(monkeypatch, capsys):
    """Run the CLI in this process (the libraries are imported already): returns (code, stdout, stderr lines)."""
    monkeypatch.setenv("TRANSFORMERS_VERBOSITY", "error")  # main() would set it for the rest of the session

    def run(*args: str) -> tuple[int, str, list[str]]:
        capsys.readouterr()  # drop what the test printed before (e.g. training a fixture adapter)
        code = main(["merge", *args])
        out, err = capsys.readouterr()
        return code, out, err.strip().splitlines()

    return run


def logits(model, tokenizer) -> torch.Tensor:
    batch = tokenizer(["he is a doctor", "she is a nurse"], padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.integration
@pytest.mark.parametrize("name,auto", [("bert", AutoModelForMaskedLM), ("llama", AutoModelForCausalLM)])
def test_merge_writes_a_plain_model_that_transformers_loads(tiny_models, adapter, cli, tmp_path, name, auto) -> None:
    folders = [adapter(name, "lora", "gender"), adapter(name, "lora", "race")]
    out = tmp_path / "merged"
    code, stdout, _ = cli(
        "--base",
        str(tiny_models[name]),
        "--adapter",
        str(folders[0]),
        "--adapter",
        str(folders[1]),
        "--output",
        str(out),
    )
    assert code == 0 and f"merged 2 adapter(s) (gender, race) into {tiny_models[name]} -> {out}" in stdout
    files = sorted(p.name for p in out.iterdir())
    assert {"config.json", "model.safetensors", "debias_config.json", "tokenizer_config.json"} <= set(files)
    assert not [f for f in files if f.startswith("adapter_") or f.endswith((".bin", ".pt"))]
    reloaded = auto.from_pretrained(str(out)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    stacked = load_debias_adapter(auto.from_pretrained(str(tiny_models[name])), folders, mode="inference")
    torch.testing.assert_close(logits(reloaded, tokenizer), logits(stacked, tokenizer), atol=1e-5, rtol=0)
    base = auto.from_pretrained(str(tiny_models[name])).eval()
    assert not torch.allclose(logits(reloaded, tokenizer), logits(base, tokenizer), atol=1e-4)
    info = read_debias_config(out)
    assert info["artifact"] == "merged_model" and info["axes"] == ["gender", "race"] and info["axis"] == "gender+race"
    assert [a["axis"] for a in info["adapters"]] == ["gender", "race"]
    assert info["adapters"][0]["debias_config"]["method"]["name"] == "lora"
    assert (
        info["base_model"]["backbone_fingerprint"]
        == info["adapters"][0]["debias_config"]["base_model"]["backbone_fingerprint"]
    )
    assert info["merged"]["weights_fingerprint"] != info["base_model"]["weights_fingerprint"]
    assert {"peft", "transformers", "torch"} <= set(info["versions"])


def _copy(folder: Path, dest: Path, damage: str | None = None) -> Path:
    shutil.copytree(folder, dest)
    if damage == "corrupt":
        weights = dest / "adapter_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:40])
    return dest


@pytest.mark.integration
@pytest.mark.parametrize(
    "case,message",
    [
        ("prompt", "cannot be merged into the weights; use mode='freeze' or mode='inference'"),
        ("prefix", "cannot be merged into the weights"),
        ("wrong base", "backbone fingerprint"),
        ("unknown adapter", "not found"),
        ("unknown repo", "neither a local folder nor in the Hub cache"),
        ("corrupted", "is corrupted or truncated"),
        ("model as adapter", "holds a model, not an adapter"),
        ("exists", "already exists; pass --overwrite"),
    ],
)
def test_bad_merge_input_is_one_line_and_writes_nothing(
    tiny_models, adapter, cli, tmp_path, hub_offline, case, message
) -> None:
    base, out = str(tiny_models["bert"]), tmp_path / "merged"
    source = {
        "prompt": lambda: adapter("bert", "prompt"),
        "prefix": lambda: adapter("bert", "prefix"),
        "wrong base": lambda: adapter("llama", "lora"),
        "unknown adapter": lambda: tmp_path / "nope",
        "unknown repo": lambda: "nobody/no-such-adapter",
        "corrupted": lambda: _copy(adapter("bert", "lora"), tmp_path / "bad", "corrupt"),
        "model as adapter": lambda: tiny_models["bert"],
        "exists": lambda: adapter("bert", "lora"),
    }[case]()
    if case == "exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    before = sorted(p.name for p in tmp_path.iterdir())
    code, stdout, lines = cli("--base", base, "--adapter", str(source), "--output", str(out))
    assert code == 2 and stdout == ""
    assert len(lines) == 1 and lines[0].startswith("peft-debias: error: ") and message in lines[0], lines
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written, no temporary leftovers
    if case == "exists":
        assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


@pytest.mark.e2e
def test_merge_error_from_a_real_process_is_one_stderr_line(tiny_models, adapter, tmp_path) -> None:
    """After the base model is loaded (progress bars, info logs, deprecation warnings) stderr still holds one line."""
    out = tmp_path / "merged"
    command = [sys.executable, "-m", "peft_debias", "merge", "--base", str(tiny_models["llama"])]
    command += ["--adapter", str(adapter("bert", "lora")), "--output", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "was trained on" in lines[0] and "--allow-base-mismatch" in lines[0], result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.integration
def test_allow_base_mismatch_and_overwrite(tiny_models, adapter, cli, tmp_path) -> None:
    out = tmp_path / "merged"
    out.mkdir()
    lora = adapter("bert", "lora")
    reseeded = tmp_path / "copy"
    shutil.copytree(tiny_models["bert"], reseeded)
    model = AutoModelForMaskedLM.from_pretrained(str(reseeded))
    with torch.no_grad():
        model.bert.embeddings.word_embeddings.weight.mul_(1.5)  # same architecture, other weights
    model.save_pretrained(str(reseeded))
    code, _, lines = cli("--base", str(reseeded), "--adapter", str(lora), "--output", str(out), "--overwrite")
    assert code == 2 and "backbone fingerprint" in lines[0]
    code, _, _ = cli(
        "--base", str(reseeded), "--adapter", str(lora), "--output", str(out), "--overwrite", "--allow-base-mismatch"
    )
    assert code == 0 and json.loads((out / "debias_config.json").read_text())["artifact"] == "merged_model"
