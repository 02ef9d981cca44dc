"""``peft-debias experiment``: run a grid of debiasing runs with seeds and no-swap controls, then report.

``--config FILE.yaml`` (see ``recipes/experiments/``) describes the grid; the output folder is also the cache, so
running the same command again resumes an interrupted grid and never recomputes a finished cell.
"""

from __future__ import annotations

import argparse

from peft_debias.cli.options import at_least

HELP = "run a seeded grid of adapters / bias vectors with no-swap controls and write a statistical report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="FILE.yaml", help="experiment config (recipes/experiments)")
    parser.add_argument("--output", help="output folder, also the cache (default: config output or experiments/NAME)")
    parser.add_argument("--data-dir", help="data folder (default: config data_dir or $PEFT_DEBIAS_DATA)")
    parser.add_argument("--dry-run", action="store_true", help="list the cells and which are cached; run nothing")
    parser.add_argument("--report-only", action="store_true", help="run nothing; report the finished cells")
    parser.add_argument("--keep-biased", action="store_true", default=None, help="keep vector cells' biased models")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument(
        "--threads", type=at_least(int, 1), help="torch CPU threads (1 is steadier on a shared machine)"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] | mps: where cells run (not in ids)")
    parser.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16", "fp32", "bf16", "fp16"),
        help="every model's dtype (evaluation, training, biased); default: the config's, where auto means float32",
    )
    parser.add_argument(
        "--shard",
        metavar="K/N",
        help="compute only cells K, K+N, K+2N, ... of the grid (1-based), to split it over processes or machines "
        "sharing the output folder; the report covers every finished cell",
    )


def parse_shard(text: str) -> tuple[int, int]:
    """``"K/N"`` -> ``(K, N)`` with ``1 <= K <= N``."""
    from peft_debias.core.errors import DebiasError

    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts) or not 1 <= int(parts[0]) <= int(parts[1]):
        raise DebiasError(f"--shard {text!r} is not K/N with 1 <= K <= N", "write e.g. --shard 1/2 and --shard 2/2")
    return int(parts[0]), int(parts[1])


def run(args: argparse.Namespace) -> int:
    from peft_debias.core.errors import DebiasError
    from peft_debias.experiment import load_experiment_config, run_experiment
    from peft_debias.experiment.config import read_experiment_yaml

    if not getattr(args, "verbose", 0):  # a long run: show one line per cell even at the default verbosity
        import logging

        logging.getLogger("peft_debias.experiment").setLevel(logging.INFO)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    if args.dry_run and args.report_only:
        raise DebiasError("--dry-run and --report-only exclude each other", "pass one of them")
    data = read_experiment_yaml(args.config)
    if isinstance(data, dict) and "downstream" in data:
        return _run_downstream(data, args)
    config = load_experiment_config(args.config)
    result = run_experiment(
        config,
        args.output,
        data_dir=args.data_dir,
        dry_run=args.dry_run,
        report_only=args.report_only,
        progress=not args.no_progress,
        keep_biased=args.keep_biased,
        shard=parse_shard(args.shard) if args.shard else None,
        device=args.device,
        dtype=args.dtype,
    )
    if args.dry_run:
        cached = set(result.cached)
        for cell in result.cells:
            state = "cached" if cell.run_id in cached else "to run"
            print(f"{state:7} {cell.run_id}  {cell.kind} {cell.config} {cell.role} seed={cell.seed}")
        print(f"{len(result.cells)} cells, {len(cached)} cached -> {result.output}")
        return 0
    print(
        f"experiment {config.name}: {len(result.computed)} cells computed, {len(result.cached)} cached, "
        f"{len(result.missing)} missing -> {result.output}/report.md"
    )
    return 0


def _run_downstream(data: dict, args: argparse.Namespace) -> int:
    """A ``downstream:`` experiment (:mod:`peft_debias.experiment.downstream`)."""
    from pathlib import Path

    from peft_debias.core.errors import DebiasError
    from peft_debias.experiment.downstream import parse_downstream, run_downstream_grid

    if args.dry_run or args.keep_biased:
        raise DebiasError("--dry-run and --keep-biased are not for downstream experiments", "leave them out")
    grid = parse_downstream(data)
    output = Path(args.output or Path("experiments") / grid.name)
    summary = run_downstream_grid(
        grid,
        output,
        data_dir=args.data_dir,
        report_only=args.report_only,
        shard=parse_shard(args.shard) if args.shard else None,
    )
    done = sum(len(a["seeds"]) for a in summary["arms"].values())
    print(f"downstream experiment {grid.name}: {done} of {len(grid.runs())} runs finished -> {output}/report.md")
    return 0
