"""Saving and reloading a model fine-tuned with frozen debiasing adapters (issue 19): save_pretrained, Trainer,
accelerate (two CPU ranks), load_downstream, merged vs frozen training, bad input."""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

from peft_debias.core.errors import DebiasError
from peft_debias.loader.attach import adapter_parameters, load_debias_adapter
from peft_debias.loader.reload import load_downstream
from peft_debias.loader.saving import DownstreamSaveMixin

from support.launch import launch_two_ranks
from support.loader import (
    adapter_snapshot,
    one_torch_thread,  # noqa: F401 - autouse fixture
    trained_adapter,
)

REPO = Path(__file__).resolve().parents[1]
IDS = torch.arange(5, 37).reshape(4, 8)  # no pad token in it (the llama classifier pools the last non-pad token)
LABELS = torch.tensor([0, 1, 0, 1])
SEED = 11


@pytest.fixture(scope="module")
def adapter(tiny_models, tmp_path_factory):
    def get(model: str, method: str, axis: str = "gender") -> Path:  # fixed seed: the same adapters every session
        return trained_adapter(tiny_models, tmp_path_factory, model, method, axis, seed=SEED)

    return get


def classifier(tiny_models, name: str = "bert"):
    torch.manual_seed(0)  # the new head starts the same in every build
    return AutoModelForSequenceClassification.from_pretrained(str(tiny_models[name]), num_labels=2)


def logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=IDS).logits


def batches(n: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return [torch.randint(5, 100, (4, 8), generator=generator) for _ in range(n)]


def fine_tune(model, optimizer_cls=torch.optim.AdamW, steps: int = 3, labels=LABELS, **options) -> None:
    """A few optimizer steps on the trainable parameters, dropout off (eval mode) so that runs compare exactly."""
    options = {"lr": 1e-2, **options}
    optimizer = optimizer_cls([p for p in model.parameters() if p.requires_grad], **options)
    model.eval()
    for ids in batches(steps):
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()


def trainable(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def written_text(folder: Path) -> str:
    return "\n".join(p.read_text() for p in folder.rglob("*") if p.suffix in (".json", ".md"))


@pytest.mark.parametrize(
    ("name", "method"),
    [("bert", "lora"), ("bert", "ia3"), ("bert", "prefix"), ("bert", "prompt"), ("llama", "lora")],
)
def test_save_pretrained_writes_the_whole_fine_tuned_model(tiny_models, adapter, tmp_path, name, method) -> None:
    source = adapter(name, method)
    model = load_debias_adapter(classifier(tiny_models, name), source, mode="freeze")
    assert isinstance(model, DownstreamSaveMixin)
    frozen, before = adapter_snapshot(model), trainable(model)
    fine_tune(model)
    assert all(torch.equal(p, frozen[n]) for n, p in adapter_parameters(model)), "the adapter must stay frozen"
    after = trainable(model)
    head = [n for n in after if "score" in n or "classifier" in n]
    assert head and all(not torch.equal(after[n], before[n]) for n in head)
    assert any(not torch.equal(after[n], before[n]) for n in after if "layers.1" in n or "layer.1" in n)
    expected = logits(model)

    out = tmp_path / "fine-tuned"
    out.mkdir()
    (out / "adapter_config.json").write_text("{}")  # as an adapter-only save of an adapter named 'default' leaves
    model.save_pretrained(out)
    files = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors", "downstream.json", "README.md"} <= files
    assert {f"adapters/gender/{f}" for f in ("adapter_config.json", "adapter_model.safetensors")} <= files
    assert "adapter_config.json" not in files  # the root must not read as an adapter
    assert json.loads((out / "adapters/gender/debias_config.json").read_text()) == json.loads(
        (source / "debias_config.json").read_text()
    )
    info = json.loads((out / "downstream.json").read_text())
    assert info["adapters"] == info["active"] == ["gender"] and info["model_class"].endswith("SequenceClassification")
    assert str(tmp_path) not in written_text(out) and str(tiny_models[name].parent) not in written_text(out)

    reloaded = load_downstream(out)
    assert torch.equal(logits(reloaded), expected)
    assert not any(p.requires_grad for p in reloaded.parameters()) and not reloaded.training

    plain, loading = AutoModelForSequenceClassification.from_pretrained(str(out), output_loading_info=True)
    assert not any(loading[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    base_weights = model.get_base_model().state_dict()
    head_key = next(k for k in plain.state_dict() if k.startswith(("score", "classifier")))
    assert torch.equal(plain.state_dict()[head_key], base_weights[head_key])
    assert not torch.equal(logits(plain), expected), "the root holds the model WITHOUT the adapters"

    again = load_downstream(out, mode="freeze")
    assert again.training and not any(p.requires_grad for _, p in adapter_parameters(again))
    assert set(trainable(again)) == set(after)


def test_trainer_save_model_writes_a_reloadable_model(tiny_models, adapter, tmp_path) -> None:
    from transformers import Trainer, TrainingArguments

    model = load_debias_adapter(classifier(tiny_models), adapter("bert", "lora"), mode="freeze")
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    rows = [{"input_ids": ids[i], "labels": LABELS[i]} for ids in batches() for i in range(4)]
    args = TrainingArguments(
        output_dir=str(tmp_path / "run"),
        max_steps=3,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        logging_strategy="no",
        use_cpu=True,
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    head = model.get_base_model().classifier.weight.detach().clone()
    Trainer(model=model, args=args, train_dataset=rows).train()
    assert not torch.equal(model.get_base_model().classifier.weight, head)
    expected = logits(model)
    trainer = Trainer(model=model, args=args)
    trainer.save_model(str(tmp_path / "saved"))
    assert torch.equal(logits(load_downstream(tmp_path / "saved")), expected)


@pytest.mark.parametrize(("name", "method", "head"), [("gpt2", "lora", AutoModelForCausalLM), ("bert", "prompt", None)])
def test_accelerator_save_model_root_loads_strictly(tiny_models, adapter, tmp_path, name, method, head) -> None:
    """accelerate writes the PeftModel's state dict minus tied duplicates (gpt2's lm_head, prompt tuning's
    word_embeddings): the root is read with peft key names, tied tensors restored, everything else required."""
    from accelerate import Accelerator

    base = head.from_pretrained(str(tiny_models[name])) if head else classifier(tiny_models, name)
    model = load_debias_adapter(base, adapter(name, method), mode="freeze")
    fine_tune(model, labels=IDS if head else LABELS)
    expected = logits(model)
    model.save_pretrained(tmp_path / "out")
    Accelerator(cpu=True).save_model(model, tmp_path / "out")
    root = load_file(str(tmp_path / "out/model.safetensors"))
    assert all(k.startswith(("base_model.", "prompt_encoder.", "word_embeddings.")) for k in root)
    assert torch.equal(logits(load_downstream(tmp_path / "out")), expected)
    key = next(iter(root))
    del root[key]
    save_file(root, str(tmp_path / "out/model.safetensors"))
    with pytest.raises(DebiasError, match="missing tensor"):
        load_downstream(tmp_path / "out")


def test_given_state_dict_and_is_main_process_are_honoured(tiny_models, adapter, tmp_path) -> None:
    model = load_debias_adapter(classifier(tiny_models), adapter("bert", "lora"), mode="freeze")
    model.save_pretrained(tmp_path / "other-rank", is_main_process=False)
    assert not (tmp_path / "other-rank").exists()
    state = {k: v.clone() for k, v in model.state_dict().items()}  # as Trainer passes it under FSDP / DeepSpeed
    head, lora = (next(k for k in state if part in k) for part in ("classifier.weight", "lora_B.gender"))
    state[head] += 1
    state[lora] += 1
    model.save_pretrained(tmp_path / "given", state_dict=state, save_function=torch.save)
    assert torch.equal(load_file(str(tmp_path / "given/model.safetensors"))["classifier.weight"], state[head])
    saved = load_file(str(tmp_path / "given/adapters/gender/adapter_model.safetensors"))
    assert any(torch.equal(value, state[lora]) for value in saved.values())


def test_two_stacked_axes_are_saved_and_active_after_reload(tiny_models, adapter, tmp_path, caplog) -> None:
    folders = [adapter("bert", "lora", "gender"), adapter("bert", "lora", "race")]
    model = load_debias_adapter(classifier(tiny_models), folders, mode="freeze")
    fine_tune(model)
    expected = logits(model)
    model.save_pretrained(tmp_path / "both")
    info = json.loads((tmp_path / "both/downstream.json").read_text())
    assert info["adapters"] == info["active"] == ["gender", "race"]
    assert "| race | race | lora |" in (tmp_path / "both/README.md").read_text()
    with caplog.at_level(logging.WARNING, logger="peft_debias"):
        reloaded = load_downstream(tmp_path / "both")
        mismatch = [r for r in caplog.records if "allow_base_mismatch" in r.getMessage()]
        assert not mismatch, "the fine-tuned base differs from the adapters' recorded one by design: no warning"
        fine_tuned = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "both"))
        load_debias_adapter(fine_tuned, folders[0], allow_base_mismatch=True)
        assert any("allow_base_mismatch" in r.getMessage() for r in caplog.records), "elsewhere it still warns"
    assert reloaded.active_adapters == ["gender", "race"]
    assert torch.equal(logits(reloaded), expected)
    shutil.rmtree(tmp_path / "both/adapters/race")  # without the race adapter the outputs differ
    with pytest.raises(DebiasError, match=r"adapter 'race' listed in .* is missing"):
        load_downstream(tmp_path / "both")


@pytest.mark.e2e
def test_two_cpu_ranks_save_with_accelerate_and_reload(tiny_models, adapter, tmp_path) -> None:
    first, second = tmp_path / "save_pretrained", tmp_path / "save_model"
    script = REPO / "tests" / "support" / "downstream_ddp.py"
    paths = (tiny_models["bert"], adapter("bert", "lora"), first, second, tmp_path)
    result = launch_two_ranks(script, *(str(p) for p in paths), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [load_file(str(tmp_path / f"logits-{r}.safetensors"))["logits"] for r in (0, 1)]
    assert torch.equal(ranks[0], ranks[1]), "DDP keeps the ranks in step"
    assert all(k.startswith("base_model.") for k in load_file(str(second / "model.safetensors")))
    assert not any(k.startswith("base_model.") for k in load_file(str(first / "model.safetensors")))
    for folder in (first, second):
        reloaded = load_downstream(folder)
        reloaded.eval()
        with torch.no_grad():
            assert torch.equal(reloaded(input_ids=torch.arange(5, 29).reshape(3, 8)).logits, ranks[0])


def _effective(model) -> dict[str, torch.Tensor]:
    """The weights the model computes with: adapters merged into a copy, or the plain model's own."""
    merged = copy.deepcopy(model).merge_and_unload() if hasattr(model, "peft_config") else model
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


def merged_vs_frozen(tiny_models, source: Path, optimizer_cls, **options) -> tuple[float, float]:
    """Train (a) with the adapter frozen and (b) merged, same start and batches: the largest weight difference
    and the largest logit difference."""
    frozen = load_debias_adapter(classifier(tiny_models), source, mode="freeze")
    merged = load_debias_adapter(classifier(tiny_models), source, mode="merge")
    first, second = _effective(frozen), _effective(merged)
    assert max((first[k] - second[k]).abs().max().item() for k in first) < 1e-6, "the runs must start alike"
    for model in (frozen, merged):
        fine_tune(model, optimizer_cls, steps=5, **options)
    a, b = _effective(frozen), _effective(merged)
    assert a.keys() == b.keys()
    weights = max((a[k] - b[k]).abs().max().item() for k in a)
    return weights, (logits(frozen) - logits(merged)).abs().max().item()


SGD = (torch.optim.SGD, {"lr": 1.0})
ADAMW = (torch.optim.AdamW, {"lr": 1e-2, "weight_decay": 0.0})


@pytest.mark.parametrize(("optimizer_cls", "options", "weight_tol"), [(*SGD, 1e-6), (*ADAMW, 2e-3)])
def test_lora_frozen_trains_like_merged(tiny_models, adapter, optimizer_cls, options, weight_tol) -> None:
    """The gradient reaching W in W + BA equals the gradient of the merged W': same updates. (Adam's per-element
    normalisation turns float noise on near-zero gradients into up to ~3e-4 weight noise; the outputs agree to
    better than 1e-6.)"""
    weights, outputs = merged_vs_frozen(tiny_models, adapter("bert", "lora"), optimizer_cls, **options)
    assert weights < weight_tol and outputs < 1e-5, (weights, outputs)


def test_decay_and_ia3_make_merged_training_differ(tiny_models, adapter) -> None:
    """Relative to the LoRA runs without decay (float noise only): decay changes LoRA training a little, IA3 a lot.
    (The tiny adapters' values depend on the order the session trains them, so the bounds are ratios.)"""
    lora = adapter("bert", "lora")
    plain = merged_vs_frozen(tiny_models, lora, ADAMW[0], **ADAMW[1])
    decay = merged_vs_frozen(tiny_models, lora, ADAMW[0], **{**ADAMW[1], "weight_decay": 0.1})
    assert decay[0] > 10 * plain[0] and decay[1] > 10 * plain[1], (decay, plain)  # decay shrinks the delta too
    for optimizer_cls, options in (SGD, ADAMW):  # IA3 scales W, so the gradient reaching W is scaled too
        reference = merged_vs_frozen(tiny_models, lora, optimizer_cls, **options)
        ia3 = merged_vs_frozen(tiny_models, adapter("bert", "ia3"), optimizer_cls, **options)
        assert ia3[0] > max(1e-5, 30 * reference[0]) and ia3[1] > 10 * reference[1], (ia3, reference)


def test_bad_folders_are_one_line_errors(tiny_models, adapter, tmp_path) -> None:
    with pytest.raises(DebiasError, match=r"is an adapter folder.*load_debias_adapter"):
        load_downstream(adapter("bert", "lora"))
    with pytest.raises(DebiasError, match=r"is a plain transformers model.*AutoModelFor"):
        load_downstream(tiny_models["bert"])
    with pytest.raises(DebiasError, match=r"has no downstream.json"):
        load_downstream(tmp_path)
    with pytest.raises(DebiasError, match="is not a folder"):
        load_downstream(tmp_path / "nowhere")
    model = load_debias_adapter(classifier(tiny_models), adapter("bert", "lora"), mode="inference")
    model.save_pretrained(tmp_path / "out")
    with pytest.raises(DebiasError, match="unknown mode 'merge'"):
        load_downstream(tmp_path / "out", mode="merge")
    marker = tmp_path / "out/downstream.json"
    info = json.loads(marker.read_text())
    marker.write_text(json.dumps({**info, "format_version": 99}))
    with pytest.raises(DebiasError, match="format version 99; this peft-debias reads 1") as err:
        load_downstream(tmp_path / "out")
    assert "\n" not in str(err.value)
    marker.write_text(json.dumps(info))
    shutil.rmtree(tmp_path / "out/adapters/gender")
    with pytest.raises(DebiasError, match=r"adapter 'gender' listed in .* is missing"):
        load_downstream(tmp_path / "out")
