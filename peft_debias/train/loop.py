"""The accelerate training loop behind :func:`peft_debias.train.adapter.train_adapter` (see it for the design)."""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from peft_debias.core.errors import DebiasError
from peft_debias.train.config import StepCallback, TrainConfig, TrainResult, expected_world_size
from peft_debias.train.objectives import compute_loss

logger = logging.getLogger(__name__)


class RowStream:
    """Deterministic, resumable order over ``n`` rows: epoch ``e`` is a permutation seeded by ``seed + e``."""

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed = n, seed
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def take(self, start: int, count: int) -> list[int]:
        out = []
        for pos in range(start, start + count):
            epoch = pos // self.n
            if epoch != self._epoch:
                self._epoch = epoch
                self._perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed + epoch))
            out.append(int(self._perm[pos % self.n]))
        return out


def _rows(ds, objective: str, cda: bool) -> list[dict[str, str]]:
    """Training rows from CDA records: LM objectives get each text (and, with CDA, its counterfactuals) as a row;
    the counterfactual objective gets (text, counterfactual) pairs. Without CDA (the control) texts are not swapped."""
    rows: list[dict[str, str]] = []
    for text, cfs in zip(ds["text"], ds["counterfactuals"], strict=True):
        if objective == "counterfactual":
            rows += [{"text": text, "counterfactual": cf if cda else text} for cf in (cfs or [text])]
        else:
            rows += [{"text": text}] + ([{"text": cf} for cf in cfs] if cda else [])
    return rows


def _seed_for(*parts: int) -> int:
    value = 0
    for part in parts:
        value = (value * 1_000_003 + part) % (2**62)
    return value


def _adapter_digest(model) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, param in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
        digest.update(name.encode())
        digest.update(param.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def run_training(config: TrainConfig, work: Path, step_callback: StepCallback | None = None) -> TrainResult:
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from peft_debias.cda.axes import get_axis
    from peft_debias.cda.corpora import build_cda_dataset
    from peft_debias.loader.checks import backbone_fingerprint
    from peft_debias.models.loading import ModelKind, load_model, weights_fingerprint
    from peft_debias.models.methods import wrap_model
    from peft_debias.train.objectives import check_objective, collate, default_objective

    accelerator = Accelerator(mixed_precision=config.mixed_precision)
    world, rank = accelerator.num_processes, accelerator.process_index
    expected = expected_world_size(config)
    if expected is not None and expected != world:
        raise DebiasError(
            f"launched for {expected} processes but this run sees {world}",
            "check the launch command (on CPU use ACCELERATE_USE_CPU=true accelerate launch "
            "--multi_gpu --num_processes N) or the world_size setting",
        )
    set_seed(config.seed)
    axis = get_axis(config.axis)
    # The corpus is read before the (possibly large) model is loaded, so that a bad corpus fails fast.
    with accelerator.main_process_first():
        ds, cda_stats = build_cda_dataset(config.corpus, config.cda_config(), progress=config.progress and rank == 0)
    loaded = load_model(
        config.base,
        config.kind,
        revision=config.revision,
        allow_pickle=config.allow_pickle,
        trust_remote_code=config.trust_remote_code,
    )
    kind: ModelKind = loaded.kind
    objective = config.objective or default_objective(kind)
    check_objective(objective, kind, config.objective_options.invariance, config.objective_options.regulariser)
    if objective in ("mlm", "counterfactual") and kind is ModelKind.MASKED_LM and loaded.tokenizer.mask_token is None:
        raise DebiasError("the tokenizer has no mask token", "use a masked LM with a [MASK] token")
    base_fingerprint = weights_fingerprint(loaded.model)
    backbone_fp = backbone_fingerprint(loaded.model)  # equal across heads: the downstream loader's base check
    model = wrap_model(loaded.model, config.method, kind, config.method_options, base_name=loaded.path)
    tokenizer = loaded.tokenizer
    from peft_debias.models.limits import max_positions

    obj_cfg = config.objective_config(min(config.max_length, max_positions(loaded.model, loaded.tokenizer)))

    n_eval = min(config.eval_max_rows, int(len(ds) * config.eval_fraction)) if len(ds) > 1 else 0
    train_rows = _rows(ds.select(range(n_eval, len(ds))), objective, config.cda)
    eval_rows = _rows(ds.select(range(n_eval)), objective, config.cda) if n_eval else []
    if not train_rows:
        raise DebiasError("no training rows after the held-out split", "use a larger corpus or eval_fraction 0")

    per_step = config.batch_size * config.grad_accum * world
    total = config.max_steps or max(1, math.ceil(config.epochs * len(train_rows) / per_step))
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_scheduler(
        config.scheduler, optimizer, num_warmup_steps=int(config.warmup_ratio * total), num_training_steps=total
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    stream = RowStream(len(train_rows), config.seed)
    log_path = work / "training_log.jsonl"
    start_step = 0
    if accelerator.is_main_process:
        work.mkdir(parents=True, exist_ok=True)
        saved = {"fingerprint": config.fingerprint(), "config": _jsonable(config)}
        _replace_text(work / "train_config.json", json.dumps(saved, indent=2) + "\n")
    accelerator.wait_for_everyone()
    if config.resume:
        start_step = _load_checkpoint(work, unwrapped, optimizer, scheduler, rank)
        _truncate_log(log_path, start_step, accelerator.is_main_process)
        logger.info("resumed from step %d", start_step)

    def batch_for(step: int, micro: int, rows_pool: list[dict], order: list[int] | None = None) -> dict[str, Any]:
        if order is None:
            first = ((step * config.grad_accum + micro) * world + rank) * config.batch_size
            order = stream.take(first, config.batch_size)
        gen = torch.Generator().manual_seed(_seed_for(config.seed, step, micro, rank))
        batch = collate([rows_pool[i] for i in order], objective, tokenizer, kind, obj_cfg, gen)
        return _to_device(batch, accelerator.device)

    def evaluate() -> float | None:
        if not eval_rows:
            return None
        model.eval()
        total_loss, count = torch.zeros((), device=accelerator.device), torch.zeros((), device=accelerator.device)
        with torch.no_grad():
            mine = list(range(rank, len(eval_rows), world))
            for lo in range(0, len(mine), config.batch_size):
                chunk = mine[lo : lo + config.batch_size]
                loss, _ = compute_loss(model, batch_for(-1, lo, eval_rows, chunk), objective, kind, obj_cfg)
                total_loss += loss.detach() * len(chunk)
                count += len(chunk)
        model.train()
        total_loss, count = accelerator.reduce(total_loss), accelerator.reduce(count)
        return float(total_loss / count.clamp(min=1))

    model.train()
    bar = tqdm(
        total=total,
        initial=start_step,
        desc=f"train {config.axis} {config.method}",
        unit="step",
        disable=not (config.progress and accelerator.is_main_process) or None,
    )
    started, last_loss, eval_loss = time.perf_counter(), None, None
    for step in range(start_step, total):
        parts_sum: dict[str, float] = {}
        step_loss = 0.0
        for micro in range(config.grad_accum):
            batch = batch_for(step, micro, train_rows)
            last_micro = micro == config.grad_accum - 1
            with accelerator.no_sync(model) if not last_micro else _null():
                loss, parts = compute_loss(model, batch, objective, kind, obj_cfg)
                accelerator.backward(loss / config.grad_accum)
            step_loss += float(loss.detach()) / config.grad_accum
            for key, value in parts.items():
                parts_sum[key] = parts_sum.get(key, 0.0) + value / config.grad_accum
        if config.max_grad_norm:
            accelerator.clip_grad_norm_(trainable, config.max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        last_loss = step_loss
        done = step + 1
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}", refresh=False)
        record: dict[str, Any] = {"step": done, "loss": step_loss, **parts_sum, "lr": scheduler.get_last_lr()[0]}
        if config.eval_every and (done % config.eval_every == 0 or done == total):
            eval_loss = record["eval_loss"] = evaluate()
        if accelerator.is_main_process and (done % config.log_every == 0 or done == total or "eval_loss" in record):
            record["seconds"] = round(time.perf_counter() - started, 3)
            with open(log_path, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(record) + "\n")
        if step_callback is not None:
            rng = torch.get_rng_state()
            step_callback(done, unwrapped, tokenizer)
            torch.set_rng_state(rng)
            model.train()
        if config.save_every and done % config.save_every == 0 and done < total:
            _save_checkpoint(work, done, unwrapped, optimizer, scheduler, accelerator)
    bar.close()
    elapsed = time.perf_counter() - started
    if eval_loss is None and eval_rows:
        eval_loss = evaluate()
    digests = _gather_digests(accelerator, _adapter_digest(unwrapped))
    accelerator.wait_for_everyone()
    unwrapped.eval()
    result = TrainResult(
        Path(config.output),
        total,
        last_loss,
        eval_loss,
        elapsed,
        elapsed / max(total - start_step, 1),
        digests,
        unwrapped,
    )
    if accelerator.is_main_process:
        from peft_debias.train.artifact import write_artifact

        write_artifact(
            config,
            work,
            unwrapped,
            loaded,
            kind,
            objective,
            axis,
            cda_stats,
            base_fingerprint,
            result,
            world,
            backbone_fp=backbone_fp,
        )
        shutil.rmtree(work, ignore_errors=True)
    accelerator.wait_for_everyone()
    return result


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _jsonable(config: TrainConfig) -> dict[str, Any]:
    return json.loads(json.dumps(config.to_dict(), default=str))


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    return batch.to(device) if isinstance(batch, torch.Tensor) else batch


def _gather_digests(accelerator, digest: str) -> list[str]:
    if accelerator.num_processes == 1:
        return [digest]
    from accelerate.utils import gather_object

    return list(gather_object([digest]))


def _save_checkpoint(work: Path, step: int, model, optimizer, scheduler, accelerator) -> None:
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = work / "checkpoints" / f"step-{step:08d}"
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.save_pretrained(str(tmp / "adapter"))
        torch.save(
            {
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": torch.get_rng_state(),
                "step": step,
            },
            tmp / "trainer_state.pt",
        )
        tmp.rename(final)
        for old in sorted((work / "checkpoints").glob("step-????????"))[:-1]:  # keep the newest only
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _load_checkpoint(work: Path, model, optimizer, scheduler, rank: int) -> int:
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    checkpoints = sorted((work / "checkpoints").glob("step-????????"))
    if not checkpoints:
        return 0  # interrupted before the first checkpoint: start from scratch with the same config
    last = checkpoints[-1]
    state = torch.load(last / "trainer_state.pt", weights_only=True, map_location="cpu")
    weights = load_file(str(last / "adapter" / "adapter_model.safetensors"))
    set_peft_model_state_dict(model, weights)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return int(state["step"])


def _truncate_log(path: Path, step: int, main: bool) -> None:
    if not main or not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # the line a killed run was writing: past the checkpoint anyway
            continue
        if record["step"] <= step:
            kept.append(line)
    _replace_text(path, "".join(line + "\n" for line in kept))


def _replace_text(path: Path, text: str) -> None:
    """Write a work file whole, then rename it into place: a killed run never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
