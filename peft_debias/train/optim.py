"""The optimizers a run can use, by the names transformers' ``Trainer`` gives them (``--optimizer``).

* ``adamw``: ``torch.optim.AdamW`` (two float32-or-weight-dtype moments per weight: twice the weights' memory).
* ``adamw_8bit``: bitsandbytes' 8-bit AdamW (moments quantised blockwise to 8 bits: about half the weights' memory
  for float32 weights, a quarter of AdamW's state), on the GPU and, since bitsandbytes 0.45, on the CPU.
* ``paged_adamw_8bit``: the same with its state in paged (unified) memory, which the GPU driver moves to the host
  under memory pressure; on the CPU bitsandbytes runs it unpaged (it says so).

bitsandbytes is optional: ``pip install 'peft-debias[bnb]'``. Its optimizers keep 32-bit state for tensors under
4,096 elements.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable
from typing import Any

from peft_debias.core.errors import DebiasError

OPTIMIZERS = ("adamw", "adamw_8bit", "paged_adamw_8bit")
_BNB = {"adamw_8bit": "AdamW8bit", "paged_adamw_8bit": "PagedAdamW8bit"}


def check_optimizer(name: str) -> None:
    """Refuse an unknown optimizer name, and an 8-bit one when bitsandbytes is not installed (before any work)."""
    if name not in OPTIMIZERS:
        raise DebiasError(f"unknown optimizer {name!r}", f"use one of {', '.join(OPTIMIZERS)}")
    if name in _BNB and importlib.util.find_spec("bitsandbytes") is None:
        raise DebiasError(
            f"--optimizer {name} needs bitsandbytes, which is not installed",
            "pip install 'peft-debias[bnb]' (bitsandbytes), or use --optimizer adamw",
        )


def quiet_bitsandbytes() -> None:
    """Silence the warning bitsandbytes logs at import on a CPU without its 4-bit matmul kernels (``kernels`` not
    installed): no 8-bit optimizer uses them, and peft imports bitsandbytes whenever it is installed."""
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)


def make_optimizer(name: str, params: Iterable[Any], lr: float, weight_decay: float) -> Any:
    """The optimizer ``name`` (see :data:`OPTIMIZERS`) over ``params``."""
    check_optimizer(name)
    params = list(params)
    if name == "adamw":
        import torch

        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    quiet_bitsandbytes()
    import bitsandbytes

    return getattr(bitsandbytes.optim, _BNB[name])(params, lr=lr, weight_decay=weight_decay)
