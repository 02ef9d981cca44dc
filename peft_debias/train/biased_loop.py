"""Full fine-tuning of a biased model: a small, seeded accelerate loop (see :mod:`peft_debias.train.biased`).

The rows of step ``s``, micro-batch ``m`` come from :class:`~peft_debias.train.loop.RowStream` and MLM masks
from a generator seeded by ``(seed, s, m)``, so a run is reproducible; losses are
:func:`peft_debias.train.objectives.compute_loss`. Every weight trains, in float32; the model is saved as safetensors
with the same tensor names as the base, so :class:`~peft_debias.vector.bias_vector.BiasVector` can subtract the two.
"""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from peft_debias.core.errors import DebiasError
from peft_debias.train.biased import BiasedConfig, BiasedResult, _jsonable, biased_readme, split_sentences

logger = logging.getLogger(__name__)


def _seed(*parts: int) -> int:
    value = 0
    for part in parts:
        value = (value * 1_000_003 + part + 1) % (2**62)
    return value


def train_full(config: BiasedConfig, sentences: list[str], corpus_info: dict[str, Any]) -> BiasedResult:
    """Fine-tune every weight of ``config.base`` on ``sentences`` and save the biased model folder."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from peft_debias.core.atomic import atomic_output
    from peft_debias.core.provenance import timestamp, versions
    from peft_debias.models.limits import max_positions
    from peft_debias.models.loading import ModelKind, load_model, weights_fingerprint
    from peft_debias.train.loop import RowStream
    from peft_debias.train.objectives import ObjectiveConfig, check_objective, collate, compute_loss, default_objective

    accelerator = Accelerator(mixed_precision="no")
    set_seed(config.seed)
    loaded = load_model(
        config.base,
        config.kind,
        revision=config.revision,
        allow_pickle=config.allow_pickle,
        trust_remote_code=config.trust_remote_code,
    )
    kind, model, tokenizer = loaded.kind, loaded.model, loaded.tokenizer
    if kind is ModelKind.ENCODER:
        raise DebiasError(f"{config.base} is a bare encoder without an LM head", "use a masked or causal LM")
    objective = config.objective or default_objective(kind)
    check_objective(objective, kind)
    if objective == "mlm" and tokenizer.mask_token is None:
        raise DebiasError("the tokenizer has no mask token", "use a masked LM with a [MASK] token")
    base_fingerprint = weights_fingerprint(model)
    obj_cfg = ObjectiveConfig(
        mlm_probability=config.mlm_probability, max_length=min(config.max_length, max_positions(model, tokenizer))
    )
    train, held_out = split_sentences(sentences, config.eval_fraction, config.seed)
    rows = [{"text": s} for s in train]
    total = config.max_steps or max(1, math.ceil(config.epochs * len(rows) / (config.batch_size * config.grad_accum)))
    lr = config.lr or 5e-5
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=config.weight_decay)
    scheduler = get_scheduler(
        config.scheduler, optimizer, num_warmup_steps=int(config.warmup_ratio * total), num_training_steps=total
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    stream = RowStream(len(rows), config.seed)

    def batch(step: int, micro: int, texts: list[dict[str, str]]) -> dict[str, Any]:
        gen = torch.Generator().manual_seed(_seed(config.seed, step, micro))
        out = collate(texts, objective, tokenizer, kind, obj_cfg, gen)
        return {k: v.to(accelerator.device) if isinstance(v, torch.Tensor) else v for k, v in out.items()}

    def evaluate() -> float | None:
        if not held_out:
            return None
        model.eval()
        losses = []
        with torch.no_grad():
            for lo in range(0, len(held_out), config.batch_size):
                chunk = [{"text": s} for s in held_out[lo : lo + config.batch_size]]
                loss, _ = compute_loss(model, batch(-1, lo, chunk), objective, kind, obj_cfg)
                losses.append((float(loss), len(chunk)))
        model.train()
        return sum(loss * n for loss, n in losses) / sum(n for _, n in losses)

    log: list[dict[str, Any]] = []
    model.train()
    started, last_loss = time.perf_counter(), None
    bar = tqdm(total=total, desc=f"biased {config.axis}", unit="step", disable=None if config.progress else True)
    for step in range(total):
        step_loss = 0.0
        for micro in range(config.grad_accum):
            order = stream.take((step * config.grad_accum + micro) * config.batch_size, config.batch_size)
            loss, _ = compute_loss(model, batch(step, micro, [rows[i] for i in order]), objective, kind, obj_cfg)
            accelerator.backward(loss / config.grad_accum)
            step_loss += float(loss.detach()) / config.grad_accum
        if config.max_grad_norm:
            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        last_loss = step_loss
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", refresh=False)
        log.append({"step": step + 1, "loss": step_loss, "lr": scheduler.get_last_lr()[0]})
    bar.close()
    seconds = time.perf_counter() - started
    eval_loss = evaluate()
    unwrapped = accelerator.unwrap_model(model)
    unwrapped.eval()
    info = {
        "format_version": 1,
        "artifact": "biased_model",
        "paper": "bias_vector",
        "axis": config.axis,
        "method": "full",
        "objective": objective,
        "base_model": {
            "name": config.base,
            "path": loaded.path,
            "revision": config.revision,
            "kind": kind.value,
            "model_type": getattr(unwrapped.config, "model_type", None),
            "weights_fingerprint": base_fingerprint,
        },
        "corpus": {**corpus_info, "train_sentences": len(train), "held_out_sentences": len(held_out)},
        "training": {"steps": total, "lr": lr, "seconds": round(seconds, 2), "seconds_per_step": seconds / total},
        "metrics": {"train_loss": last_loss, "eval_loss": eval_loss},
        "biased_config": _jsonable(config),
        "versions": versions(),
        "created": timestamp(),
    }
    with atomic_output(config.output, overwrite=config.overwrite, directory=True) as tmp:
        unwrapped.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / "debias_config.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        (tmp / "training_log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in log), encoding="utf-8")
        (tmp / "README.md").write_text(biased_readme(info), encoding="utf-8")
    return BiasedResult(Path(config.output), total, last_loss, eval_loss, seconds, len(sentences))
