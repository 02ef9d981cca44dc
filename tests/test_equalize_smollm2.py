"""The equalize objective on the real bundled SmolLM2: a short LoRA run brings the groups' attribute
distributions together on held-out template rows, in the adapter that ``PeftModel.from_pretrained`` loads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from support.bundled import require_bundled

pytestmark = [pytest.mark.slow, pytest.mark.integration]


def _spread(model, tokenizer, rows) -> float:
    """Mean total-variation distance of each group's bucket distribution from the groups' mean."""
    from peft_debias.models.loading import ModelKind
    from peft_debias.train.equalize import bucket_log_probs, collate_equalize

    batch = collate_equalize(rows, tokenizer, ModelKind.CAUSAL_LM, 64)
    width = batch["inputs"]["input_ids"].shape[1]
    with torch.no_grad():
        logits = model(**batch["inputs"]).logits[:, -width:]
        probs = bucket_log_probs(logits[torch.arange(len(batch["slot"])), batch["slot"]], batch).exp()
    return float((probs - probs.mean(1, keepdim=True)).abs().sum(-1).mean() / 2)


def test_smollm2_equalize_lora_brings_held_out_groups_together(tmp_path: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from peft_debias.cda.axes import get_axis
    from peft_debias.train.config import TrainConfig
    from peft_debias.train.data import split_sentences
    from peft_debias.train.equalize import load_equalize_data
    from peft_debias.train.loop import train

    base = require_bundled("smollm2")
    torch.set_num_threads(1)
    out = tmp_path / "eq"
    config = TrainConfig(
        base="bundled:smollm2", objective="equalize", method="lora", axis="gender", output=str(out),
        max_steps=30, lr=2e-3, batch_size=8, r=8, alpha=16,
        eval_fraction=0.1, eval_every=0, save_every=0, progress=False, seed=0,
    )  # fmt: skip
    train(config)
    info = json.loads((out / "debias_config.json").read_text())
    assert info["objective"] == "equalize" and info["base_model"]["hub_id"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    rows = load_equalize_data(get_axis("gender")).rows()
    _, held_out = split_sentences(rows, 0.1, 0, 256)  # the rows the run held out: never trained on
    tokenizer = AutoTokenizer.from_pretrained(base)
    plain = AutoModelForCausalLM.from_pretrained(base).eval()
    before = _spread(plain, tokenizer, held_out)
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(out)).eval()
    after = _spread(adapted, tokenizer, held_out)
    assert before > 0.01 and after < 0.8 * before, (before, after)


def test_smollm2_lora_control_gets_no_gradient() -> None:
    """At the identity (a fresh LoRA) the control's loss and every gradient are exactly zero on the real model, so
    the control stays the base model however long it trains."""
    from peft_debias.cda.axes import get_axis
    from peft_debias.models.loading import load_model
    from peft_debias.models.methods import wrap_model
    from peft_debias.models.options import MethodOptions
    from peft_debias.train.equalize import collate_equalize, equalize_loss, load_equalize_data

    require_bundled("smollm2")
    torch.set_num_threads(1)
    loaded = load_model("bundled:smollm2")
    model = wrap_model(loaded.model, "lora", loaded.kind, MethodOptions(r=8, alpha=16), base_name=loaded.path).train()
    rows = [{**r, "equalize": False} for r in load_equalize_data(get_axis("gender")).rows()[:8]]
    loss, _ = equalize_loss(model, collate_equalize(rows, loaded.tokenizer, loaded.kind, 64))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert float(loss) == 0.0 and grads and all(g is not None and torch.count_nonzero(g) == 0 for g in grads)
