"""``peft-debias merge``: merge LoRA / IA3 debiasing adapters into a base model and save a plain model folder.

The output holds ``config.json``, safetensors weights and the tokenizer (loadable with ``AutoModel*.from_pretrained``,
no peft needed) and a ``debias_config.json`` (artifact ``merged_model``) recording the base, the adapters in merge
order with their own ``debias_config.json`` and the library versions. It is written atomically; an existing output
is refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import warnings
from collections.abc import Iterator

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
    parser.add_argument("--adapter-revision", help="Hub revision of the adapters")
    parser.add_argument(
        "--allow-base-mismatch",
        action="store_true",
        help="merge even if an adapter records another base model (fingerprint or id)",
    )
    parser.add_argument("--allow-pickle", action="store_true", help="accept pickle (.bin) weights")
    parser.add_argument("--trust-remote-code", action="store_true", help="run code shipped with the base model")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")


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
    from ..artifact import DEBIAS_CONFIG, FORMAT_VERSION, sha256_files, timestamp, versions, write_json
    from ..atomic import atomic_output, check_destination
    from ..loader import check_mergeable, load_debias_adapter
    from ..loader_checks import SAFETENSORS_FILE, backbone_fingerprint, read_adapter
    from ..models import load_model, weights_fingerprint

    check_destination(args.output, overwrite=args.overwrite)
    adapters = [read_adapter(a, args.adapter_revision, allow_pickle=args.allow_pickle) for a in args.adapter]
    for adapter in adapters:  # before the (possibly large) base model is loaded
        check_mergeable(adapter)
    loaded = load_model(
        args.base,
        args.kind,
        revision=args.revision,
        allow_pickle=args.allow_pickle,
        trust_remote_code=args.trust_remote_code,
    )
    base = {
        "name": args.base,
        "path": loaded.path,
        "revision": args.revision,
        "kind": loaded.kind.value,
        "model_type": getattr(loaded.model.config, "model_type", None),
        "weights_fingerprint": weights_fingerprint(loaded.model),
        "backbone_fingerprint": backbone_fingerprint(loaded.model),
    }
    merged = load_debias_adapter(loaded.model, adapters, mode="merge", allow_base_mismatch=args.allow_base_mismatch)
    axes = [a.axis or "unknown" for a in adapters]
    info = {
        "format_version": FORMAT_VERSION,
        "artifact": "merged_model",
        "axis": "+".join(axes),
        "axes": axes,
        "base_model": base,
        "adapters": [
            {
                "source": a.source,
                "revision": a.revision,
                "axis": a.axis,
                "method": a.method,
                "peft_type": a.peft_type,
                "weights_sha256": sha256_files([a.path / SAFETENSORS_FILE])
                if (a.path / SAFETENSORS_FILE).is_file()
                else None,
                "debias_config": a.debias,
            }
            for a in adapters
        ],
        "merged": {
            "weights_fingerprint": weights_fingerprint(merged),
            "backbone_fingerprint": backbone_fingerprint(merged),
        },
        "versions": versions(),
        "created": timestamp(),
    }
    with atomic_output(args.output, overwrite=args.overwrite, directory=True) as tmp:
        merged.save_pretrained(str(tmp))
        loaded.tokenizer.save_pretrained(str(tmp))
        write_json(tmp / DEBIAS_CONFIG, info)
    print(f"merged {len(adapters)} adapter(s) ({', '.join(axes)}) into {args.base} -> {args.output}")
    return 0
