"""Bad input to bias vectors: one clear error, nothing written (API and CLI)."""

from __future__ import annotations

import errno
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM

from peft_debias import BiasVector
from peft_debias.core.errors import DebiasError
from peft_debias.vector import shard_writer

from support.vector import perturb, write_toy


@pytest.fixture(scope="module")
def models(tiny_models, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    llama = tiny_models["llama"]
    out = {"llama": llama, "llama_biased": perturb(llama, root / "llama_biased"), "bert": tiny_models["bert"]}
    # same architecture, other sizes: an intermediate size of 48 instead of 64
    model = AutoModelForCausalLM.from_pretrained(llama)
    model.config.intermediate_size = 48
    AutoModelForCausalLM.from_config(model.config).save_pretrained(root / "llama_narrow")
    out["llama_narrow"] = root / "llama_narrow"
    # a resized vocabulary
    wide = AutoModelForCausalLM.from_pretrained(llama)
    wide.resize_token_embeddings(wide.config.vocab_size + 8)
    wide.save_pretrained(root / "llama_vocab")
    out["llama_vocab"] = root / "llama_vocab"
    # a tensor missing from the biased model
    missing = perturb(llama, root / "llama_missing")
    tensors = load_file(str(missing / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(missing / "model.safetensors"), metadata={"format": "pt"})
    out["llama_missing"] = missing
    # pickle-only biased model (transformers 5 always saves safetensors: write the pickle by hand)
    pickled = root / "llama_pickle"
    shutil.copytree(out["llama_biased"], pickled)
    torch.save(load_file(str(pickled / "model.safetensors")), pickled / "pytorch_model.bin")
    (pickled / "model.safetensors").unlink()
    out["llama_pickle"] = root / "llama_pickle"
    return out


def _messages(models: dict[str, Path]) -> dict[str, tuple[str, str, str]]:
    return {
        "architectures": (models["llama"], models["bert"], "different architectures"),
        "shape": (
            models["llama"],
            models["llama_narrow"],
            r"tensor model.layers.0.mlp.down_proj.weight has shape \[32, 64\] in the base .* but \[32, 48\]",
        ),
        "vocabulary": (models["llama"], models["llama_vocab"], "vocabulary size mismatch"),
        "missing": (models["llama"], models["llama_missing"], "lacks model.layers.1.mlp.up_proj.weight"),
        "pickle": (models["llama"], models["llama_pickle"], "only pickle checkpoints"),
    }


@pytest.mark.parametrize("case", ["architectures", "shape", "vocabulary", "missing", "pickle"])
def test_mismatched_models_are_refused(models, case: str) -> None:
    pre, biased, message = _messages(models)[case]
    with pytest.raises(DebiasError, match=message):
        BiasVector.from_models(pre, biased)


def test_pickle_is_read_when_opted_in(models, tmp_path: Path) -> None:
    from support.vector import load_all

    vector = BiasVector.from_models(models["llama"], models["llama_pickle"], allow_pickle=True)
    vector.apply_to(models["llama"], scale=-1.0, output=tmp_path / "a", progress=False)
    BiasVector.from_models(models["llama"], models["llama_biased"]).apply_to(
        models["llama"], scale=-1.0, output=tmp_path / "b", progress=False
    )
    a, b = load_all(tmp_path / "a"), load_all(tmp_path / "b")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_vector_applied_to_another_architecture(models, tmp_path: Path) -> None:
    vector = BiasVector.from_models(models["llama"], models["llama_biased"])
    with pytest.raises(DebiasError, match="has shape"):
        vector.apply_to(models["llama_narrow"], scale=-1, output=tmp_path / "o", progress=False)
    with pytest.raises(DebiasError, match="different architectures"):
        vector.apply_to(models["bert"], scale=-1, output=tmp_path / "o", progress=False)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("lam", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_lambda(models, tmp_path: Path, lam: float) -> None:
    vector = BiasVector.from_models(models["llama"], models["llama_biased"])
    with pytest.raises(DebiasError, match="not a finite number"):
        vector.apply_to(models["llama"], scale=-lam, output=tmp_path / "o")
    assert not (tmp_path / "o").exists()


def test_existing_output_is_refused(models, tmp_path: Path) -> None:
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    vector = BiasVector.from_models(models["llama"], models["llama_biased"])
    with pytest.raises(DebiasError, match="already exists"):
        vector.apply_to(models["llama"], scale=-1, output=out, progress=False)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    vector.apply_to(models["llama"], scale=-1, output=out, overwrite=True, progress=False)
    assert (out / "model.safetensors").is_file() and not (out / "keep.txt").exists()


def test_disk_full_mid_write_leaves_nothing(models, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real_write = shard_writer._write

    def failing(fh, data) -> None:
        calls["n"] += 1
        if calls["n"] == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(fh, data)

    monkeypatch.setattr(shard_writer, "_write", failing)
    vector = BiasVector.from_models(models["llama"], models["llama_biased"])
    with pytest.raises(DebiasError, match="no space left"):
        vector.apply_to(models["llama"], scale=-1, output=tmp_path / "out", shard_size="20KB", progress=False)
    assert calls["n"] == 5
    assert list(tmp_path.iterdir()) == []  # no destination, no temporary sibling
    calls["n"] = 0
    with pytest.raises(DebiasError, match="no space left"):
        vector.save(tmp_path / "vec", shard_size="20KB", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_safetensors(tmp_path: Path) -> None:
    pre = write_toy(tmp_path / "pre", {"w": torch.ones(2, 2)})
    bad = write_toy(tmp_path / "bad", {"w": torch.ones(2, 2)})
    (bad / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
    with pytest.raises(DebiasError, match="not a valid safetensors file"):
        BiasVector.from_models(pre, bad)
    truncated = write_toy(tmp_path / "trunc", {"w": torch.ones(64, 64)})
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[:-100])
    with pytest.raises(DebiasError, match="malformed"):
        BiasVector.from_models(pre, truncated)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "peft_debias", *args], capture_output=True, text=True, timeout=300, check=False
    )


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("case", "extra", "message"),
    [
        ("architectures", [], "different architectures"),
        ("vocabulary", [], "vocabulary size mismatch"),
        ("missing", [], "lacks model.layers.1.mlp.up_proj.weight"),
        ("pickle", [], "only pickle checkpoints"),
        ("nan", ["--lambda", "nan"], "lambda nan is not a finite number"),
        ("inf", ["--lambda", "0.5,inf"], "lambda inf is not a finite number"),
        ("word", ["--lambda", "one"], "lambda 'one' is not a number"),
        ("no biased", [], "not found"),
        ("weights", ["--weights", "x"], "weight 'x' is not a number"),
        ("combine", ["--combine", "mean"], "unknown combination 'mean'"),
        ("adapter only", ["--as-adapter"], "only a vector made from one LoRA adapter"),
    ],
)
def test_cli_errors_are_one_line_and_write_nothing(models, tmp_path: Path, case: str, extra, message: str) -> None:
    biased = {
        "architectures": models["bert"],
        "vocabulary": models["llama_vocab"],
        "missing": models["llama_missing"],
        "pickle": models["llama_pickle"],
        "no biased": tmp_path / "nowhere",
    }.get(case, models["llama_biased"])
    lam = [] if "--lambda" in extra else ["--lambda", "1"]
    out = tmp_path / "out"
    result = run_cli(
        "vector",
        "--base",
        str(models["llama"]),
        "--biased",
        str(biased),
        "--output",
        str(out),
        *lam,
        *extra,
        "--no-progress",
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("peft-debias: error: ") and message in lines[0], result.stderr
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.e2e
def test_cli_output_exists(models, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli(
        "vector",
        "--base",
        str(models["llama"]),
        "--biased",
        str(models["llama_biased"]),
        "--lambda",
        "1",
        "--output",
        str(out),
    )
    assert result.returncode == 2 and "already exists" in result.stderr
    assert list(out.iterdir()) == []
