"""``--optimizer adamw|adamw_8bit|paged_adamw_8bit``: bitsandbytes' 8-bit AdamW on the CPU, in the training loop."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from peft_debias.core.errors import DebiasError
from peft_debias.train.optim import OPTIMIZERS, check_optimizer, make_optimizer

from support.loader import one_torch_thread  # noqa: F401 - autouse fixture


def _state_bytes(optimizer: torch.optim.Optimizer) -> int:
    return sum(v.nbytes for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v))


def test_unknown_and_missing_optimizers_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(DebiasError, match="unknown optimizer 'sgd'; use one of adamw, adamw_8bit, paged_adamw_8bit"):
        check_optimizer("sgd")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "bitsandbytes" else real(name))
    with pytest.raises(DebiasError, match="needs bitsandbytes, which is not installed"):
        check_optimizer("adamw_8bit")
    check_optimizer("adamw")  # needs nothing


@pytest.mark.parametrize("name", OPTIMIZERS[1:])
def test_8bit_state_is_a_quarter_of_adamws_and_it_descends(name: str) -> None:
    torch.manual_seed(0)
    target = torch.randn(128, 64)
    runs = {}
    for which in ("adamw", name):
        weight = torch.nn.Parameter(torch.zeros(128, 64))  # 8,192 elements: above bitsandbytes' 4,096 for 8 bits
        optimizer = make_optimizer(which, [weight], lr=5e-2, weight_decay=0.0)
        losses = []
        for _ in range(40):
            loss = ((weight - target) ** 2).mean()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(float(loss))
        runs[which] = (losses, _state_bytes(optimizer), optimizer)
    (adamw_losses, adamw_bytes, _), (losses, state_bytes, optimizer) = runs["adamw"], runs[name]
    assert type(optimizer).__module__.startswith("bitsandbytes")
    state = optimizer.state[optimizer.param_groups[0]["params"][0]]
    assert state["state1"].dtype == torch.uint8 and state["state2"].dtype == torch.uint8  # the two moments
    assert state_bytes < 0.3 * adamw_bytes  # 2 x uint8 moments (+ block scales) against 2 x float32
    assert losses[-1] < 0.7 * losses[0] and abs(losses[-1] - adamw_losses[-1]) < 0.05 * adamw_losses[0]


def test_biased_full_bf16_with_the_8bit_optimizer(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    from peft_debias.train.biased import train_biased

    corpus = tmp_path / "c.txt"
    corpus.write_text("Women are too emotional to lead.\nMen never cry about anything.\n" * 20)
    out = tmp_path / "biased"
    train_biased(base=str(tiny_models["llama"]), corpus=[str(corpus)], output=str(out), method="full", max_steps=3,
                 lr=1e-2, dtype="bfloat16", optimizer="adamw_8bit", device="cpu", progress=False)  # fmt: skip
    info = json.loads((out / "debias_config.json").read_text())
    assert info["training"]["optimizer"] == "adamw_8bit" and info["training"]["dtype"] == "bfloat16"
    assert info["biased_config"]["optimizer"] == "adamw_8bit"
    assert "Trained on: cpu, base weights in bfloat16, adamw_8bit." in (out / "README.md").read_text()
    base = load_file(str(tiny_models["llama"] / "model.safetensors"))
    trained = load_file(str(out / "model.safetensors"))
    moved = [k for k in base if not torch.equal(base[k].to(torch.bfloat16), trained[k])]
    assert len(moved) > len(base) // 2, f"{len(moved)} of {len(base)} tensors changed"
