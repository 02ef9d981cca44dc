"""``peft-debias eval``: bias benchmarks and LM quality of a model (+ adapters); reports, comparisons, charts.

Three modes:

* evaluate: ``--model MODEL [--adapter DIR ...] [--benchmarks ...] [--axes ...] [--output results.json]
  [--report report.md] [--compare other.json]``;
* re-report / compare saved files: ``--results results.json [--compare other.json] [--report report.md]
  [--output merged.json]``;
* chart: ``--plot a.json b.json ... --output chart.png [--labels A,B] [--report table.md]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from peft_debias.cli.options import add_placement_arguments, at_least, field_type, placement_from_args
from peft_debias.eval.benchmarks import EvalConfig
from peft_debias.eval.protocols import PROTOCOLS

THREADS_HELP = (
    "CPU threads of torch and of numpy's BLAS (default: available CPUs minus one, at least 1: on a 2-core machine "
    "one thread is faster than two)"
)
BATCH_HELP = "most sentences per forward (default 32; SEAT 64); --max-batch-tokens bounds their padded size"
HELP = "evaluate bias (SEAT, CrowS-Pairs, StereoSet) and LM quality; compare runs; plot result files"


def bounds(name: str):
    """The ``type=`` of an :class:`EvalConfig` number: its bounds are checked while parsing."""
    return field_type(EvalConfig, name)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    mode = parser.add_argument_group("what to do (exactly one)")
    mode.add_argument("--model", help="model: Hub id, local folder, or bundled:minilm / bundled:smollm2")
    mode.add_argument("--results", metavar="FILE", help="use a saved results file instead of evaluating")
    mode.add_argument("--plot", nargs="+", metavar="FILE", help="draw a PNG chart comparing results files (--output)")
    what = parser.add_argument_group("evaluation")
    what.add_argument("--kind", choices=["masked_lm", "causal_lm", "encoder"], help="override the detected model kind")
    what.add_argument(
        "--adapter", action="append", default=[], metavar="PATH_OR_REPO", help="PEFT adapter to attach (repeatable)"
    )
    what.add_argument(
        "--benchmarks",
        help="comma list of seat, crows, stereoset, perplexity (default: all the "
        "model kind supports; an encoder gets seat)",
    )
    what.add_argument(
        "--allow-base-mismatch",
        action="store_true",
        help="evaluate even if an adapter records another base model (fingerprint or id)",
    )
    what.add_argument("--axes", help="comma list of gender, race, religion (default: all)")
    what.add_argument("--data-dir", help="data folder (default: $PEFT_DEBIAS_DATA; else the Hub, not for SEAT)")
    what.add_argument("--seat-tests", default="all", help="'all' (every file in seat/), 'axes', or a comma list")
    what.add_argument(
        "--n-samples", type=bounds("n_samples"), default=100_000, help="SEAT permutation samples (default 100000)"
    )
    what.add_argument(
        "--n-bootstrap", type=bounds("n_bootstrap"), default=10_000, help="bootstrap resamples (default 10000; 0: none)"
    )
    what.add_argument("--seed", type=bounds("seed"), default=0, help="seed of the permutation tests and bootstraps")
    what.add_argument("--batch-size", type=bounds("batch_size"), default=32, help=BATCH_HELP)
    _add_protocol_arguments(what)
    what.add_argument("--seat-dir", help="SEAT folder (default <data>/seat)")
    what.add_argument("--crows-file", help="CrowS-Pairs CSV (default <data>/crows_pairs/crows_pairs_anonymized.csv)")
    what.add_argument("--stereoset-file", help="StereoSet dev.json or flattened JSONL (default under <data>/stereoset)")
    what.add_argument("--ppl-file", help="text for perplexity (default <data>/wikitext2/wiki.test.raw)")
    what.add_argument(
        "--ppl-max-tokens", type=bounds("ppl_max_tokens"), help="tokens scored (default: causal 20000, masked 2000)"
    )
    what.add_argument(
        "--ppl-window", type=bounds("ppl_window"), help="window in tokens (default: causal 1024, masked 128)"
    )
    what.add_argument("--ppl-stride", type=bounds("ppl_stride"), help="causal window stride (default: window / 2)")
    what.add_argument(
        "--split",
        choices=["select", "report"],
        help="score only this half of the CrowS/StereoSet items (tune on 'select', report 'report')",
    )
    what.add_argument("--split-seed", type=bounds("split_seed"), default=0, help="seed of the item split (default 0)")
    what.add_argument("--threads", type=at_least(int, 1), help=THREADS_HELP)
    what.add_argument("--no-progress", action="store_true", help="no progress bars")
    _add_speed_arguments(what)
    out = parser.add_argument_group("outputs")
    out.add_argument("--output", help="results JSON (evaluate / --results) or chart PNG (--plot)")
    out.add_argument("--report", help="markdown report")
    out.add_argument("--compare", metavar="OTHER_JSON", help="paired comparison with another results file")
    out.add_argument("--label", help="name of this run in reports and charts")
    out.add_argument("--labels", help="--plot: comma list of names, one per file")
    out.add_argument("--overwrite", action="store_true", help="replace existing outputs")


def _add_protocol_arguments(group: argparse._ArgumentGroup) -> None:
    """``--protocol`` and the default protocol's single switches."""
    group.add_argument(
        "--protocol",
        choices=list(PROTOCOLS),
        default="default",
        help="scoring protocol: 'default' (this package's definitions), 'bias-bench' (its code, exactly) or "
        "'lm-eval' (lm-evaluation-harness's crows_pairs: summed log-likelihood; causal LMs, crows and stereoset); "
        "recorded in the results",
    )
    group.add_argument(
        "--causal-bos",
        choices=["context", "separate"],
        help="default protocol only: causal first token scored after BOS in one forward ('context', the default) "
        "or from a BOS-only forward ('separate')",
    )
    group.add_argument(
        "--crows-mlm-tokens",
        choices=["shared", "diff"],
        help="default protocol only: CrowS masked scoring on the shared tokens ('shared', the default) or on the "
        "differing ones ('diff', as bias-bench)",
    )
    group.add_argument(
        "--mlm-filler-mean",
        choices=["logprob", "prob"],
        help="default protocol only: StereoSet masked filler score, mean log-prob ('logprob', the default) or mean "
        "probability ('prob', as bias-bench)",
    )


def _add_speed_arguments(what: argparse._ArgumentGroup) -> None:
    """Batching and precision options (the last of the evaluation group)."""
    what.add_argument(
        "--max-batch-tokens",
        type=bounds("max_batch_tokens"),
        help="padded tokens per forward: length-sorted batches stay under it, --batch-size caps their rows "
        "(default: encoding 2048, LM-head scoring 1024)",
    )
    add_placement_arguments(what)  # --device, --dtype, --device-map, --max-memory, --offload-folder
    what.add_argument(
        "--fidelity",
        action="store_true",
        help="with --dtype bfloat16/float16: evaluate again in float32 and report how many decisions differ",
    )


def _check_args(args: argparse.Namespace) -> str:
    from peft_debias.core.atomic import check_destination
    from peft_debias.core.errors import DebiasError

    modes = [m for m in ("model", "results", "plot") if getattr(args, m)]
    if len(modes) != 1:
        raise DebiasError(
            "pass exactly one of --model, --results or --plot" + (f" (got {', '.join(modes)})" if modes else ""),
            "see 'peft-debias eval --help'",
        )
    outputs = [p for p in (args.output, args.report) if p]
    if len(set(outputs)) != len(outputs):
        raise DebiasError("--output and --report name the same file", "choose two different paths")
    if modes[0] == "plot":
        if not args.output or not args.output.lower().endswith(".png"):
            raise DebiasError("--plot needs --output CHART.png", "pass --output with a .png path")
        if args.compare or args.adapter:
            raise DebiasError("--plot takes only result files, --labels, --output and --report", "drop other options")
    elif args.output and args.output.lower().endswith(".png"):
        raise DebiasError(f"--output {args.output} is a PNG path", "results are JSON; charts come from --plot")
    for path in outputs:
        check_destination(path, overwrite=args.overwrite)
    return modes[0]


def _print_summary(results: dict) -> None:
    from peft_debias.eval.report import text_summary

    for line in text_summary(results):
        print(line)


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from peft_debias.eval.report import chart_figure, markdown_report
    from peft_debias.eval.results import compare_results, load_results, results_text

    mode = _check_args(args)
    if mode == "plot":
        runs = [load_results(p) for p in args.plot]
        labels = [s.strip() for s in args.labels.split(",")] if args.labels else None
        chart = chart_figure(runs, labels=labels)
        if labels:
            runs = [{**r, "label": lab} for r, lab in zip(runs, labels, strict=False)]
        report = markdown_report(runs) if args.report else None
        _write_outputs(args, [(args.output, chart.save), (args.report, _text_writer(report))])
        print(f"chart of {len(runs)} result files -> {args.output}")
        return 0
    if mode == "results":
        results = load_results(args.results)
        if args.label:
            results["label"] = args.label
        if args.compare:
            results["compare"] = compare_results(results, load_results(args.compare))
    else:
        from peft_debias.core.heap import map_large_allocations
        from peft_debias.eval.benchmarks import EvalConfig
        from peft_debias.eval.runner import evaluate_bias
        from peft_debias.eval.threads import use_threads

        use_threads(args.threads)
        map_large_allocations()  # a model's activations are freed back to the OS, not left as heap fragments
        config = EvalConfig(
            seat_tests=args.seat_tests if args.seat_tests in ("all", "axes") else args.seat_tests.split(","),
            n_samples=args.n_samples,
            n_bootstrap=args.n_bootstrap,
            seed=args.seed,
            batch_size=args.batch_size,
            protocol=args.protocol,
            causal_bos=args.causal_bos,
            crows_mlm_tokens=args.crows_mlm_tokens,
            mlm_filler_mean=args.mlm_filler_mean,
            seat_dir=args.seat_dir,
            crows_file=args.crows_file,
            stereoset_file=args.stereoset_file,
            ppl_file=args.ppl_file,
            ppl_max_tokens=args.ppl_max_tokens,
            ppl_window=args.ppl_window,
            ppl_stride=args.ppl_stride,
            split=args.split,
            split_seed=args.split_seed,
            progress=False if args.no_progress else None,
            max_batch_tokens=args.max_batch_tokens,
            fidelity=args.fidelity,
            **asdict(placement_from_args(args)),
        )
        results = evaluate_bias(
            args.model,
            benchmarks=args.benchmarks,
            axes=args.axes,
            data_dir=args.data_dir,
            adapters=args.adapter,
            kind=args.kind,
            config=config,
            compare=args.compare,
            label=args.label,
            allow_base_mismatch=args.allow_base_mismatch,
        )
    _print_summary(results)
    report = markdown_report(results) if args.report else None
    _write_outputs(args, [(args.output, _text_writer(results_text(results))), (args.report, _text_writer(report))])
    if args.output:
        print(f"results -> {args.output}")
    if args.report:
        print(f"report -> {args.report}")
    return 0


def _text_writer(text: str | None) -> Callable[[Path], object]:
    return lambda tmp: tmp.write_text(text or "", encoding="utf-8")


def _write_outputs(args: argparse.Namespace, outputs: list[tuple[str | None, Callable[[Path], object]]]) -> None:
    """Write every requested output (results JSON, chart, report) all-or-nothing: if one fails, none is left."""
    from peft_debias.core.atomic import atomic_outputs

    wanted = [(path, write) for path, write in outputs if path]
    with atomic_outputs([path for path, _ in wanted], overwrite=args.overwrite) as tmps:
        for (_, write), tmp in zip(wanted, tmps, strict=True):
            write(tmp)
