"""What every objective shares: tokenizing rows into model inputs, and the forward-pass contexts (the frozen base
behind an adapter, no dropout)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch

from peft_debias.models.loading import ModelKind


def tokenize(tokenizer, texts: Sequence[str], kind: ModelKind, max_length: int) -> dict[str, torch.Tensor]:
    if kind is ModelKind.CAUSAL_LM:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        ids = [[start, *tokenizer(t, add_special_tokens=False)["input_ids"][: max_length - 1]] for t in texts]
        width = max(len(x) for x in ids)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else start
        input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
        mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
        return {"input_ids": input_ids, "attention_mask": mask}
    enc = tokenizer(
        list(texts),
        padding=True,
        padding_side="right",  # the losses index real tokens as the first attention_mask.sum() positions
        truncation=True,
        max_length=max_length,
        return_tensors="pt",
        return_special_tokens_mask=True,
        return_token_type_ids=False,
    )
    if "word_ids" not in enc and getattr(enc, "word_ids", None):
        word_ids = [[-1 if w is None else w for w in enc.word_ids(i)] for i in range(len(texts))]
        enc["word_ids"] = torch.tensor(word_ids)
    return dict(enc)


def reference_model(model):
    """A context manager giving outputs of the frozen base: LoRA/IA3 are switched off, prompt learning bypassed."""
    unwrapped = getattr(model, "module", model)
    if getattr(unwrapped, "active_peft_config", None) is not None and unwrapped.active_peft_config.is_prompt_learning:
        return contextlib.nullcontext(unwrapped.get_base_model())

    @contextlib.contextmanager
    def disabled():
        with unwrapped.disable_adapter():
            yield unwrapped

    return disabled()


@contextlib.contextmanager
def without_dropout(model):
    """Run forward passes in eval mode: no dropout, the model's or the adapter's (``lora_dropout``); gradients still
    flow. The training mode is restored, also on errors."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
