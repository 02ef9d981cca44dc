"""``peft-debias demo``: the main job on the bundled models, offline (see :mod:`peft_debias.demo.run`).

Every :class:`~peft_debias.demo.run.DemoConfig` field is an option (``lora_steps`` -> ``--lora-steps``);
``--lambdas 0.5,1`` takes a comma list.
"""

from __future__ import annotations

import argparse
from dataclasses import fields

from peft_debias.cli.options import add_dataclass_arguments, at_least

HELP = "run the main job on the bundled models: measure bias, train adapters, bias vector, report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from peft_debias.demo.run import DemoConfig

    add_dataclass_arguments(parser, DemoConfig, hidden=("progress", "lambdas"))
    parser.add_argument("--lambdas", default=argparse.SUPPRESS, help="bias-vector lambdas, e.g. 0.5,1")
    parser.add_argument("--threads", type=at_least(int, 1), default=argparse.SUPPRESS, help="torch CPU threads")


def run(args: argparse.Namespace) -> int:
    from peft_debias.demo.run import DemoConfig, run_demo

    values = {f.name: getattr(args, f.name) for f in fields(DemoConfig) if hasattr(args, f.name)}
    if "lambdas" in values:
        from peft_debias.vector.sweep import parse_lambdas

        values["lambdas"] = parse_lambdas(values["lambdas"])
    if getattr(args, "threads", None):
        import torch

        torch.set_num_threads(args.threads)
    summary = run_demo(DemoConfig(**values), on_stage=lambda line: print(line, flush=True))
    print(f"demo finished in {summary['seconds']:.0f} s: report {values.get('output', 'demo_output')}/report.md")
    return 0
