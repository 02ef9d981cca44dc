"""Fully sharded (FSDP) runs: what the training loop must do differently when accelerate shards the model.

Under FSDP each rank holds only a shard of every weight (FSDP2: ``DTensor`` parameters; FSDP1 with
``use_orig_params``: views into the rank's part of flat parameters). Whatever reads whole weights must gather them,
on every rank at once (a collective; a gather on the main process alone waits forever):

* :func:`weights_digest`: the digest of the trained weights that the ranks compare, over the full values;
* :func:`full_state_dict`: the whole state dict, gathered by every rank for the main process to save.

Checkpoints of a sharded run (optimizer state per shard) are not written: :func:`check_sharded_run` refuses
``save_every`` and ``resume`` there. accelerate (1.16) never shards on the CPU: with the ranks on the CPU
(``ACCELERATE_USE_CPU``) it drops an FSDP config without a word and wraps the model in DDP, which keeps a whole copy
of the model and its optimizer state on every rank; :func:`check_sharded_run` refuses that too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from peft_debias.core.errors import DebiasError
from peft_debias.core.fingerprints import float_params_digest
from peft_debias.train.config import FULL, TrainConfig

logger = logging.getLogger(__name__)

FSDP1_PREFIX = "_fsdp_wrapped_module."


def is_sharded(accelerator: Any) -> bool:
    """True when accelerate wrapped (or will wrap) the model in FSDP."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def fsdp_requested() -> bool:
    """True when ``accelerate launch`` was given an FSDP config (it sets ``ACCELERATE_USE_FSDP``)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def check_sharded_run(accelerator: Any, config: TrainConfig) -> None:
    """Refuse an FSDP launch that accelerate turned into something else, checkpoints of a sharded run, and an
    adapter sharded by FSDP1 (peft 0.21 finds none of its weights in a model with FSDP1 wrappers inside: it would
    save an empty adapter)."""
    if fsdp_requested() and not is_sharded(accelerator):
        raise DebiasError(
            f"launched with an FSDP config but accelerate runs {accelerator.distributed_type.value} "
            f"on {accelerator.device.type} (accelerate shards only on GPUs: on the CPU it falls back to DDP)",
            "on the CPU launch with recipes/accelerate/cpu-ddp.yaml (every rank holds the whole model)",
        )
    if not is_sharded(accelerator):
        return
    version = accelerator.state.fsdp_plugin.fsdp_version
    checks = [
        (
            bool(config.save_every or config.resume),
            "checkpoints of a sharded (FSDP) run are not supported",
            "pass --save-every 0 and no --resume (or train without FSDP)",
        ),
        (
            version == 1 and config.method != FULL,
            f"a {config.method} adapter cannot be saved from a model sharded by FSDP1",
            "set fsdp_version: 2 in the accelerate config",
        ),
    ]
    for bad, problem, fix in checks:
        if bad:
            raise DebiasError(problem, fix)
    logger.info("FSDP%d over %d processes: the model is sharded", version, accelerator.num_processes)


def weights_digest(accelerator: Any, prepared: Any, unwrapped: Any) -> str:
    """The digest of the trainable weights at their full values (the same on every rank when training was sound).

    Under FSDP every rank must call it: each weight is gathered (a collective, in the same order on every rank)
    and copied to host memory, so a rank holds one whole copy of the trainable weights while the digest is taken.
    Names are the unwrapped model's: a sharded run and an unsharded one of the same weights give the same digest."""
    if not is_sharded(accelerator):
        return float_params_digest((n, p) for n, p in unwrapped.named_parameters() if p.requires_grad)
    with _full_params(accelerator, prepared):
        named = [(_clean(n), p) for n, p in unwrapped.named_parameters() if p.requires_grad]
        return float_params_digest((n, _full_copy(p)) for n, p in named)


def full_state_dict(accelerator: Any, prepared: Any, unwrapped: Any) -> dict[str, Any] | None:
    """The whole state dict of a sharded model, with the unwrapped model's names, for the main process to save:
    every rank must call it. ``None`` when the model is not sharded (it is then saved as it is)."""
    if not is_sharded(accelerator):
        return None
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    # Off the CPU the gathered weights go to host memory; on the CPU FSDP1's offload crashes (SIGSEGV, torch 2.13).
    options = StateDictOptions(full_state_dict=True, cpu_offload=accelerator.device.type != "cpu")
    state = get_model_state_dict(prepared, options=options)
    if not accelerator.is_main_process:
        return {}
    return _retie({_clean(k): v for k, v in state.items()}, unwrapped)


def _retie(state: dict[str, Any], unwrapped: Any) -> dict[str, Any]:
    """Tied weights (one parameter under two names, e.g. a causal LM's embeddings and output layer) as one tensor
    again: the gather copies each name apart, and ``save_pretrained`` keeps a tied weight once only when both
    names share a storage, so the folder holds exactly the base's tensor names."""
    first: dict[int, str] = {}
    for name, param in unwrapped.named_parameters(remove_duplicate=False):
        key = _clean(name)
        owner = first.setdefault(id(param), key)
        if owner != key and owner in state and key in state:
            state[key] = state[owner]
    return state


@contextmanager
def _full_params(accelerator: Any, prepared: Any) -> Iterator[None]:
    """FSDP1: the full parameters in place of the shards for the duration (read only); otherwise nothing."""
    if not is_sharded(accelerator) or accelerator.state.fsdp_plugin.fsdp_version != 1:
        yield
        return
    from torch.distributed.fsdp import FullyShardedDataParallel

    with FullyShardedDataParallel.summon_full_params(prepared, writeback=False):
        yield


def _full_copy(param: Any) -> Any:
    """A host-memory copy of a parameter's full value (an FSDP2 ``DTensor`` is gathered: a collective). Never the
    parameter itself: the digest reads it through numpy, and FSDP cannot free (resize) a storage numpy has seen
    ("Trying to resize storage that is not resizable"); an unsharded FSDP2 parameter is a plain tensor."""
    from torch.distributed.tensor import DTensor

    value = param.full_tensor() if isinstance(param, DTensor) else param.detach()
    return value.to("cpu", copy=True)


def _clean(name: str) -> str:
    """A parameter name without FSDP1's wrapper parts."""
    return name.replace(FSDP1_PREFIX, "")
