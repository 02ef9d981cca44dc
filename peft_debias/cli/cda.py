"""``peft-debias cda``: counterfactually augment a corpus into JSONL."""

from __future__ import annotations

import argparse

from peft_debias.cda.corpora import TEXT_FORMATS
from peft_debias.cda.dataset import CDAConfig
from peft_debias.cli.options import at_least

HELP = "counterfactually augment a corpus (JSONL out: id, text, counterfactuals)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--axis", required=True, help="bias axis: gender, race, religion, or an axis JSON/YAML file")
    parser.add_argument(
        "--corpus", required=True, action="append", help="text/JSONL/CSV file, folder, or Hub dataset id (repeatable)"
    )
    parser.add_argument("--output", required=True, help="output .jsonl file")
    parser.add_argument(
        "--mode",
        default="all",
        choices=["all", "one"],
        help="'all': one counterfactual per alternative group; 'one': a single one",
    )
    parser.add_argument(
        "--keep-ratio", type=float, default=0.0, help="fraction of sentences without axis words to keep (default 0)"
    )
    parser.add_argument(
        "--names", type=int, default=0, help="also swap the N most frequent first names of each gender (default 0)"
    )
    parser.add_argument("--min-words", type=int, default=4)
    parser.add_argument("--max-words", type=int, default=128)
    parser.add_argument("--max-sentences", type=int, default=None, help="stop after this many axis sentences")
    parser.add_argument("--seed", type=at_least(int, 0), default=0)
    parser.add_argument("--no-shuffle", action="store_true", help="keep corpus order")
    parser.add_argument("--text-format", default="auto", choices=TEXT_FORMATS)
    parser.add_argument("--text-column", default="text", help="text field of JSONL/CSV/Hub records")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def run(args: argparse.Namespace) -> int:
    from peft_debias.cda.dataset import build_cda_dataset, quiet_datasets
    from peft_debias.core.atomic import atomic_output, check_destination, check_not_input

    check_destination(args.output, overwrite=args.overwrite)
    check_not_input(args.output, args.corpus)
    config = CDAConfig(
        axis=args.axis,
        mode=args.mode,
        keep_ratio=args.keep_ratio,
        names=args.names,
        min_words=args.min_words,
        max_words=args.max_words,
        max_sentences=args.max_sentences,
        seed=args.seed,
        shuffle=not args.no_shuffle,
        text_format=args.text_format,
        text_column=args.text_column,
    )
    ds, stats = build_cda_dataset(args.corpus, config, progress=True)
    with atomic_output(args.output, overwrite=args.overwrite) as tmp, quiet_datasets():
        ds.to_json(str(tmp), lines=True, force_ascii=False)
    print(
        f"cda {config.axis}: {stats.sentences_in} sentences read, {stats.sentences_kept} with axis words, "
        f"{stats.pairs_produced} counterfactuals, {stats.others_kept} others kept, {stats.dropped} dropped, "
        f"{stats.seconds:.1f} s -> {args.output}"
    )
    return 0
