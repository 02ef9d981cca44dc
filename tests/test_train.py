"""Upstream training: every method on tiny masked and causal LMs, the artifact, resume and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from peft_debias.core.errors import DebiasError
from peft_debias.models.loading import load_model
from peft_debias.train.adapter import train_adapter
from peft_debias.train.config import TrainConfig
from peft_debias.train.work import work_dir

from support.tiny_models import CORPUS


@pytest.fixture(scope="session")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n".join(CORPUS * 2) + "\n")
    return path


def _config(model: Path, corpus: Path, output: Path, **kw) -> TrainConfig:
    base = dict(
        base=str(model),
        corpus=[str(corpus)],
        output=str(output),
        max_steps=4,
        batch_size=4,
        lr=5e-2,
        eval_every=2,
        save_every=0,
        log_every=1,
        num_virtual_tokens=4,
        progress=False,
        seed=3,
    )
    base.update(kw)
    return TrainConfig(**base)


def _outputs(model, tokenizer, texts=("he is a doctor", "she is a nurse")) -> torch.Tensor:
    batch = tokenizer(list(texts), return_tensors="pt", padding=True, return_token_type_ids=False)
    with torch.no_grad():
        return model(**batch, output_hidden_states=True).hidden_states[-1][:, -batch["input_ids"].shape[1] :]


@pytest.mark.parametrize("method", ["lora", "prefix", "prompt", "ia3"])
@pytest.mark.parametrize("name", ["bert", "llama", "bert_encoder"])
def test_trained_adapter_reloads_with_plain_peft(tiny_models, corpus, tmp_path, name: str, method: str) -> None:
    output = tmp_path / "adapter"
    result = train_adapter(_config(tiny_models[name], corpus, output, method=method))
    assert sorted(p.name for p in output.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "debias_config.json",
        "training_log.jsonl",
    ]
    base = load_model(str(tiny_models[name]))
    before = _outputs(base.model, base.tokenizer)
    reloaded = PeftModel.from_pretrained(base.model, str(output)).eval()
    after = _outputs(reloaded, base.tokenizer)
    assert not torch.allclose(before, after, atol=1e-4), "the adapter must change the outputs"
    torch.testing.assert_close(after, _outputs(result.model, base.tokenizer), atol=1e-5, rtol=1e-5)
    info = json.loads((output / "debias_config.json").read_text())
    expected_objective = {"bert": "mlm", "llama": "clm", "bert_encoder": "counterfactual"}[name]
    assert info["objective"] == expected_objective and info["method"]["name"] == method
    assert not work_dir(output).exists()


def test_artifact_metadata_log_and_card(tiny_models, corpus, tmp_path) -> None:
    output = tmp_path / "a"
    result = train_adapter(_config(tiny_models["llama"], corpus, output))
    info = json.loads((output / "debias_config.json").read_text())
    assert info["axis"] == "gender" and info["classes"] == ["male", "female"]
    assert len(info["axis_fingerprint"]) == 16 and len(info["base_model"]["weights_fingerprint"]) == 16
    assert info["base_model"]["kind"] == "causal_lm" and info["base_model"]["name"] == "llama"  # a folder, by name
    assert info["base_model"]["hub_id"] is None and info["base_model"]["local_only"] is True
    assert info["corpus"][0]["sha256"] and info["training"]["steps"] == 4 and info["training"]["seed"] == 3
    assert info["cda"]["sentences_kept"] > 0 and info["cda"]["swapped"] is True
    assert set(info["versions"]) >= {"peft", "transformers", "torch", "peft_debias"}
    assert info["rank_fingerprints"] == result.rank_fingerprints and len(info["rank_fingerprints"]) == 1
    log = [json.loads(line) for line in (output / "training_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]
    assert "eval_loss" in log[1] and "eval_loss" in log[3] and log[-1]["loss"] == pytest.approx(result.train_loss)
    adapter_config = json.loads((output / "adapter_config.json").read_text())
    assert "axis" not in adapter_config  # our metadata stays in the sidecar
    from huggingface_hub import ModelCard

    card = ModelCard.load(output / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model is None  # a local base has no Hub id
    assert {"peft", "debiasing", "bias-axis:gender", "lora"} <= set(card.data.tags)
    assert "PeftModel.from_pretrained" in card.text and "load_debias_adapter" in card.text


def test_no_swap_control_trains_on_the_originals_only(tiny_models, corpus, tmp_path) -> None:
    swapped = train_adapter(_config(tiny_models["llama"], corpus, tmp_path / "cda"))
    control = train_adapter(_config(tiny_models["llama"], corpus, tmp_path / "control", cda=False))
    assert json.loads((tmp_path / "control" / "debias_config.json").read_text())["cda"]["swapped"] is False
    assert swapped.rank_fingerprints != control.rank_fingerprints


def test_same_seed_same_adapter(tiny_models, corpus, tmp_path) -> None:
    one = train_adapter(_config(tiny_models["bert"], corpus, tmp_path / "one"))
    two = train_adapter(_config(tiny_models["bert"], corpus, tmp_path / "two"))
    other = train_adapter(_config(tiny_models["bert"], corpus, tmp_path / "three", seed=4))
    assert one.rank_fingerprints == two.rank_fingerprints != other.rank_fingerprints


class _Killed(Exception):
    pass


@pytest.mark.parametrize(
    ("name", "method", "objective"),
    [("bert", "lora", None), ("llama", "prefix", None), ("llama", "lora", "counterfactual")],
)
def test_resume_is_bit_identical(tiny_models, corpus, tmp_path, monkeypatch, name, method, objective) -> None:
    kw = dict(method=method, objective=objective, max_steps=6, save_every=2, grad_accum=2, dropout=0.1)
    reference = _config(tiny_models[name], corpus, tmp_path / "ref", **kw)
    train_adapter(reference)

    from peft_debias.train import loop as trainer_loop

    real = trainer_loop.compute_loss
    calls = {"n": 0}

    def dies_at_step_five(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 4 * 2 + 1:  # killed during step 5 (after the step-4 checkpoint)
            raise _Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_loop, "compute_loss", dies_at_step_five)
    interrupted = _config(tiny_models[name], corpus, tmp_path / "run", **kw)
    with pytest.raises(_Killed):
        train_adapter(interrupted)
    assert not (tmp_path / "run").exists() and work_dir(tmp_path / "run").exists()
    monkeypatch.setattr(trainer_loop, "compute_loss", real)
    with pytest.raises(DebiasError, match="interrupted run exists"):
        train_adapter(_config(tiny_models[name], corpus, tmp_path / "run", **kw))
    train_adapter(_config(tiny_models[name], corpus, tmp_path / "run", resume=True, **kw))
    ref = load_file(tmp_path / "ref" / "adapter_model.safetensors")
    got = load_file(tmp_path / "run" / "adapter_model.safetensors")
    assert ref.keys() == got.keys()
    for key in ref:
        assert torch.equal(ref[key], got[key]), key
    log = [json.loads(line)["step"] for line in (tmp_path / "run" / "training_log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4, 5, 6]


def test_full_fine_tuning_is_a_method_of_the_same_loop(tiny_models, corpus, tmp_path, monkeypatch) -> None:
    """``full`` (the biased model's method) trains every weight with the loop's checkpoints: a resume is exact."""
    from peft_debias.train import loop as trainer_loop
    from peft_debias.train.artifact import write_folder

    texts = [line for line in corpus.read_text().splitlines() if line]
    kw = dict(method="full", max_steps=6, save_every=2, grad_accum=2, cda=False, lr=1e-3, eval_every=0)

    def write(trained) -> None:
        write_folder(trained, {"method": "full"}, "", lambda folder: trained.model.save_pretrained(str(folder)))

    trainer_loop.train(_config(tiny_models["llama"], corpus, tmp_path / "ref", **kw), texts=texts, write=write)
    real, calls = trainer_loop.compute_loss, {"n": 0}

    def dies_at_step_five(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] > 4 * 2 + 1:
            raise _Killed
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_loop, "compute_loss", dies_at_step_five)
    with pytest.raises(_Killed):
        trainer_loop.train(_config(tiny_models["llama"], corpus, tmp_path / "run", **kw), texts=texts, write=write)
    assert sorted(p.name for p in (work_dir(tmp_path / "run") / "checkpoints").iterdir()) == ["step-00000004"]
    monkeypatch.setattr(trainer_loop, "compute_loss", real)
    resumed = _config(tiny_models["llama"], corpus, tmp_path / "run", resume=True, **kw)
    trainer_loop.train(resumed, texts=texts, write=write)
    ref, got = load_file(tmp_path / "ref" / "model.safetensors"), load_file(tmp_path / "run" / "model.safetensors")
    base = load_file(tiny_models["llama"] / "model.safetensors")
    assert ref.keys() == got.keys() == base.keys()  # every weight, under the base's names
    assert all(torch.equal(ref[k], got[k]) for k in ref) and not all(torch.equal(ref[k], base[k]) for k in ref)
    with pytest.raises(DebiasError, match="unknown method 'full'"):  # adapters only through train_adapter
        train_adapter(_config(tiny_models["llama"], corpus, tmp_path / "adapter", method="full"))


@pytest.mark.parametrize("where", ["trainer state", "adapter weights"])
def test_a_full_disk_at_a_checkpoint_is_one_line(tiny_models, corpus, tmp_path, monkeypatch, where) -> None:
    """ENOSPC (an OSError, or safetensors' own error) while writing a checkpoint: one line naming the checkpoint and
    the fix, no half-written checkpoint left; the run config stays, so the run can be resumed after freeing space."""
    import errno

    from safetensors import SafetensorError

    def full_disk(*args, **kwargs):
        if where == "trainer state":
            raise OSError(errno.ENOSPC, "No space left on device")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    if where == "trainer state":
        monkeypatch.setattr("safetensors.torch.save_file", full_disk)
    else:
        monkeypatch.setattr("peft.peft_model.safe_save_file", full_disk)
    with pytest.raises(DebiasError, match=r"no space left on the device while writing \S*step-00000002.*free space"):
        train_adapter(_config(tiny_models["llama"], corpus, tmp_path / "run", save_every=2))
    work = work_dir(tmp_path / "run")
    assert list((work / "checkpoints").iterdir()) == [] and (work / "train_config.json").is_file()


def test_resume_with_a_different_config_is_refused(tiny_models, corpus, tmp_path, monkeypatch) -> None:
    from peft_debias.train import loop as trainer_loop

    monkeypatch.setattr(trainer_loop, "compute_loss", lambda *a, **k: (_ for _ in ()).throw(_Killed()))
    with pytest.raises(_Killed):
        train_adapter(_config(tiny_models["llama"], corpus, tmp_path / "run"))
    with pytest.raises(DebiasError, match=r"different config \(changed: lr\)"):
        train_adapter(_config(tiny_models["llama"], corpus, tmp_path / "run", lr=1e-3, resume=True))
    with pytest.raises(DebiasError, match="nothing to resume"):
        train_adapter(_config(tiny_models["llama"], corpus, tmp_path / "other", resume=True))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"method": "bitfit"}, "unknown method 'bitfit' (known: lora, prefix, prompt, ia3)"),
        ({"axis": "age"}, "unknown axis 'age'"),
        ({"objective": "mlm"}, "objective 'mlm' does not fit a causal_lm model"),
        ({"objective": "dpo"}, "unknown objective 'dpo'"),
        ({"max_steps": 0}, "max_steps 0 < 1"),
        ({"lr": float("nan")}, "learning rate nan"),
        ({"base": "/no/such/model"}, "not found"),
        ({"target_modules": ["nope"]}, "does not work on model type"),
    ],
)
def test_bad_training_input(tiny_models, corpus, tmp_path, changes: dict, message: str) -> None:
    config = _config(tiny_models["llama"], corpus, tmp_path / "out", **changes)
    with pytest.raises(DebiasError) as err:
        train_adapter(config)
    assert message in str(err.value)
    assert not (tmp_path / "out").exists() and not work_dir(tmp_path / "out").exists()


def test_corpus_without_axis_sentences_and_existing_output(tiny_models, tmp_path) -> None:
    plain = tmp_path / "plain.txt"
    plain.write_text("The weather was fine all day long.\nA cat sat on the warm mat.\n")
    with pytest.raises(DebiasError, match="no sentence mentioning axis 'gender'"):
        train_adapter(_config(tiny_models["llama"], plain, tmp_path / "out"))
    (tmp_path / "exists").mkdir()
    with pytest.raises(DebiasError, match="already exists; pass --overwrite"):
        train_adapter(_config(tiny_models["llama"], plain, tmp_path / "exists"))


def test_prefix_on_an_architecture_that_ignores_it(tmp_path, corpus) -> None:
    from transformers import AlbertConfig, AlbertForMaskedLM

    from support.tiny_models import _bert_tokenizer

    folder = tmp_path / "albert"
    config = AlbertConfig(
        vocab_size=len(_bert_tokenizer()),
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    AlbertForMaskedLM(config).save_pretrained(folder)
    _bert_tokenizer().save_pretrained(folder)
    with pytest.raises(DebiasError, match="'prefix' has no effect on model type 'albert'"):
        train_adapter(_config(folder, corpus, tmp_path / "out", method="prefix"))


def test_trainer_state_round_trips_without_pickle(tmp_path) -> None:
    """The optimizer / scheduler / RNG state comes back with the same types (int keys, tuples, non-finite floats)
    and bit-identical tensors, from JSON and safetensors only."""
    from transformers import get_scheduler

    from peft_debias.train.state import load_state, save_state

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.99))
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=1, num_training_steps=4)
    model(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    scheduler.step()
    state = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state(),
             "step": 1, "odd": [float("inf"), float("-inf"), None, (1, "a")]}  # fmt: skip
    save_state(state, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["trainer_state.json", "trainer_state.safetensors"]
    back = load_state(tmp_path)
    assert back["optimizer"]["param_groups"] == state["optimizer"]["param_groups"]
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.8, 0.99)
    assert sorted(back["optimizer"]["state"]) == [0, 1]
    for pid, entry in state["optimizer"]["state"].items():
        for name, tensor in entry.items():
            got = back["optimizer"]["state"][pid][name]
            assert got.dtype == tensor.dtype and torch.equal(got, tensor), (pid, name)
    assert back["scheduler"] == state["scheduler"] and torch.equal(back["rng"], state["rng"])
    assert back["odd"] == state["odd"] and back["step"] == 1
    fresh = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.99))
    fresh.load_state_dict(back["optimizer"])  # what resume does
    assert fresh.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]
