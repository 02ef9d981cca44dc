"""peft-debias: remove social bias from language models with shareable PEFT adapters and bias vectors.

The public API is imported lazily so that ``import peft_debias`` stays cheap and has no side effects.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "DebiasError": "peft_debias.errors",
    "BiasAxis": "peft_debias.axes",
    "get_axis": "peft_debias.axes",
    "list_axes": "peft_debias.axes",
    "register_axis": "peft_debias.axes",
    "load_axis_file": "peft_debias.axes",
    "counterfactuals": "peft_debias.cda",
    "swap": "peft_debias.cda",
    "build_cda_dataset": "peft_debias.corpora",
    "load_model": "peft_debias.models",
    "train_adapter": "peft_debias.train",
    "TrainConfig": "peft_debias.train",
    "METHODS": "peft_debias.methods",
    "ModelKind": "peft_debias.models",
    "BiasVector": "peft_debias.vector",
    "load_debias_adapter": "peft_debias.loader",
    "evaluate_bias": "peft_debias.eval",
    "publish_artifact": "peft_debias.publish",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'peft_debias' has no attribute {name!r}")
