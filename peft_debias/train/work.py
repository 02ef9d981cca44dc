"""The work folder of a run in progress: its config, log and checkpoints, and the checks that start or resume it.

The folder is a sibling of the output (``.<name>.peft-debias-work``) and is removed when the output is written.
Checkpoints hold only what changes: the trained weights (a PEFT adapter, or every weight of a fully fine-tuned
model) as safetensors, the optimizer and scheduler state and the torch RNG (loaded back with ``weights_only=True``).
Work files are written whole and renamed into place, so a killed run never leaves half a file.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from peft_debias.core.errors import DebiasError
from peft_debias.core.jsonio import dumps
from peft_debias.train.config import RESUME_FREE, TrainConfig

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
        previous = json.loads(saved.read_text())
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


def write_run_config(work: Path, config: TrainConfig) -> None:
    """Record the run's settings and fingerprint (what ``--resume`` is checked against)."""
    work.mkdir(parents=True, exist_ok=True)
    config_json = json.loads(json.dumps(config.to_dict(), default=str))
    replace_text(
        work / RUN_CONFIG, dumps({"fingerprint": config.fingerprint(), "config": config_json}) + "\n"
    )


def append_log(work: Path, record: dict[str, Any]) -> None:
    """Add one record to the training log."""
    with open(work / LOG, "a", encoding="utf-8") as fh:
        fh.write(dumps(record, indent=None) + "\n")


def save_checkpoint(work: Path, step: int, model, optimizer, scheduler, accelerator, full: bool) -> None:
    """Save the trained weights, optimizer, scheduler and RNG state after ``step`` (the newest checkpoint only)."""
    import torch

    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        final = work / "checkpoints" / f"step-{step:08d}"
        tmp = final.with_name(final.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        if full:
            from safetensors.torch import save_model

            save_model(model, str(tmp / "model.safetensors"))  # tied weights once, as the model holds them
        else:
            model.save_pretrained(str(tmp / "adapter"))
        state = {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "rng": torch.get_rng_state(),
            "step": step,
        }
        torch.save(state, tmp / "trainer_state.pt")
        tmp.rename(final)
        for old in sorted((work / "checkpoints").glob("step-????????"))[:-1]:  # keep the newest only
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def load_checkpoint(work: Path, model, optimizer, scheduler, full: bool) -> int:
    """Restore the newest checkpoint; returns its step (0 when the run was interrupted before the first one)."""
    import torch
    from safetensors.torch import load_file, load_model

    checkpoints = sorted((work / "checkpoints").glob("step-????????"))
    if not checkpoints:
        return 0  # interrupted before the first checkpoint: start from scratch with the same config
    last = checkpoints[-1]
    state = torch.load(last / "trainer_state.pt", weights_only=True, map_location="cpu")
    if full:
        load_model(model, str(last / "model.safetensors"))
    else:
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model, load_file(str(last / "adapter" / "adapter_model.safetensors")))
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return int(state["step"])


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
