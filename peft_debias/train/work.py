"""The work folder of a run in progress: its config, log and checkpoints, and the checks that start or resume it.

The folder is a sibling of the output (``.<name>.peft-debias-work``) and is removed when the output is written.
Checkpoints hold only what changes: the trained weights (a PEFT adapter, or every weight of a fully fine-tuned
model) as safetensors, the optimizer and scheduler state and the torch RNG as JSON plus safetensors
(:mod:`peft_debias.train.state`: nothing is pickled, so resuming never unpickles). Work files are written whole and
renamed into place, so a killed run never leaves half a file; a damaged one found on ``--resume`` is one line naming
it, before the model loads.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from peft_debias.core.atomic import as_write_error
from peft_debias.core.errors import DebiasError, one_line
from peft_debias.core.jsonio import dumps
from peft_debias.train.config import RESUME_FREE, TrainConfig
from peft_debias.train.state import STATE_JSON, STATE_TENSORS, load_state, save_state

WORK_SUFFIX = ".peft-debias-work"
RUN_CONFIG = "train_config.json"
LOG = "training_log.jsonl"


def work_dir(output: str | Path) -> Path:
    """The sibling folder holding checkpoints and the log while a run is in progress."""
    out = Path(output).absolute()
    return out.parent / f".{out.name}{WORK_SUFFIX}"


def check_start(config: TrainConfig) -> Path:
    """Refuse an existing output, a resume that does not match the interrupted run, or an interrupted run that
    would be lost; returns the work folder."""
    from peft_debias.core.atomic import check_destination

    check_destination(config.output, overwrite=config.overwrite)
    work = work_dir(config.output)
    saved = work / RUN_CONFIG
    if config.resume:
        if not saved.is_file():
            raise DebiasError(f"nothing to resume at {work}", "run without --resume to start a new run")
        previous = _read_run_config(saved, work)
        read_checkpoint(work)  # a damaged checkpoint fails here, before the model is loaded
        if previous.get("fingerprint") != config.fingerprint():
            current = config.to_dict()
            changed = sorted(
                k for k, v in previous.get("config", {}).items() if k not in RESUME_FREE and current.get(k) != v
            )
            raise DebiasError(
                f"--resume with a different config (changed: {', '.join(changed) or '?'})",
                "resume with the original settings, or start over with --overwrite",
            )
    elif work.exists():
        if not saved.is_file():  # killed before its config was written: nothing to resume, nothing lost
            shutil.rmtree(work)
        elif not config.overwrite:
            raise DebiasError(
                f"an interrupted run exists at {work}", "pass --resume to continue it or --overwrite to start over"
            )
        else:
            shutil.rmtree(work)
    return work


def _damaged(path: Path, what: str, work: Path) -> DebiasError:
    """The error for a damaged work file: what is wrong with it and how to start over."""
    return DebiasError(
        f"cannot resume: {path} {what}", f"delete {work} to start over, or drop --resume and pass --overwrite"
    )


def _read_run_config(path: Path, work: Path) -> dict[str, Any]:
    try:
        previous = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise _damaged(path, f"is not valid JSON ({one_line(err, 120)})", work) from err
    if not isinstance(previous, dict) or not isinstance(previous.get("config"), dict) or "fingerprint" not in previous:
        raise _damaged(path, "is not a run config (no 'fingerprint' and 'config')", work)
    return previous


def read_checkpoint(work: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest checkpoint folder and its trainer state, or None if the run stopped before the first one.

    The state is JSON plus safetensors (never a pickle); the weights file's header and size are checked. Any damage
    is one line naming the file."""
    from safetensors import safe_open

    checkpoints = sorted((work / "checkpoints").glob("step-????????"))
    if not checkpoints:
        return None
    last = checkpoints[-1]
    try:
        state = load_state(last)
    except Exception as err:  # missing, truncated, not JSON, a structure we did not write
        name = STATE_TENSORS if type(err).__name__ == "SafetensorError" else STATE_JSON
        if isinstance(err, OSError) and err.filename:
            name = Path(err.filename).name
        raise _damaged(last / name, f"is unreadable ({one_line(err, 160)})", work) from err
    if not {"optimizer", "scheduler", "rng", "step"} <= set(state):
        raise _damaged(last / STATE_JSON, "is not a trainer state (needs optimizer, scheduler, rng and step)", work)
    weights = [w for w in (last / "model.safetensors", last / "adapter" / "adapter_model.safetensors") if w.exists()]
    if not weights:
        raise _damaged(last, "holds no weights (model.safetensors or adapter/adapter_model.safetensors)", work)
    try:
        with safe_open(str(weights[0]), framework="pt") as fh:
            fh.keys()
    except Exception as err:
        raise _damaged(weights[0], f"is truncated or corrupted ({one_line(err, 160)})", work) from err
    return last, state


def write_run_config(work: Path, config: TrainConfig) -> None:
    """Record the run's settings and fingerprint (what ``--resume`` is checked against)."""
    work.mkdir(parents=True, exist_ok=True)
    config_json = json.loads(json.dumps(config.to_dict(), default=str))
    replace_text(work / RUN_CONFIG, dumps({"fingerprint": config.fingerprint(), "config": config_json}) + "\n")


def append_log(work: Path, record: dict[str, Any]) -> None:
    """Add one record to the training log."""
    with open(work / LOG, "a", encoding="utf-8") as fh:
        fh.write(dumps(record, indent=None) + "\n")


def save_checkpoint(work: Path, step: int, model, optimizer, scheduler, accelerator, full: bool) -> None:
    """Save the trained weights, optimizer, scheduler and RNG state after ``step`` (the newest checkpoint only).
    A write failure (full disk, quota) is one line naming the checkpoint; the half-written one is removed."""
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = work / "checkpoints" / f"step-{step:08d}"
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
            _write_checkpoint(tmp, step, model, optimizer, scheduler, full)
            tmp.rename(final)
        except BaseException as err:
            shutil.rmtree(tmp, ignore_errors=True)
            failure = as_write_error(err, final)
            if failure is not None:
                raise failure from err
            raise
        for old in sorted((work / "checkpoints").glob("step-????????"))[:-1]:  # keep the newest only
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _write_checkpoint(folder: Path, step: int, model, optimizer, scheduler, full: bool) -> None:
    import torch

    if full:
        from safetensors.torch import save_model

        save_model(model, str(folder / "model.safetensors"))  # tied weights once, as the model holds them
    else:
        model.save_pretrained(str(folder / "adapter"))
    state = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "rng": torch.get_rng_state(),
        "step": step,
    }
    save_state(state, folder)


def load_checkpoint(work: Path, model, optimizer, scheduler, full: bool) -> int:
    """Restore the newest checkpoint; returns its step (0 when the run was interrupted before the first one)."""
    import torch
    from safetensors.torch import load_file, load_model

    found = read_checkpoint(work)
    if found is None:
        return 0  # interrupted before the first checkpoint: start from scratch with the same config
    last, state = found
    weights = last / "model.safetensors" if full else last / "adapter" / "adapter_model.safetensors"
    try:
        if full:
            load_model(model, str(weights))
        else:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(model, load_file(str(weights)))
    except Exception as err:  # missing file or tensors of other shapes
        raise _damaged(weights, f"does not fit the model ({one_line(err, 160)})", work) from err
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        return int(state["step"])
    except Exception as err:
        raise _damaged(last / STATE_JSON, f"does not fit this run ({one_line(err, 160)})", work) from err


def truncate_log(work: Path, step: int) -> None:
    """Drop the log records past ``step`` (a resumed run writes them again)."""
    path = work / LOG
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # the line a killed run was writing: past the checkpoint anyway
            continue
        if record["step"] <= step:
            kept.append(line)
    replace_text(path, "".join(line + "\n" for line in kept))


def replace_text(path: Path, text: str) -> None:
    """Write a work file whole, then rename it into place: a killed run never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
