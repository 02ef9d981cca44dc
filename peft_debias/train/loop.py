"""The one training loop: PEFT adapters (lora, prefix, prompt, ia3) and full fine-tuning (``full``), on accelerate.

:func:`train` runs it for :func:`~peft_debias.train.adapter.train_adapter` (an adapter on the CDA rows of a corpus)
and :func:`~peft_debias.train.biased.train_biased` (a biased model or adapter on given sentences, CDA off). The loop
is deliberately explicit so that it is deterministic and resumable on CPU:

* data order: the rows of optimizer step ``s``, micro-batch ``m``, rank ``r`` are a pure function of the seed and
  those indices (per-epoch permutations from seeded generators), and MLM masks come from a generator seeded the same
  way, so a resumed run replays exactly what an uninterrupted run would have seen;
* gradient accumulation is manual (``accelerator.no_sync`` on all but the last micro-batch) and the LR scheduler is
  stepped once per optimizer step (accelerate's prepared scheduler steps once per process);
* checkpoints hold only what changes (:mod:`peft_debias.train.work`): the trained weights, optimizer and scheduler
  state and the torch RNG; with a PEFT method not the frozen base.

With ``full`` every weight trains and there is no PEFT wrapper; the output folder is then written by the caller's
writer (a full model). Under ``accelerate launch`` with several processes each rank trains on its own slice of
every batch and DDP averages the gradients; the loop refuses to run if the world size differs from the expected one.
Under FSDP (accelerate shards on GPUs only) the weights digest and the saved weights are gathered from the shards
first (:mod:`peft_debias.train.sharded`).
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from peft_debias.cda.dataset import CDA_SCRATCH_PREFIX
from peft_debias.core.atomic import check_not_input, scratch_folder
from peft_debias.core.errors import DebiasError
from peft_debias.train import work as work_files
from peft_debias.train.config import (
    FULL,
    StepCallback,
    TrainConfig,
    Trained,
    TrainResult,
    Writer,
    expected_world_size,
)
from peft_debias.train.data import RowStream, read_corpus, training_rows
from peft_debias.train.objectives import compute_loss
from peft_debias.train.optim import make_optimizer
from peft_debias.train.sharded import check_sharded_run, full_state_dict, weights_digest

logger = logging.getLogger(__name__)


def _seed_for(*parts: int) -> int:
    value = 0
    for part in parts:
        value = (value * 1_000_003 + part) % (2**62)
    return value


@dataclass
class _Model:
    """The base model made ready for the method: wrapped by PEFT, or itself with every weight trainable."""

    loaded: Any
    model: Any
    objective: str
    objective_config: Any
    base_fingerprint: str
    backbone_fingerprint: str


def _load_model(config: TrainConfig) -> _Model:
    from peft_debias.loader.checks import backbone_fingerprint
    from peft_debias.models.limits import MIN_TOKENS, max_positions
    from peft_debias.models.loading import ModelKind, load_model, weights_fingerprint
    from peft_debias.models.methods import get_method, wrap_model
    from peft_debias.train.objectives import check_objective, default_objective

    loaded = load_model(
        config.base,
        config.kind,
        revision=config.revision,
        device="cpu",  # accelerate moves it to the process's device
        dtype=config.dtype,
        allow_pickle=config.allow_pickle,
        trust_remote_code=config.trust_remote_code,
    )
    kind = loaded.kind
    if config.method == FULL and kind is ModelKind.ENCODER:
        raise DebiasError(f"{config.base} is a bare encoder without an LM head", "use a masked or causal LM")
    objective = config.objective or default_objective(kind)
    check_objective(objective, kind, config.objective_options.invariance, config.objective_options.regulariser)
    masks = ("mlm", "counterfactual", "equalize")
    if objective in masks and kind is ModelKind.MASKED_LM and loaded.tokenizer.mask_token is None:
        raise DebiasError("the tokenizer has no mask token", "use a masked LM with a [MASK] token")
    base_fp = weights_fingerprint(loaded.model)
    backbone_fp = backbone_fingerprint(loaded.model)  # equal across heads: the downstream loader's base check
    if config.method == FULL:
        model = loaded.model.requires_grad_(True)
        if config.dtype != "float32":  # measured in docs/scale.md: at lr 5e-5 about half the weights never moved
            logger.warning("every weight trains in %s, which drops updates below its precision", config.dtype)
    else:
        model = wrap_model(loaded.model, config.method, kind, config.method_options, base_name=loaded.path)
    room = max_positions(loaded.model, loaded.tokenizer)
    if config.method != FULL and get_method(config.method).prompt_learning:  # virtual tokens take positions too
        room -= config.method_options.num_virtual_tokens
    objective_config = config.objective_config(min(config.max_length, max(room, MIN_TOKENS)))
    return _Model(loaded, model, objective, objective_config, base_fp, backbone_fp)


class _Trainer:
    """Optimizer, scheduler, data order, evaluation and the step loop of one run (one instance per process)."""

    def __init__(self, config: TrainConfig, work: Path, accelerator, prepared: _Model, rows, eval_rows) -> None:
        from transformers import get_scheduler

        self.config, self.work, self.accelerator = config, work, accelerator
        self.world, self.rank = accelerator.num_processes, accelerator.process_index
        self.kind, self.objective, self.obj_cfg = prepared.loaded.kind, prepared.objective, prepared.objective_config
        self.tokenizer, self.rows, self.eval_rows = prepared.loaded.tokenizer, rows, eval_rows
        per_step = config.batch_size * config.grad_accum * self.world
        self.total = config.max_steps or max(1, math.ceil(config.epochs * len(rows) / per_step))
        trainable = [p for p in prepared.model.parameters() if p.requires_grad]
        optimizer = make_optimizer(config.optimizer, trainable, config.lr, config.weight_decay)
        self.scheduler = get_scheduler(
            config.scheduler,
            optimizer,
            num_warmup_steps=int(config.warmup_ratio * self.total),
            num_training_steps=self.total,
        )
        self.model, self.optimizer = accelerator.prepare(prepared.model, optimizer)
        self.unwrapped = accelerator.unwrap_model(self.model)
        self.stream = RowStream(len(rows), config.seed)
        self.full = config.method == FULL

    def start(self) -> int:
        """Record the run's config in the work folder; on resume restore the newest checkpoint. Returns its step."""
        if self.accelerator.is_main_process:
            work_files.write_run_config(self.work, self.config)
        self.accelerator.wait_for_everyone()
        if not self.config.resume:
            return 0
        step = work_files.load_checkpoint(self.work, self.unwrapped, self.optimizer, self.scheduler, self.full)
        if self.accelerator.is_main_process:
            work_files.truncate_log(self.work, step)
        logger.info("resumed from step %d", step)
        return step

    def batch(self, step: int, micro: int, pool: list[dict], order: list[int] | None = None) -> dict[str, Any]:
        """The collated rows of (step, micro-batch) on this rank, or ``order`` of ``pool``; masks seeded by both."""
        from peft_debias.train.objectives import collate

        config = self.config
        if order is None:
            first = ((step * config.grad_accum + micro) * self.world + self.rank) * config.batch_size
            order = self.stream.take(first, config.batch_size)
        gen = torch.Generator().manual_seed(_seed_for(config.seed, step, micro, self.rank))
        batch = collate([pool[i] for i in order], self.objective, self.tokenizer, self.kind, self.obj_cfg, gen)
        return _to_device(batch, self.accelerator.device)

    def evaluate(self) -> float | None:
        """The mean loss over the held-out rows (each rank takes every world-th row)."""
        if not self.eval_rows:
            return None
        device, size = self.accelerator.device, self.config.batch_size
        self.model.eval()
        total_loss, count = torch.zeros((), device=device), torch.zeros((), device=device)
        with torch.no_grad():
            mine = list(range(self.rank, len(self.eval_rows), self.world))
            for lo in range(0, len(mine), size):
                chunk = mine[lo : lo + size]
                batch = self.batch(-1, lo, self.eval_rows, chunk)
                loss, _ = compute_loss(self.model, batch, self.objective, self.kind, self.obj_cfg)
                total_loss += loss.detach() * len(chunk)
                count += len(chunk)
        self.model.train()
        total_loss, count = self.accelerator.reduce(total_loss), self.accelerator.reduce(count)
        return float(total_loss / count.clamp(min=1))

    def step(self, step: int) -> dict[str, Any]:
        """One optimizer step (all its micro-batches); returns its log record."""
        config, accelerator = self.config, self.accelerator
        parts_sum: dict[str, float] = {}
        step_loss = 0.0
        for micro in range(config.grad_accum):
            batch = self.batch(step, micro, self.rows)
            last_micro = micro == config.grad_accum - 1
            with accelerator.no_sync(self.model) if not last_micro else _null():
                loss, parts = compute_loss(self.model, batch, self.objective, self.kind, self.obj_cfg)
                accelerator.backward(loss / config.grad_accum)
            step_loss += float(loss.detach()) / config.grad_accum
            for key, value in parts.items():
                parts_sum[key] = parts_sum.get(key, 0.0) + value / config.grad_accum
        if config.max_grad_norm:
            accelerator.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return {"step": step + 1, "loss": step_loss, **parts_sum, "lr": self.scheduler.get_last_lr()[0]}

    def run(self, step_callback: StepCallback | None) -> TrainResult:
        """Train from the start (or the resumed) step to the end; log, evaluate, call back, checkpoint."""
        from tqdm.auto import tqdm

        config, accelerator, total = self.config, self.accelerator, self.total
        start_step = self.start()
        self.model.train()
        show = config.progress and accelerator.is_main_process
        desc = f"train {config.axis} {config.method}"
        bar = tqdm(total=total, initial=start_step, desc=desc, unit="step", disable=not show or None)
        started, last_loss, eval_loss = time.perf_counter(), None, None
        for step in range(start_step, total):
            record = self.step(step)
            last_loss, done = record["loss"], step + 1
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.4f}", refresh=False)
            if config.eval_every and (done % config.eval_every == 0 or done == total):
                eval_loss = record["eval_loss"] = self.evaluate()
            if accelerator.is_main_process and (done % config.log_every == 0 or done == total or "eval_loss" in record):
                work_files.append_log(self.work, {**record, "seconds": round(time.perf_counter() - started, 3)})
            if step_callback is not None:
                rng = torch.get_rng_state()
                step_callback(done, self.unwrapped, self.tokenizer)
                torch.set_rng_state(rng)
                self.model.train()
            if config.save_every and done % config.save_every == 0 and done < total:
                args = (self.unwrapped, self.optimizer, self.scheduler, accelerator, self.full)
                work_files.save_checkpoint(self.work, done, *args)
        bar.close()
        elapsed = time.perf_counter() - started
        if eval_loss is None and self.eval_rows:
            eval_loss = self.evaluate()
        digests = _gather_digests(accelerator, weights_digest(accelerator, self.model, self.unwrapped))
        full_state = full_state_dict(accelerator, self.model, self.unwrapped)  # FSDP: all ranks gather, main keeps
        accelerator.wait_for_everyone()
        self.unwrapped.eval()
        per_step = elapsed / max(total - start_step, 1)
        output = Path(config.output)
        return TrainResult(output, total, last_loss, eval_loss, elapsed, per_step, digests, self.unwrapped, full_state)


def run_training(
    config: TrainConfig,
    work: Path,
    *,
    texts: list[str] | None = None,
    write: Writer | None = None,
    step_callback: StepCallback | None = None,
) -> TrainResult:
    """Train on the CDA rows of ``config.corpus`` (or on ``texts``, CDA off) and write the output folder with
    ``write`` (default: the adapter artifact) on the main process; the work folder goes once it is written."""
    from accelerate import Accelerator
    from accelerate.utils import set_seed

    from peft_debias.models.placement import accelerate_on_cpu

    accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=accelerate_on_cpu(config.device))
    expected = expected_world_size(config)
    if expected is not None and expected != accelerator.num_processes:
        raise DebiasError(
            f"launched for {expected} processes but this run sees {accelerator.num_processes}",
            "check the launch command (on CPU use ACCELERATE_USE_CPU=true accelerate launch "
            "--multi_gpu --num_processes N) or the world_size setting",
        )
    check_sharded_run(accelerator, config)
    set_seed(config.seed)
    cache = None if texts is not None else scratch_folder(CDA_SCRATCH_PREFIX)
    try:  # the CDA table is read into rows before training: its folder goes when the run ends, however it ends
        result = _train_and_write(config, work, accelerator, texts, cache, write, step_callback)
    finally:
        if cache is not None:
            shutil.rmtree(cache, ignore_errors=True)
    accelerator.wait_for_everyone()
    return result


def _train_and_write(config: TrainConfig, work: Path, accelerator, texts, cache, write, step_callback) -> TrainResult:
    """Read the corpus (CDA tables under ``cache``), load and wrap the model, train, and write the output."""
    corpus = read_corpus(config, texts, accelerator, cache)  # before the (possibly large) model: fails fast
    prepared = _load_model(config)
    rows = training_rows(corpus.train, prepared.objective, config.cda)
    if not rows:
        raise DebiasError("no training rows after the held-out split", "use a larger corpus or eval_fraction 0")
    trainer = _Trainer(
        config, work, accelerator, prepared, rows, training_rows(corpus.held_out, prepared.objective, config.cda)
    )
    result = trainer.run(step_callback)
    if accelerator.is_main_process:
        from peft_debias.train.artifact import write_artifact

        trained = Trained(
            config, work, trainer.unwrapped, trainer.tokenizer, prepared.loaded, prepared.objective, corpus.axis,
            corpus.stats, prepared.base_fingerprint, prepared.backbone_fingerprint, result, accelerator.num_processes,
        )  # fmt: skip
        (write or write_artifact)(trained)
        shutil.rmtree(work, ignore_errors=True)
    return result


def train(
    config: TrainConfig,
    *,
    texts: list[str] | None = None,
    write: Writer | None = None,
    step_callback: StepCallback | None = None,
) -> TrainResult:
    """Check the config, the destination and the work folder (``--resume``), run, and time the whole call.

    ``texts``: train on these sentences as they are (no corpus, no CDA; a held-out share is split off with the
    seed). ``step_callback(step, model, tokenizer)`` runs on every process after each optimizer step; the model is
    put back in training mode and the torch RNG state restored afterwards, so a callback that does not change the
    weights leaves the run unchanged.
    """
    config.validate(given_texts=texts is not None)
    check_not_input(config.output, [config.base, *config.corpus])
    _check_model_limits(config)
    work = work_files.check_start(config)
    started = time.perf_counter()
    result = run_training(config, work, texts=texts, write=write, step_callback=step_callback)
    result.seconds = time.perf_counter() - started
    return result


def _check_model_limits(config: TrainConfig) -> None:
    """Refuse PEFT sizes the base cannot hold from its config alone, before the corpus and the weights load."""
    if config.method == FULL:
        return
    from peft_debias.models.limits import check_method_fits
    from peft_debias.models.loading import load_config
    from peft_debias.models.methods import get_method

    model_config = load_config(
        config.base, revision=config.revision, allow_pickle=config.allow_pickle,
        trust_remote_code=config.trust_remote_code,
    )  # fmt: skip
    options = config.method_options
    check_method_fits(
        model_config, config.base, prompt_learning=get_method(config.method).prompt_learning,
        lora=config.method == "lora", r=options.r, num_virtual_tokens=options.num_virtual_tokens,
    )  # fmt: skip


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch.to(device) if isinstance(batch, torch.Tensor) else batch


def _gather_digests(accelerator, digest: str) -> list[str]:
    if accelerator.num_processes == 1:
        return [digest]
    from accelerate.utils import gather_object

    return list(gather_object([digest]))
