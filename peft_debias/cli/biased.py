"""``peft-debias biased``: train a deliberately biased model (or LoRA adapter) for a bias vector.

Every :class:`~peft_debias.train.biased.BiasedConfig` field is an option (``max_steps`` -> ``--max-steps``).
"""

from __future__ import annotations

import argparse
import os
from dataclasses import fields

from peft_debias.cli.options import add_dataclass_arguments
from peft_debias.train.biased import BiasedConfig

HELP = "train a biased model on stereotyped text (StereoSet stereotypes by default), step one of a bias vector"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, BiasedConfig)


def run(args: argparse.Namespace) -> int:
    from peft_debias.train.biased import train_biased

    names = {f.name for f in fields(BiasedConfig)}
    config = BiasedConfig(**{k: v for k, v in vars(args).items() if k in names})
    result = train_biased(config)
    if len(set(result.rank_fingerprints)) > 1:
        raise RuntimeError(f"ranks ended with different weights: {result.rank_fingerprints}")
    if int(os.environ.get("RANK", "0")) != 0:  # one report, from the main process
        return 0
    held_out = "n/a" if result.eval_loss is None else f"{result.eval_loss:.4f}"
    loss = "n/a" if result.train_loss is None else f"{result.train_loss:.4f}"
    print(
        f"trained a biased {config.method} model on {result.sentences} {config.axis} sentences: {result.steps} steps, "
        f"loss {loss}, held-out {held_out}, {result.seconds:.1f} s -> {result.output}"
    )
    return 0
