"""``peft-debias biased``: train a deliberately biased model (or LoRA adapter) for a bias vector.

Every :class:`~peft_debias.biased.BiasedConfig` field is an option (``max_steps`` -> ``--max-steps``).
"""

from __future__ import annotations

import argparse
import types
import typing
from dataclasses import MISSING, fields
from typing import Any

from ..biased import BiasedConfig

HELP = "train a biased model on stereotyped text (StereoSet stereotypes by default), step one of a bias vector"
_HIDDEN = {"progress"}


def _base_type(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint


def add_arguments(parser: argparse.ArgumentParser) -> None:
    hints = typing.get_type_hints(BiasedConfig)
    for f in fields(BiasedConfig):
        if f.name in _HIDDEN:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _base_type(hints[f.name])
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "") + (f" (default: {default})" if default not in (None, [], "") else "")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif typing.get_origin(kind) is list:
            parser.add_argument(flag, action="append", default=argparse.SUPPRESS, help=help_text + " (repeatable)")
        else:
            parser.add_argument(flag, type=kind, default=argparse.SUPPRESS, help=help_text)
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", default=argparse.SUPPRESS, help="no progress bar"
    )


def run(args: argparse.Namespace) -> int:
    from ..biased import train_biased

    names = {f.name for f in fields(BiasedConfig)}
    config = BiasedConfig(**{k: v for k, v in vars(args).items() if k in names})
    result = train_biased(config)
    held_out = "n/a" if result.eval_loss is None else f"{result.eval_loss:.4f}"
    loss = "n/a" if result.train_loss is None else f"{result.train_loss:.4f}"
    print(
        f"trained a biased {config.method} model on {result.sentences} {config.axis} sentences: {result.steps} steps, "
        f"loss {loss}, held-out {held_out}, {result.seconds:.1f} s -> {result.output}"
    )
    return 0
