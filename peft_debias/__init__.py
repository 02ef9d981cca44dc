"""peft-debias: remove social bias from language models with shareable PEFT adapters and bias vectors.

The public API is imported lazily so that ``import peft_debias`` stays cheap and has no side effects.
"""

from __future__ import annotations

import importlib
from typing import Any

from peft_debias.core.version import __version__

_EXPORTS = {
    "DebiasError": "peft_debias.core.errors",
    "BiasAxis": "peft_debias.cda.axes",
    "get_axis": "peft_debias.cda.axes",
    "list_axes": "peft_debias.cda.axes",
    "register_axis": "peft_debias.cda.axes",
    "load_axis_file": "peft_debias.cda.axes",
    "counterfactuals": "peft_debias.cda.swapping",
    "swap": "peft_debias.cda.swapping",
    "build_cda_dataset": "peft_debias.cda.dataset",
    "load_model": "peft_debias.models.loading",
    "Placement": "peft_debias.models.placement",
    "resolve_placement": "peft_debias.models.placement",
    "train_adapter": "peft_debias.train.adapter",
    "TrainConfig": "peft_debias.train.config",
    "METHODS": "peft_debias.models.methods",
    "ModelKind": "peft_debias.models.loading",
    "BiasVector": "peft_debias.vector.bias_vector",
    "load_debias_adapter": "peft_debias.loader.attach",
    "load_downstream": "peft_debias.loader.reload",
    "evaluate_bias": "peft_debias.eval",
    "publish_artifact": "peft_debias.hub.publish",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'peft_debias' has no attribute {name!r}")
