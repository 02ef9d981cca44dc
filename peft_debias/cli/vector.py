"""``peft-debias vector``: make a bias vector and subtract it, stream-merging a complete debiased model.

* no ``--lambda``: save the bias vector ``--biased - --base`` (a folder with ``bias_vector.json``);
* one ``--lambda``: write ``base - lambda * V`` as a model folder (or, for a LoRA vector with ``--as-adapter``,
  a negated PEFT adapter);
* several lambdas (``--lambda 0.25,0.5,1,2,4``) or several ``--combine`` methods: evaluate each point with the eval
  suite and write ``sweep.json``, ``sweep.md`` and ``sweep.png``.

``--biased`` is a biased model (folder, Hub id or ``bundled:`` alias), a saved bias vector or a LoRA adapter;
repeat it to combine several axes.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from peft_debias.cli.options import add_placement_arguments, at_least, bounded, field_type, placement_from_args
from peft_debias.core.errors import DebiasError
from peft_debias.eval.benchmarks import EvalConfig

HELP = "subtract a bias vector (biased model - base) from a base model, streamed; or sweep lambda"
logger = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base", required=True, help="the pre-trained model: folder, Hub id or bundled alias")
    parser.add_argument(
        "--biased",
        required=True,
        action="append",
        help="biased model, saved bias vector or LoRA adapter (repeat to combine axes)",
    )
    parser.add_argument("--lambda", dest="lambdas", help="strength, or a comma list to sweep (omit: save the vector)")
    parser.add_argument("--output", required=True, help="output folder")
    parser.add_argument(
        "--base-model-id",
        metavar="ORG/NAME",
        help="Hub id of --base, recorded in the output (default: from --base; a local folder needs it)",
    )
    parser.add_argument("--axis", action="append", help="axis label of each --biased (default: from its metadata)")
    parser.add_argument(
        "--exclude",
        action="append",
        default=[],
        help="tensors left out: preset (layernorm, embeddings, biases) or regex; adds to the default layernorm",
    )
    parser.add_argument("--no-default-exclude", action="store_true", help="do not leave LayerNorm out")
    parser.add_argument(
        "--combine", default="sum", help="sum | projection | ties | dare_linear | dare_ties (comma list to compare)"
    )
    parser.add_argument("--weights", help="comma list of weights, one per --biased (default 1 each)")
    parser.add_argument("--density", type=bounded(float, 0.0, 1.0), default=0.5, help="TIES/DARE density (default 0.5)")
    parser.add_argument("--majority-sign", default="total", choices=["total", "frequency"])
    parser.add_argument("--seed", type=at_least(int, 0), default=0, help="DARE seed")
    parser.add_argument("--as-adapter", action="store_true", help="write a negated LoRA adapter instead of a model")
    parser.add_argument("--shard-size", default="2GB", help="output shard size (default 2GB)")
    parser.add_argument("--allow-pickle", action="store_true", help="also read .bin/.pt pickle checkpoints")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    sweep = parser.add_argument_group("lambda sweep")
    sweep.add_argument("--benchmarks", default="crows,stereoset,perplexity", help="eval benchmarks per point")
    sweep.add_argument("--eval-axes", help="axes to evaluate (default: the vectors' axes)")
    sweep.add_argument("--data-dir", help="data folder (default $PEFT_DEBIAS_DATA)")
    sweep.add_argument(
        "--ppl-threshold", type=at_least(float, 0.0), default=0.10, help="allowed perplexity increase (default 0.10)"
    )
    sweep.add_argument("--ppl-file", help="perplexity text (default: the eval suite's)")
    sweep.add_argument(
        "--ppl-max-tokens", type=field_type(EvalConfig, "ppl_max_tokens"), help="tokens scored for perplexity"
    )
    sweep.add_argument(
        "--n-bootstrap",
        type=field_type(EvalConfig, "n_bootstrap"),
        default=1000,
        help="bootstrap resamples for intervals",
    )
    sweep.add_argument("--batch-size", type=field_type(EvalConfig, "batch_size"), default=32, help="eval batch size")
    sweep.add_argument(
        "--split", choices=["select", "report"], help="score one half of the CrowS/StereoSet items (choose on select)"
    )
    add_placement_arguments(sweep, device_map=False)  # the model the sweep changes in place and evaluates; a
    # written model keeps the base checkpoint's dtype


def _floats(text: str | None, what: str) -> list[float] | None:
    """A comma list of finite numbers (``--lambda``, ``--weights``); None when the option is absent."""
    from peft_debias.vector.meta import check_scalar
    from peft_debias.vector.sweep import parse_lambdas

    if text is None:
        return None
    if what == "lambda":
        return parse_lambdas(text)
    values = []
    for part in text.split(","):
        try:
            values.append(check_scalar(float(part), what))
        except ValueError:
            raise DebiasError(f"{what} {part.strip()!r} is not a number", "pass e.g. --weights 1,0.5") from None
    return values


def load_source(item: str, base: Any, axis: str | None, exclude: list[str], allow_pickle: bool):
    """A bias vector from a saved vector folder, a LoRA adapter, or a biased model (minus ``base``)."""
    from peft_debias.vector.bias_vector import BiasVector
    from peft_debias.vector.folders import MODEL_PATTERNS, resolve_folder
    from peft_debias.vector.meta import VECTOR_JSON, read_json

    folder = resolve_folder(item, patterns=[*MODEL_PATTERNS, "README.md"])
    if (folder / VECTOR_JSON).is_file():
        vector = BiasVector.load(folder)
        vector.meta.axis = axis or vector.meta.axis
        return vector
    if (folder / "adapter_config.json").is_file() and not (folder / "config.json").is_file():
        return BiasVector.from_adapter(folder, axis=axis, exclude=exclude, allow_pickle=allow_pickle)
    sidecar = read_json(folder / "debias_config.json") or {}
    return BiasVector.from_models(
        base, item, axis=axis or sidecar.get("axis"), exclude=exclude, allow_pickle=allow_pickle
    )


def run(args: argparse.Namespace) -> int:
    from peft_debias.core.atomic import check_destination, check_not_input
    from peft_debias.models.placement import resolve_device
    from peft_debias.vector.combine import COMBINE_METHODS, combine
    from peft_debias.vector.meta import open_checkpoint, set_base_model_id
    from peft_debias.vector.terms import DEFAULT_EXCLUDE

    lambdas = _floats(args.lambdas, "lambda")
    weights = _floats(args.weights, "weight")
    methods = [m.strip() for m in args.combine.split(",") if m.strip()]
    for method in methods:
        if method not in COMBINE_METHODS:
            raise DebiasError(f"unknown combination {method!r}", f"use one of {', '.join(COMBINE_METHODS)}")
    axes = args.axis or []
    if axes and len(axes) not in (1, len(args.biased)):
        raise DebiasError(f"{len(axes)} --axis for {len(args.biased)} --biased", "give one --axis per --biased")
    check_destination(args.output, overwrite=args.overwrite)
    check_not_input(args.output, [args.base, *args.biased])
    resolve_device(placement_from_args(args).device)  # the sweep's model; refused before any work
    if args.base_model_id is not None:
        from peft_debias.models.base_ids import check_base_model_id

        check_base_model_id(args.base_model_id)
    exclude = ([] if args.no_default_exclude else list(DEFAULT_EXCLUDE)) + list(args.exclude)
    base = open_checkpoint(args.base, args.allow_pickle)
    vectors = [
        load_source(item, base, axes[min(i, len(axes) - 1)] if axes else None, exclude, args.allow_pickle)
        for i, item in enumerate(args.biased)
    ]

    def combined(method: str):
        vector = combine(
            vectors, method, weights=weights, density=args.density, majority_sign=args.majority_sign, seed=args.seed
        )
        set_base_model_id(vector.meta.base, args.base_model_id)
        return vector

    progress = not args.no_progress
    if lambdas is None:
        vector = combined(methods[0])
        vector.save(args.output, overwrite=args.overwrite, shard_size=args.shard_size, progress=progress)
        print(
            f"saved bias vector ({vector.meta.axis}): {len(vector)} tensors, {vector.num_params:,} params "
            f"-> {args.output}"
        )
        return 0
    if len(lambdas) == 1 and len(methods) == 1:
        vector, lam = combined(methods[0]), lambdas[0]
        if args.as_adapter:
            vector.to_adapter(args.output, -lam, overwrite=args.overwrite)
            print(f"wrote the negated LoRA adapter (lambda {lam:g}) -> {args.output}")
            return 0
        result = vector.apply_to(
            base,
            scale=-lam,
            output=args.output,
            shard_size=args.shard_size,
            overwrite=args.overwrite,
            progress=progress,
            info={"combine": methods[0] if len(vectors) > 1 else None},
            base_model_id=args.base_model_id,
        )
        print(
            f"debiased (lambda {lam:g}): {result.changed} of {result.tensors} tensors changed, "
            f"{len(result.files)} files, {result.seconds:.1f} s -> {result.output}"
        )
        return 0
    if args.as_adapter:
        raise DebiasError("--as-adapter writes one adapter", "pass a single --lambda")
    return _sweep(args, base, vectors, methods, lambdas, combined)


def _sweep(args, base, vectors, methods, lambdas, combined) -> int:
    from dataclasses import asdict

    from peft_debias.models.loading import load_model
    from peft_debias.vector.sweep import SweepConfig, evaluate_with_suite, lambda_sweep, sweep_table, write_sweep

    if len(vectors) == 1:
        labelled = {vectors[0].meta.axis or "vector": vectors[0]}
    else:
        labelled = {method: combined(method) for method in methods}
    axes = (
        args.eval_axes
        or ",".join(
            dict.fromkeys(
                a for v in vectors for a in (v.meta.axis or "").split("+") if a in ("gender", "race", "religion")
            )
        )
        or None
    )
    options: dict[str, Any] = {
        "benchmarks": args.benchmarks,
        "axes": axes,
        "data_dir": args.data_dir,
        "n_bootstrap": args.n_bootstrap,
        "batch_size": args.batch_size,
        "split": args.split,
    }
    options.update({k: v for k, v in (("ppl_file", args.ppl_file), ("ppl_max_tokens", args.ppl_max_tokens)) if v})
    loaded = load_model(args.base, allow_pickle=args.allow_pickle, **asdict(placement_from_args(args)))
    sweep = lambda_sweep(
        loaded.model,
        loaded.tokenizer,
        labelled,
        evaluate_with_suite(**options),
        SweepConfig(lambdas=lambdas, ppl_threshold=args.ppl_threshold),
    )
    write_sweep(sweep, args.output, overwrite=args.overwrite)
    print(sweep_table(sweep), end="")
    print(f"-> {args.output}/sweep.json, sweep.md, sweep.png")
    return 0
