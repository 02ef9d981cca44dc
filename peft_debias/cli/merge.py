"""``peft-debias merge``: merge LoRA / IA3 debiasing adapters into a base model and save a plain model folder.

The work is :func:`peft_debias.loader.merge.merge_to_folder`: a plain model folder (no peft needed to load it) with a
``debias_config.json`` recording the base and the adapters; written atomically, an existing output refused unless
``--overwrite``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import warnings
from collections.abc import Iterator

from peft_debias.cli.options import add_placement_arguments

HELP = "merge LoRA/IA3 debiasing adapters into a base model and save the plain merged model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="base model: Hub id, local folder or bundled alias")
    parser.add_argument(
        "--adapter",
        required=True,
        action="append",
        help="adapter folder or Hub repo id; repeat for several axes (merged in the order given)",
    )
    parser.add_argument("--output", required=True, help="output model folder")
    parser.add_argument(
        "--kind",
        choices=["masked_lm", "causal_lm", "encoder"],
        help="head to load and save the base with (default: the base's own architecture)",
    )
    parser.add_argument("--revision", help="Hub revision of the base model")
    parser.add_argument(
        "--base-model-id",
        metavar="ORG/NAME",
        help="Hub id of the base, recorded in the output (default: from --base; a local folder needs it)",
    )
    parser.add_argument("--adapter-revision", help="Hub revision of the adapters")
    parser.add_argument(
        "--allow-base-mismatch",
        action="store_true",
        help="merge even if an adapter records another base model (fingerprint or id)",
    )
    parser.add_argument("--allow-pickle", action="store_true", help="accept pickle (.bin) weights")
    parser.add_argument("--trust-remote-code", action="store_true", help="run code shipped with the base model")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    add_placement_arguments(parser, device_map=False)  # the merged model is saved in --dtype


@contextlib.contextmanager
def _quiet(verbose: int) -> Iterator[None]:
    """Without -v, keep stderr for warnings and the one-line error: no INFO logs, progress bars or deprecations."""
    if verbose:
        yield
        return
    import transformers

    ours = logging.getLogger("peft_debias")
    level, bars = ours.level, transformers.utils.logging.is_progress_bar_enabled()
    ours.setLevel(logging.WARNING)
    transformers.utils.logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            yield
    finally:
        ours.setLevel(level)
        if bars:
            transformers.utils.logging.enable_progress_bar()


def run(args: argparse.Namespace) -> int:
    with _quiet(getattr(args, "verbose", 0)):
        return _merge(args)


def _merge(args: argparse.Namespace) -> int:
    from peft_debias.loader.merge import merge_to_folder

    info = merge_to_folder(
        args.base,
        args.adapter,
        args.output,
        kind=args.kind,
        revision=args.revision,
        base_model_id=args.base_model_id,
        adapter_revision=args.adapter_revision,
        allow_base_mismatch=args.allow_base_mismatch,
        allow_pickle=args.allow_pickle,
        trust_remote_code=args.trust_remote_code,
        overwrite=args.overwrite,
        device=args.device,
        dtype=args.dtype,
    )
    axes = info["axes"]
    print(f"merged {len(axes)} adapter(s) ({', '.join(axes)}) into {args.base} -> {args.output}")
    return 0
