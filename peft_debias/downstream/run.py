"""The downstream run: a sequence classifier on the base, debiasing adapters frozen inside, fine-tuned on a task.

:func:`run_downstream` loads the classifier (a new head for the task's labels), puts the adapters in with
``load_debias_adapter(mode="freeze")`` (they stay bit-identical; the encoder and the head train), trains with AdamW
and a linear schedule under accelerate (one process, or several with ``accelerate launch``), predicts the test rows
and writes, atomically, ``<output>/metrics.json``, ``predictions.jsonl`` and ``model/`` (the whole fine-tuned model
with its adapters: reload it with :func:`peft_debias.load_downstream`; without adapters a plain transformers
folder).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from peft_debias.core.atomic import atomic_output, check_destination
from peft_debias.core.errors import DebiasError, one_line
from peft_debias.core.jsonio import write_json
from peft_debias.core.portable import scrub_local_paths
from peft_debias.core.provenance import versions
from peft_debias.downstream.config import DownstreamConfig
from peft_debias.downstream.tasks import Example, TaskData, load_task

logger = logging.getLogger(__name__)
CLASSIFIER_SUFFIX = "ForSequenceClassification"


def _digest(named: list[tuple[str, torch.nn.Parameter]]) -> str:
    digest = hashlib.sha256()
    for name, param in named:
        digest.update(name.encode())
        digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _check_head(config: Any, name: str, n_labels: int) -> None:
    """A model that already carries a classification head must have one output per label of the task."""
    heads = [a for a in (getattr(config, "architectures", None) or []) if a.endswith(CLASSIFIER_SUFFIX)]
    if heads and config.num_labels != n_labels:
        raise DebiasError(
            f"{name} has a {config.num_labels}-way classification head ({heads[0]}) but the task has {n_labels} labels",
            "pass the base model without a classification head, or a classifier trained on this label set",
        )


def load_classifier(config: DownstreamConfig, n_labels: int) -> tuple[Any, Any]:
    """The classifier (``AutoModelForSequenceClassification``, a new head unless the model has a fitting one) and
    its tokenizer; a pad token is set for decoders that have none."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from peft_debias.models.bundled import BUNDLED_PREFIX, bundled_model_path
    from peft_debias.models.loading import check_model_name, load_tokenizer
    from peft_debias.models.placement import torch_dtype

    check_model_name(config.model, allow_pickle=config.allow_pickle)
    path = str(bundled_model_path(config.model)) if config.model.startswith(BUNDLED_PREFIX) else config.model
    if (Path(path) / "downstream.json").is_file():
        raise DebiasError(
            f"{config.model} is a saved downstream model (downstream.json)",
            "fine-tune from its base model, or reload it with peft_debias.load_downstream(path, mode='freeze')",
        )
    try:
        model_config = AutoConfig.from_pretrained(path)
    except Exception as err:
        raise DebiasError(f"cannot read the config of {config.model} ({one_line(err, 160)})", "check --model") from err
    _check_head(model_config, config.model, n_labels)
    tokenizer = load_tokenizer(config.model)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            path,
            num_labels=n_labels,
            use_safetensors=None if config.allow_pickle else True,
            dtype=torch_dtype("float32" if config.dtype == "auto" else config.dtype),
        )
    except Exception as err:
        raise DebiasError(
            f"cannot build a classifier from {config.model} ({one_line(err, 160)})", "check --model"
        ) from err
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _loaders(config: DownstreamConfig, task: TaskData, tokenizer: Any) -> tuple[Any, Any]:
    from torch.utils.data import DataLoader

    label_id = {label: i for i, label in enumerate(task.labels)}

    def collate(batch: list[tuple[int, Example]]) -> dict[str, Any]:
        enc = tokenizer(
            [r.text for _, r in batch],
            padding=True,
            truncation=True,
            max_length=config.max_length,
            return_tensors="pt",
            return_token_type_ids=False,
        )
        enc["labels"] = torch.tensor([label_id[r.label] for _, r in batch])
        enc["idx"] = torch.tensor([i for i, _ in batch])
        return enc

    generator = torch.Generator().manual_seed(config.seed)
    train = DataLoader(
        list(enumerate(task.train)), batch_size=config.batch_size, shuffle=True, collate_fn=collate, generator=generator
    )
    test = DataLoader(list(enumerate(task.test)), batch_size=config.batch_size, collate_fn=collate)
    return train, test


def _train(model: Any, config: DownstreamConfig, loader: Any, accelerator: Any, n_rows: int) -> dict[str, Any]:
    """AdamW over the trainable parameters, linear schedule with 6% warm-up; returns the step count and losses."""
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )
    steps_per_epoch = -(-n_rows // (config.batch_size * accelerator.num_processes))
    total = config.max_steps or max(1, round(config.epochs * steps_per_epoch))
    scheduler = get_scheduler("linear", optimizer, num_warmup_steps=int(0.06 * total), num_training_steps=total)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    model.train()
    step, losses = 0, []
    while step < total:
        for batch in loader:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = torch.nn.functional.cross_entropy(logits, batch["labels"])
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            step += 1
            if step >= total:
                break
        logger.info("step %d/%d, loss %.4f", step, total, sum(losses[-20:]) / len(losses[-20:]))
    return {"model": model, "steps": total, "final_loss": losses[-1], "first_loss": losses[0]}


def _predict(model: Any, loader: Any, accelerator: Any, n_rows: int) -> list[int]:
    loader = accelerator.prepare(loader)
    model.eval()
    predicted: dict[int, int] = {}
    with torch.no_grad():
        for batch in loader:
            pred = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.argmax(-1)
            idx, pred = accelerator.gather_for_metrics((batch["idx"], pred))
            predicted.update(zip(idx.tolist(), pred.tolist(), strict=True))
    if len(predicted) != n_rows:
        raise RuntimeError(f"{len(predicted)} predictions for {n_rows} test rows")
    return [predicted[i] for i in range(n_rows)]


def _record(config: DownstreamConfig, task: TaskData, metrics: dict[str, Any], trained: dict[str, Any]) -> dict:
    return scrub_local_paths(
        {
            **metrics,
            "n_train": len(task.train),
            "n_test": len(task.test),
            "labels": task.labels,
            "train_stereotypes": dict(Counter(r.stereotype for r in task.train if r.stereotype)),
            "train": {k: trained[k] for k in ("steps", "first_loss", "final_loss", "world_size", "placement")},
            "adapters_unchanged": trained["adapters_unchanged"],
            "config": asdict(config),
            "versions": versions(),
        }
    )


def run_downstream(config: DownstreamConfig) -> dict[str, Any] | None:
    """Fine-tune, score and save; returns ``metrics.json``'s content on the main process, None on the others."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from peft_debias.loader.attach import adapter_parameters, load_debias_adapter
    from peft_debias.models.placement import accelerate_on_cpu, dtype_name

    accelerator = Accelerator(cpu=accelerate_on_cpu(config.device))
    check_destination(config.output, overwrite=config.overwrite)
    task = load_task(config)  # every input check before the model is built
    set_seed(config.seed)  # the same head initialisation in every arm of a seed
    model, tokenizer = load_classifier(config, len(task.labels))
    if config.adapter:
        model = load_debias_adapter(
            model,
            config.adapter,
            mode="freeze",
            freeze_layer_norm=config.freeze_layer_norm,
            allow_base_mismatch=config.allow_base_mismatch,
            allow_pickle=config.allow_pickle,
        )
    set_seed(config.seed)  # again: injecting adapters draws random numbers, so dropout would differ between arms
    before = _digest(adapter_parameters(model)) if config.adapter else None
    train_loader, test_loader = _loaders(config, task, tokenizer)
    trained = _train(model, config, train_loader, accelerator, len(task.train))
    predictions = _predict(trained["model"], test_loader, accelerator, len(task.test))
    unwrapped = accelerator.unwrap_model(trained["model"])
    trained["world_size"] = accelerator.num_processes
    trained["placement"] = {"device": str(accelerator.device), "dtype": dtype_name(unwrapped.dtype)}
    trained["adapters_unchanged"] = None if before is None else _digest(adapter_parameters(unwrapped)) == before
    if trained["adapters_unchanged"] is False:
        raise RuntimeError("a frozen adapter changed during fine-tuning")
    labels = [task.labels[p] for p in predictions]
    result = None
    if accelerator.is_main_process:
        result = _record(config, task, task.score(labels), trained)
        with atomic_output(config.output, overwrite=config.overwrite, directory=True) as tmp:
            write_json(tmp / "metrics.json", result)
            with open(tmp / "predictions.jsonl", "w", encoding="utf-8") as fh:
                for row, pred in zip(task.test, labels, strict=True):
                    record = {"label": row.label, "prediction": pred, "group": row.group}
                    if row.stereotype is not None:
                        record["stereotype"] = row.stereotype
                    fh.write(json.dumps(record) + "\n")
            if config.save_model:
                unwrapped.save_pretrained(tmp / "model")
                tokenizer.save_pretrained(tmp / "model")
    accelerator.wait_for_everyone()
    return result
