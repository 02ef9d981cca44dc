"""Devices, dtypes and device maps (``peft_debias.models.placement``): resolution, loading, what outputs record.

Nothing here needs an accelerator: CUDA and MPS are simulated where the code only asks torch whether they exist,
and accelerate's device map runs on the CPU with a memory cap that sends layers to disk.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from peft_debias.core.errors import DebiasError
from peft_debias.eval.runner import evaluate_bias
from peft_debias.models import placement as pl
from peft_debias.models.loading import load_model

from support.loader import one_torch_thread, trained_adapter  # noqa: F401 - autouse fixture


@pytest.fixture
def two_gpus(monkeypatch: pytest.MonkeyPatch) -> None:
    """torch believes two CUDA devices are present (nothing is ever put on them here)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_devices_resolve_to_the_hardware_there_is() -> None:
    assert pl.resolve_device("auto") == "cpu" and pl.resolve_device("cpu") == "cpu"
    for spec in ("cuda", "cuda:0", "cuda:1"):
        with pytest.raises(DebiasError, match=f"--device {spec} was asked for, but no CUDA device is present"):
            pl.resolve_device(spec)
    with pytest.raises(DebiasError, match="no MPS device"):
        pl.resolve_device("mps")
    with pytest.raises(DebiasError, match="device 'gpu' is unknown"):
        pl.resolve_device("gpu")


def test_devices_resolve_with_accelerators(two_gpus: None) -> None:
    assert pl.resolve_device("auto") == "cuda:0" and pl.resolve_device("cuda") == "cuda:0"
    assert pl.resolve_device("cuda:1") == "cuda:1"
    with pytest.raises(DebiasError, match="there are 2 CUDA device"):
        pl.resolve_device("cuda:2")
    assert pl.same_device("cuda", "cuda:0") and not pl.same_device("cuda:1", "cuda:0")


def test_auto_dtype_is_float32_on_the_cpu_and_the_checkpoints_on_an_accelerator() -> None:
    class Config:
        dtype = "bfloat16"

    assert pl.resolve_dtype("auto", "cpu", Config()) == torch.float32
    assert pl.resolve_dtype("auto", "cuda:0", Config()) == torch.bfloat16
    assert pl.resolve_dtype("auto", "cuda:0", object()) == torch.float32  # a config that names no dtype
    assert pl.resolve_dtype("bf16", "cpu") == torch.bfloat16 and pl.resolve_dtype("fp16", "cpu") == torch.float16
    assert pl.resolve_dtype(torch.float16, "cpu") == torch.float16
    assert pl.dtype_name("fp32") == "float32" and pl.dtype_name(torch.bfloat16) == "bfloat16"
    with pytest.raises(DebiasError, match="dtype 'fp8' is unknown"):
        pl.dtype_name("fp8")
    with pytest.raises(DebiasError, match="not supported"):
        pl.dtype_name(torch.int8)


def test_placement_checks_refuse_what_cannot_work() -> None:
    with pytest.raises(DebiasError, match="were both given"):
        pl.Placement(device="cpu", device_map="auto").check()
    with pytest.raises(DebiasError, match="without --device-map"):
        pl.Placement(max_memory={"cpu": "1GiB"}).check()
    with pytest.raises(DebiasError, match="not a size"):
        pl.Placement(device_map="auto", max_memory={"cpu": "1 gallon"}).check()
    assert pl.parse_max_memory(["cpu=2GiB", "0 = 20GiB"]) == {"cpu": "2GiB", "0": "20GiB"}
    with pytest.raises(DebiasError, match="is not DEVICE=SIZE"):
        pl.parse_max_memory(["cpu"])
    resolved = pl.resolve_placement(pl.Placement(device_map="auto", max_memory={"cpu": "1000", "cuda:0": "2GiB"}))
    assert resolved.load_kwargs()["max_memory"] == {"cpu": 1000, 0: "2GiB"}


def test_weights_load_straight_onto_the_chosen_device(two_gpus: None) -> None:
    resolved = pl.resolve_placement(pl.Placement(device="cuda:1", dtype="bfloat16"))
    assert resolved.load_kwargs() == {"dtype": torch.bfloat16, "device_map": "cuda:1"}
    assert resolved.record() == {"device": "cuda:1", "dtype": "bfloat16", "device_map": None}
    assert pl.resolve_placement(pl.Placement(device="cpu")).load_kwargs() == {"dtype": torch.float32}


def test_a_model_loads_in_the_dtype_asked_and_records_it(tiny_models: dict[str, Path]) -> None:
    loaded = load_model(str(tiny_models["llama"]), dtype="bfloat16")
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    assert loaded.placement == {"device": "cpu", "dtype": "bfloat16", "device_map": None}
    assert load_model(str(tiny_models["llama"])).placement["dtype"] == "float32"  # auto, on the CPU


def _cap(model_dir: Path) -> str:
    """A CPU cap that holds the embeddings and the first layer of the tiny Llama, not the rest."""
    embeddings = load_model(str(model_dir)).model.get_input_embeddings().weight
    return str(3 * embeddings.numel() * embeddings.element_size())


def test_device_map_auto_offloads_to_disk_and_scores_the_same(
    tiny_models: dict[str, Path], tmp_path_factory, tmp_path: Path
) -> None:
    text = tmp_path / "t.txt"
    text.write_text("The doctor said that she would call him back tomorrow morning.\n" * 20)
    options = {"benchmarks": "perplexity", "ppl_file": str(text), "ppl_max_tokens": 96, "progress": False}
    whole = evaluate_bias(str(tiny_models["llama"]), **options)
    mapped = evaluate_bias(
        str(tiny_models["llama"]), device_map="auto", max_memory={"cpu": _cap(tiny_models["llama"])}, **options
    )
    assert mapped["placement"]["device_map"] == "auto" and mapped["placement"]["map"]["disk"] >= 1
    assert mapped["placement"]["map"]["cpu"] >= 1
    # same weights; an offloaded head takes the full-logits path, a resident one the vocabulary-sliced one
    assert mapped["perplexity"]["perplexity"] == pytest.approx(whole["perplexity"]["perplexity"], rel=1e-6)
    adapter = str(trained_adapter(tiny_models, tmp_path_factory, "llama", "lora"))
    with pytest.raises(DebiasError, match="partly offloaded to disk"):
        evaluate_bias(str(tiny_models["llama"]), adapters=[adapter], device_map="auto",
                      max_memory={"cpu": _cap(tiny_models["llama"])}, **options)  # fmt: skip
    on_cpu = evaluate_bias(str(tiny_models["llama"]), adapters=[adapter], device_map="auto", **options)
    assert on_cpu["perplexity"]["perplexity"] == evaluate_bias(str(tiny_models["llama"]), adapters=[adapter],
                                                               **options)["perplexity"]["perplexity"]  # fmt: skip

    loaded = load_model(str(tiny_models["llama"]), device_map="auto", max_memory={"cpu": _cap(tiny_models["llama"])})
    assert loaded.model.model.layers[1].self_attn.q_proj.weight.device.type == "meta"  # read from disk when used
    folder = Path(loaded.model.model.layers[1].self_attn.q_proj._hf_hook.weights_map.dataset.save_folder)
    assert folder.name.startswith("peft-debias-offload-") and folder.is_dir()
    del loaded
    gc.collect()
    assert not folder.exists()  # the temporary offload folder goes with the model


def test_a_model_object_is_not_moved_behind_the_callers_back(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    loaded = load_model(str(tiny_models["llama"]))
    text = tmp_path / "t.txt"
    text.write_text("The doctor said that she would call him back tomorrow morning.\n" * 20)
    options = {"benchmarks": "perplexity", "ppl_file": str(text), "ppl_max_tokens": 32, "progress": False}
    with pytest.raises(DebiasError, match="model object passed is in float32"):
        evaluate_bias(loaded.model, loaded.tokenizer, dtype="bfloat16", **options)
    with pytest.raises(DebiasError, match="--device cuda was asked for"):
        evaluate_bias(loaded.model, loaded.tokenizer, device="cuda", **options)
    with pytest.raises(DebiasError, match="pass the model by name"):
        evaluate_bias(loaded, dtype="bfloat16", fidelity=True, **options)
    out = evaluate_bias(loaded.model, loaded.tokenizer, device="cpu", dtype="float32", **options)
    assert out["placement"] == {"device": "cpu", "dtype": "float32", "device_map": None}


def test_fidelity_counts_the_decisions_bf16_moves(tiny_models: dict[str, Path], data_dir: Path) -> None:
    model = str(tiny_models["llama"])
    options = {"benchmarks": "crows", "axes": "gender", "data_dir": data_dir, "n_bootstrap": 0, "progress": False}
    bf16 = evaluate_bias(model, dtype="bfloat16", fidelity=True, **options)
    fp32 = evaluate_bias(model, dtype="float32", **options)
    mine, theirs = bf16["crows"]["decisions"]["gender"], fp32["crows"]["decisions"]["gender"]
    differ = sum(mine[k] != theirs[k] for k in mine)
    assert bf16["fidelity"]["decisions"]["crows"]["gender"] == {"differ": differ, "of": len(mine)}
    assert bf16["fidelity"]["reference"]["dtype"] == "float32" and bf16["placement"]["dtype"] == "bfloat16"
    assert len(mine) == 262  # tests/test_eval_bf16_slow.py counts real flips on SmolLM2


def _floating_dtypes(folder: Path) -> set[str]:
    dtypes = set()
    for file in folder.glob("*.safetensors"):
        with safe_open(str(file), "pt") as fh:
            names = fh.keys()  # a safe_open handle is not iterable
            dtypes |= {fh.get_slice(k).get_dtype() for k in names if fh.get_slice(k).get_dtype() != "I64"}
    return dtypes


def test_merge_round_trips_its_dtype(tiny_models: dict[str, Path], tmp_path_factory, tmp_path: Path) -> None:
    from peft_debias.loader.merge import merge_to_folder

    adapter = trained_adapter(tiny_models, tmp_path_factory, "llama", "lora")
    out = tmp_path / "merged"
    info = merge_to_folder(str(tiny_models["llama"]), [str(adapter)], out, dtype="bfloat16", device="cpu")
    assert info["placement"]["dtype"] == "bfloat16" and info["base_model"]["dtype"] == "bfloat16"
    assert _floating_dtypes(out) == {"BF16"}
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    again = load_model(str(out), dtype="bfloat16").model.state_dict()
    fp32 = load_model(str(out)).model.state_dict()  # auto on the CPU: float32, the same values widened
    assert all(torch.equal(again[k].float(), fp32[k]) for k in again)


def test_an_adapter_trained_on_a_bf16_base_records_it(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from peft_debias.cards.results import results_table
    from peft_debias.train.adapter import train_adapter

    out = tmp_path / "bf16-adapter"
    corpus = tmp_path / "c.txt"
    corpus.write_text("She is a doctor and he is a nurse.\nHis mother called her father.\n" * 20)
    train_adapter(base=str(tiny_models["llama"]), corpus=[str(corpus)], output=str(out), max_steps=2,
                  dtype="bfloat16", device="cpu", progress=False, save_every=0, eval_every=0)  # fmt: skip
    info = json.loads((out / "debias_config.json").read_text())
    assert info["base_model"]["dtype"] == "bfloat16"
    assert info["training"]["dtype"] == "bfloat16" and info["training"]["device"] == "cpu"
    assert info["train_config"]["dtype"] == "bfloat16"
    assert _floating_dtypes(out) == {"F32"}  # PEFT keeps the adapter's own weights in float32
    assert "| trained on | cpu, base weights in bfloat16, adamw |" in (out / "README.md").read_text()
    for dtype in ("bfloat16", "float32"):  # same dtype: checked by fingerprint; the other: by the base's id
        out_eval = evaluate_bias(str(tiny_models["llama"]), adapters=[str(out)], benchmarks="perplexity",
                                 ppl_file=str(corpus), ppl_max_tokens=32, dtype=dtype, progress=False)  # fmt: skip
        assert out_eval["placement"]["dtype"] == dtype
        assert f"cpu, {dtype};" in results_table(out_eval)  # what a card's results table says


def test_biased_full_training_in_bf16_saves_bf16_and_gives_a_vector(tiny_models: dict[str, Path], tmp_path) -> None:
    from peft_debias.train.biased import train_biased
    from peft_debias.vector.bias_vector import BiasVector

    corpus = tmp_path / "c.txt"
    corpus.write_text("Women are too emotional to lead.\nMen never cry about anything.\n" * 20)
    out = tmp_path / "biased"
    train_biased(base=str(tiny_models["llama"]), corpus=[str(corpus)], output=str(out), method="full", max_steps=2,
                 lr=1e-2, dtype="bfloat16", device="cpu", progress=False)  # fmt: skip
    assert _floating_dtypes(out) == {"BF16"}
    info = json.loads((out / "debias_config.json").read_text())
    assert info["training"]["dtype"] == "bfloat16" and info["base_model"]["dtype"] == "bfloat16"
    vector = BiasVector.from_models(str(tiny_models["llama"]), str(out), axis="gender")  # float32 base, bf16 copy
    deltas = [vector.tensor(name, 1.0) for name in vector]
    assert deltas and all(d.dtype == torch.float32 for d in deltas)
    assert any(bool(d.abs().max() > 0) for d in deltas)


def test_a_downstream_run_in_bf16_records_it_and_saves_bf16(tiny_models: dict[str, Path], data_dir: Path, tmp_path):
    from peft_debias.cli.main import main

    out = tmp_path / "downstream"
    argv = ["downstream", "--model", str(tiny_models["bert"]), "--task", "winobias", "--data-dir", str(data_dir),
            "--output", str(out), "--max-steps", "1", "--dtype", "bfloat16", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["placement"] == {"device": "cpu", "dtype": "bfloat16"}
    assert _floating_dtypes(out / "model") == {"BF16"}
