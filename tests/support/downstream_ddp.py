"""Run under ``accelerate launch`` (two CPU ranks, gloo) by tests/test_downstream_save.py.

Fine-tunes a tiny classifier with a frozen debiasing adapter for a few steps, then saves it two ways:
``unwrap_model(model).save_pretrained(first, is_main_process=..., save_function=accelerator.save)`` and, into
``second``, the same followed by ``accelerator.save_model(model, second)`` (which overwrites the root weights with
the PeftModel's full state dict). Each rank writes its logits on a fixed batch to ``logits-<rank>.safetensors``.

Usage: downstream_ddp.py BASE ADAPTER FIRST SECOND LOGITS_DIR
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import save_file
from transformers import AutoModelForSequenceClassification

from peft_debias.loader.attach import load_debias_adapter


def main(base: str, adapter: str, first: str, second: str, logits_dir: str) -> None:
    accelerator = Accelerator()
    assert accelerator.num_processes == 2, "launch with two processes"
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=2)
    model = load_debias_adapter(model, adapter, mode="freeze")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.eval()  # no dropout: the gradients still flow
    generator = torch.Generator().manual_seed(10 + accelerator.process_index)  # each rank its own batches
    for _ in range(3):
        ids = torch.randint(5, 100, (2, 8), generator=generator)
        loss = model(input_ids=ids, labels=torch.tensor([0, 1])).loss
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    for folder in (first, second):
        unwrapped.save_pretrained(folder, is_main_process=accelerator.is_main_process, save_function=accelerator.save)
    accelerator.wait_for_everyone()
    accelerator.save_model(model, second)
    accelerator.wait_for_everyone()
    with torch.no_grad():
        logits = unwrapped(input_ids=torch.arange(5, 29).reshape(3, 8)).logits
    rank_file = Path(logits_dir) / f"logits-{accelerator.process_index}.safetensors"
    save_file({"logits": logits.contiguous()}, str(rank_file))
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(*sys.argv[1:6])
