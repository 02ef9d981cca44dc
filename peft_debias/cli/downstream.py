"""``peft-debias downstream``: fine-tune a classifier with frozen debiasing adapters and measure downstream fairness.

The work is :func:`peft_debias.downstream.run.run_downstream`; the options are the fields of
:class:`~peft_debias.downstream.config.DownstreamConfig`. Runs under ``accelerate launch -m peft_debias downstream``
too (one output, written by the main process).
"""

from __future__ import annotations

import argparse
import logging

from peft_debias.cli.options import add_dataclass_arguments

HELP = "fine-tune a classifier with frozen debiasing adapters on a task (WinoBias, CSV) and report its fairness"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from peft_debias.downstream.config import DownstreamConfig

    add_dataclass_arguments(parser, DownstreamConfig, hidden=())


def run(args: argparse.Namespace) -> int:
    from peft_debias.downstream.config import DownstreamConfig
    from peft_debias.downstream.run import run_downstream

    values = {k: v for k, v in vars(args).items() if k not in ("command", "run", "debug", "verbose")}
    if not args.verbose:
        import transformers

        transformers.utils.logging.set_verbosity_error()  # the new head's "newly initialized" notice
        logging.getLogger("peft_debias").setLevel(logging.WARNING)
    result = run_downstream(DownstreamConfig.from_mapping(values))
    if result is not None:
        shown = [
            f"{k} {result[k]:.2f}"
            for k in ("accuracy", "accuracy_pro", "accuracy_anti", "gap", "tpr_gap")
            if k in result
        ]
        print(f"{', '.join(shown)} (n_train {result['n_train']}, n_test {result['n_test']}) -> {args.output}")
    return 0
