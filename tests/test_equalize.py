"""The equalize objective: its package data (kept apart from every benchmark), the loss against a hand computation,
the control, and training with every PEFT method on causal and masked LMs."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import re
from pathlib import Path

import pytest
import torch

from peft_debias.cda.axes import get_axis
from peft_debias.core.errors import DebiasError
from peft_debias.models.loading import ModelKind, load_model
from peft_debias.models.methods import wrap_model
from peft_debias.models.options import MethodOptions
from peft_debias.train.config import TrainConfig
from peft_debias.train.equalize import (
    attribute_token_ids,
    bucket_log_probs,
    collate_equalize,
    equalize_loss,
    fill,
    load_equalize_data,
)
from peft_debias.train.objectives import check_objective

AXES = ("gender", "race", "religion")


def _normal(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower().replace("blank", " ")))


def _benchmark_sentences(data_dir: Path) -> set[str]:
    """Every sentence of CrowS-Pairs, StereoSet (contexts and options), SEAT and WinoBias, normalised."""
    out: set[str] = set()
    with open(data_dir / "crows_pairs" / "crows_pairs_anonymized.csv", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            out.update(_normal(row[k]) for k in ("sent_more", "sent_less"))
    for path in (data_dir / "stereoset").glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            item = json.loads(line)
            out.update(_normal(item[k]) for k in ("context", "stereotype", "anti-stereotype", "unrelated"))
    for path in (data_dir / "seat").glob("*.jsonl"):
        test = json.loads(path.read_text(encoding="utf-8"))
        for key in ("targ1", "targ2", "attr1", "attr2"):
            out.update(_normal(s) for s in test[key]["examples"])
    for path in (data_dir / "winobias").glob("*_stereotyped_type*.txt.*"):
        for line in path.read_text(encoding="utf-8").splitlines():
            out.add(_normal(re.sub(r"^\d+\s+", "", line).replace("[", "").replace("]", "")))
    out.discard("")
    return out


def _stereoset_skeletons(data_dir: Path) -> set[str]:
    """StereoSet intrasentence contexts with the target and the blank as slots (their templates)."""
    out = set()
    for path in (data_dir / "stereoset").glob("*.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            item = json.loads(line)
            if item["type"] == "intrasentence":
                text = item["context"].replace(item["target"], "X").replace("BLANK", "Y")
                out.add(_normal(text))
    return out


def _leaks(sentences, benchmark: set[str]) -> list[str]:
    return sorted({s for s in sentences if _normal(s) in benchmark})


def test_package_data_has_every_axis_with_one_phrase_per_class() -> None:
    for name in AXES:
        axis = get_axis(name)
        data = load_equalize_data(axis)
        assert data.classes == axis.classes and data.source == "peft-debias"
        rows = data.rows()
        assert len(rows) == len(data.templates) * len(data.persons) >= 150
        assert all(len(r["prompts"]) == len(axis.classes) and "{attribute}" in r["prompts"][0] for r in rows)
        assert {t.attribute for t in data.templates} == {"occupations", "traits", "roles"}
    assert fill("{person} worked as a {attribute}.", "the man") == "The man worked as a {attribute}."
    assert fill("I think {person} is {attribute}.", "he") == "I think he is {attribute}."


def test_no_benchmark_sentence_or_template_is_used(data_dir) -> None:
    benchmark = _benchmark_sentences(data_dir)
    assert len(benchmark) > 5000
    skeletons = _stereoset_skeletons(data_dir)
    for name in AXES:
        data = load_equalize_data(get_axis(name))
        sentences = list(data.sentences())
        assert len(sentences) > 10000
        assert _leaks(sentences, benchmark) == [], name
        ours = {_normal(t.text.replace("{person}", "X").replace("{attribute}", "Y")) for t in data.templates}
        assert ours.isdisjoint(skeletons)
    # the check finds a planted benchmark sentence
    with open(data_dir / "crows_pairs" / "crows_pairs_anonymized.csv", encoding="utf-8") as fh:
        crows = next(iter(csv.DictReader(fh)))["sent_more"]
    assert _leaks([*sentences[:5], crows], benchmark) == [crows]


def test_loss_is_the_kl_to_the_group_mean_by_hand() -> None:
    """Two rows (2 groups, 2 then 1 attribute tokens + other): the loss against a direct computation."""
    torch.manual_seed(0)
    vocab = 7
    logits = torch.randn(4, vocab)
    batch = {
        "groups": 2,
        "buckets": torch.tensor([[1, 3], [5, 0]]),
        "valid": torch.tensor([[True, True], [True, False]]),
        "mix": torch.tensor([True, False]),
    }
    got = bucket_log_probs(logits, batch).exp()
    p = torch.softmax(logits.double(), -1)
    want_row0 = torch.stack([p[:2, 1], p[:2, 3], 1 - p[:2, 1] - p[:2, 3]], -1)
    assert torch.allclose(got[0].double(), want_row0, atol=1e-6)
    assert got[1, :, 1].tolist() == [0.0, 0.0]  # padding
    assert torch.allclose(got[1, :, 2].double(), 1 - p[2:, 5], atol=1e-6)

    ref = torch.randn(4, vocab)
    q = torch.softmax(ref.double(), -1)
    target0 = torch.stack([q[:2, 1], q[:2, 3], 1 - q[:2, 1] - q[:2, 3]], -1).mean(0)
    target1 = torch.stack([q[2:, 5], 1 - q[2:, 5]], -1)  # the control row: each group its own
    model_p0, model_p1 = want_row0, torch.stack([p[2:, 5], 1 - p[2:, 5]], -1)
    kl = [float((target0 * (target0 / model_p0[g]).log()).sum()) for g in range(2)]
    kl += [float((target1[g] * (target1[g] / model_p1[g]).log()).sum()) for g in range(2)]

    class Fixed(torch.nn.Module):
        """Logits ``logits``, or ``ref`` with the adapter disabled (how the loss reaches the frozen base)."""

        def __init__(self) -> None:
            super().__init__()
            self.off = False

        def forward(self, input_ids, attention_mask):
            return type("Out", (), {"logits": (ref if self.off else logits)[:, None, :]})()

        @contextlib.contextmanager
        def disable_adapter(self):
            self.off = True
            yield
            self.off = False

    batch.update(inputs={"input_ids": torch.zeros(4, 1, dtype=torch.long)}, slot=torch.zeros(4, dtype=torch.long))
    batch["inputs"]["attention_mask"] = torch.ones(4, 1, dtype=torch.long)
    loss, parts = equalize_loss(Fixed(), batch)
    assert math.isclose(float(loss), sum(kl) / 4, rel_tol=1e-5)
    assert parts["equalize"] == pytest.approx(sum(kl) / 4, rel=1e-5)


def test_a_model_at_its_target_gets_no_gradient_at_all() -> None:
    """A control at the identity (the model's logits equal the base's) must get a gradient of exactly zero: Adam
    scales any gradient, however small, to steps of about the learning rate, and a rounding-level one then grows
    into a control that drifts from the base (seen on SmolLM2 with the plain KL form: gradients of 6e-18, then SS
    moved by up to a point)."""
    torch.manual_seed(3)
    logits = torch.randn(6, 50, dtype=torch.float32) * 4
    weights = torch.nn.Parameter(logits.clone())

    class AtTarget(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = weights

        def forward(self, input_ids, attention_mask):
            return type("Out", (), {"logits": self.w[:, None, :]})()

        @contextlib.contextmanager
        def disable_adapter(self):
            yield

    batch = {
        "groups": 3, "buckets": torch.tensor([[1, 7, 9, 20], [4, 2, 0, 0]]),
        "valid": torch.tensor([[True] * 4, [True, True, False, False]]), "mix": torch.tensor([False, False]),
        "inputs": {"input_ids": torch.zeros(6, 1, dtype=torch.long), "attention_mask": torch.ones(6, 1)},
        "slot": torch.zeros(6, dtype=torch.long),
    }  # fmt: skip
    loss, _ = equalize_loss(AtTarget(), batch)
    loss.backward()
    assert float(loss) == 0.0 and torch.count_nonzero(weights.grad) == 0
    weights.grad = None
    loss, _ = equalize_loss(AtTarget(), {**batch, "mix": torch.tensor([True, True])})  # the treatment: a gradient
    loss.backward()
    assert float(loss) > 0 and torch.count_nonzero(weights.grad) > 0


@pytest.mark.parametrize(("name", "kind"), [("llama", ModelKind.CAUSAL_LM), ("bert", ModelKind.MASKED_LM)])
def test_slot_is_the_next_token_or_the_mask(tiny_models, name, kind) -> None:
    loaded = load_model(str(tiny_models[name]))
    rows = load_equalize_data(get_axis("gender")).rows()[:3]
    batch = collate_equalize(rows, loaded.tokenizer, kind, 64)
    assert batch["inputs"]["input_ids"].shape[0] == 6 and batch["groups"] == 2
    ids, slot = batch["inputs"]["input_ids"], batch["slot"]
    for i, prompt in enumerate(p for r in rows for p in r["prompts"]):
        if kind is ModelKind.CAUSAL_LM:  # the last token of the text before the slot
            before = loaded.tokenizer(prompt.split(" {attribute}")[0], add_special_tokens=False)["input_ids"]
            assert ids[i, slot[i]].item() == before[-1] and slot[i] == len(before)  # BOS first
        else:
            assert ids[i, slot[i]].item() == loaded.tokenizer.mask_token_id
    words = rows[0]["words"]
    first = attribute_token_ids(loaded.tokenizer, words, kind)
    assert batch["buckets"][0, : len(first)].tolist() == first and int(batch["valid"][0].sum()) == len(first)


def _gap(model, rows, tokenizer, kind) -> float:
    """Mean total-variation distance between each group's bucket distribution and the groups' mean."""
    batch = collate_equalize(rows, tokenizer, kind, 64)
    model.eval()
    with torch.no_grad():
        logits = model(**batch["inputs"]).logits[:, -batch["inputs"]["input_ids"].shape[1] :]
        probs = bucket_log_probs(logits[torch.arange(len(batch["slot"])), batch["slot"]], batch).exp()
    return float((probs - probs.mean(1, keepdim=True)).abs().sum(-1).mean() / 2)


def _sharpened(path: Path):
    """The tiny random model with its matrices scaled up: at init its slot distributions hardly depend on the
    person (gap ~1e-6 for BERT); scaled, they do, which gives the objective something to equalize."""
    loaded = load_model(str(path))
    with torch.no_grad():
        for weight in loaded.model.parameters():
            if weight.dim() == 2:
                weight.mul_(3.0 if loaded.kind is ModelKind.CAUSAL_LM else 6.0)
    return loaded


@pytest.mark.parametrize("method", ["lora", "prompt", "prefix", "ia3"])
@pytest.mark.parametrize(("name", "kind"), [("llama", ModelKind.CAUSAL_LM), ("bert", ModelKind.MASKED_LM)])
def test_training_equalizes_the_groups_and_the_control_changes_nothing(tiny_models, method, kind, name) -> None:
    """Treatment against control, trained identically: only the treatment brings the groups to their mean."""
    rows = load_equalize_data(get_axis("religion")).rows()[:6]  # three groups: the mean over all three
    gaps, losses = {}, {}
    for role in ("treatment", "control"):
        loaded = _sharpened(tiny_models[name])
        torch.manual_seed(0)
        options = MethodOptions(r=4, alpha=8, num_virtual_tokens=4)
        model = wrap_model(loaded.model, method, kind, options, base_name=str(tiny_models[name]))
        batch = collate_equalize([{**r, "equalize": role == "treatment"} for r in rows], loaded.tokenizer, kind, 64)
        base_gap = _gap(model.get_base_model(), rows, loaded.tokenizer, kind)
        model.train()
        opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
        losses[role] = []
        for _ in range(40 if method in ("lora", "ia3") else 150):
            opt.zero_grad()
            loss, _ = equalize_loss(model, batch)
            losses[role].append(float(loss.detach()))
            loss.backward()
            opt.step()
        gaps[role] = _gap(model, rows, loaded.tokenizer, kind)
    assert losses["treatment"][-1] < 0.85 * losses["treatment"][0]
    # Virtual tokens shift every slot at first, and undoing that shift is most of both roles' loss; on the tiny
    # random BERT the groups hardly differ to begin with, so there the shift is all a prompt or prefix can learn.
    if kind is ModelKind.CAUSAL_LM or method in ("lora", "ia3"):
        assert gaps["treatment"] < 0.9 * gaps["control"], (base_gap, gaps)
    if method in ("lora", "ia3"):  # the identity at the start: the control's loss is exactly zero, and stays so
        assert max(losses["control"]) == 0.0 and gaps["control"] == pytest.approx(base_gap, rel=1e-6)
        assert base_gap > 1e-4 and gaps["treatment"] < 0.8 * base_gap, (base_gap, gaps)


def test_train_writes_an_equalize_adapter_and_a_control_at_the_base(tiny_models, tmp_path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = str(tiny_models["llama"])
    outputs = {}
    for cda in (True, False):
        out = tmp_path / f"eq-{cda}"
        config = TrainConfig(
            base=base, objective="equalize", method="lora", axis="gender", output=str(out), max_steps=15, lr=5e-2,
            batch_size=4, eval_every=0, save_every=0, progress=False, cda=cda, r=4, alpha=8, seed=1,
        )  # fmt: skip
        from peft_debias.train.loop import train

        result = train(config)
        assert result.eval_loss is not None
        info = json.loads((out / "debias_config.json").read_text())
        assert info["objective"] == "equalize" and info["cda"]["equalized"] is cda
        assert info["corpus"][0]["source"] == "equalize templates (peft-debias)" and info["cda"]["templates"] >= 20
        card = (out / "README.md").read_text()
        assert "| objective | equalize |" in card and ("groups equalized" in card) is cda
        outputs[cda] = out
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    with torch.no_grad():
        plain = AutoModelForCausalLM.from_pretrained(base)(input_ids=ids).logits
        logits = {
            cda: PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(out))(input_ids=ids).logits
            for cda, out in outputs.items()
        }
    assert not torch.allclose(logits[True], plain, atol=1e-4)  # the treatment changed the model
    assert torch.allclose(logits[False], plain, atol=1e-6)  # the control had nothing to learn


def test_bad_equalize_settings_are_one_line_errors(tiny_models, tmp_path) -> None:
    with pytest.raises(DebiasError, match="does not fit an encoder model"):
        check_objective("equalize", ModelKind.ENCODER)
    config = TrainConfig(base="b", objective="equalize", output="o", corpus=["c.txt"])
    with pytest.raises(DebiasError, match="trains on its templates, not on a corpus"):
        config.validate()
    TrainConfig(base="b", objective="equalize", output="o").validate()  # no corpus needed
    with pytest.raises(DebiasError, match="equalize_data is set but the objective is not equalize"):
        TrainConfig(base="b", output="o", corpus=["c"], equalize_data=str(tmp_path)).validate()
    axis_file = tmp_path / "age.json"
    axis_file.write_text(json.dumps({"name": "age", "classes": ["young", "old"], "groups": [["young", "old"]]}))
    with pytest.raises(DebiasError, match="no equalize persons for axis 'age'"):
        load_equalize_data(get_axis(str(axis_file)))
    own = tmp_path / "age-persons.json"
    own.write_text(json.dumps({"persons": [["the young man", "the old man"]]}))
    data = load_equalize_data(get_axis(str(axis_file)), str(own))
    assert data.source == "age-persons.json" and len(data.rows()) == len(data.templates)
    own.write_text(json.dumps({"persons": [["the young man"]]}))
    with pytest.raises(DebiasError, match="is not 2 phrases"):
        load_equalize_data(get_axis(str(axis_file)), str(own))
    own.write_text(json.dumps({"persons": [["a", "b"]], "templates": [{"text": "{person} is", "attribute": "traits"}]}))
    with pytest.raises(DebiasError, match=r"needs one \{person\} and one \{attribute\}"):
        load_equalize_data(get_axis(str(axis_file)), str(own))
