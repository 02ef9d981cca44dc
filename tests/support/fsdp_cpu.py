"""``peft-debias ARGS`` with accelerate put on its FSDP path although the ranks are on the CPU (tests only).

accelerate 1.16 never shards on the CPU: with ``ACCELERATE_USE_CPU`` it drops the FSDP plugin of an FSDP launch and
wraps the model in DDP (and the loop refuses that launch). torch itself shards on the CPU over gloo (FSDP1 and FSDP2).
This script sets accelerate's private state back to FSDP right after ``Accelerator()`` so that ``prepare`` shards the
model, to exercise the loop's sharded path (gathered weights digest, gathered state dict saved by the main process)
without GPUs. It is a test harness, not a way to train: run it under ``accelerate launch --config_file <FSDP config>``
with ``ACCELERATE_USE_CPU=true``.
"""

from __future__ import annotations

import sys
from typing import Any

import accelerate
import torch
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

_init = accelerate.Accelerator.__init__


def _sharded_init(self: Any, *args: Any, **kwargs: Any) -> None:
    """``Accelerator.__init__``, then the FSDP plugin (from the launcher's ``FSDP_*`` variables) put back."""
    _init(self, *args, **kwargs)
    plugin = FullyShardedDataParallelPlugin()
    state = self.state
    state.fsdp_plugin = plugin
    state.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    if plugin.fsdp_version == 1:  # FSDP1 takes device_id cpu:0 for a different device than its compute device cpu
        state.device = PartialState._shared_state["device"] = torch.device("cpu")


def main() -> int:
    accelerate.Accelerator.__init__ = _sharded_init
    from peft_debias.cli.main import main as cli

    return cli(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
