"""``peft-debias publish``: upload an artifact folder to the Hugging Face Hub in one commit, with its model card.

The work is :func:`peft_debias.hub.publish.publish_artifact`. The token comes from ``HF_TOKEN`` or ``hf auth login``
(deliberately no ``--token`` option: a token on the command line ends up in shell history and process lists).
"""

from __future__ import annotations

import argparse
import contextlib
import os

HELP = "upload an adapter, bias vector or debiased model folder to the Hugging Face Hub (one commit, with its card)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="DIR", help="folder written by peft-debias train, vector or merge")
    parser.add_argument("repo_id", metavar="REPO_ID", help="Hub repo id, e.g. my-org/gender-debias-lora")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--revision", metavar="R", help="branch to commit to (created if missing; default main)")
    parser.add_argument(
        "--results",
        metavar="FILE",
        help="results.json from peft-debias eval (with --compare for before/after): shown on the card and the Hub",
    )
    parser.add_argument("--message", help="commit message")
    parser.add_argument(
        "--base-model-id",
        metavar="ORG/NAME",
        help="Hub id of the artifact's base model, named in the uploaded copy (needed when it records only a folder)",
    )
    parser.add_argument(
        "--skip-load-check",
        action="store_true",
        help="do not load an adapter on its recorded base model before uploading",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="check everything, then list exactly the files that would be uploaded, and send nothing",
    )


def run(args: argparse.Namespace) -> int:
    from peft_debias.cli.merge import _quiet
    from peft_debias.hub.publish import publish_artifact

    # the load check loads the base model: keep its progress bars and deprecation noise off stderr without -v
    quiet = contextlib.nullcontext() if args.skip_load_check else _quiet(getattr(args, "verbose", 0))
    with quiet:
        result = publish_artifact(
            args.folder,
            args.repo_id,
            private=args.private,
            revision=args.revision,
            results=args.results,
            commit_message=args.message,
            check_load=not args.skip_load_check,
            dry_run=args.dry_run,
            base_model_id=args.base_model_id,
        )
    if result.dry_run:
        print(f"dry run: would publish {result.kind} {args.folder} to {result.repo_id}@{result.revision}:")
        for name in result.files:
            path = os.path.join(args.folder, name)
            size = "the rendered card" if name == "README.md" else f"{os.path.getsize(path)} bytes"
            size += ", uploaded as a portable copy" if name in result.rewritten else ""
            print(f"  {name} ({size})")
        for name in result.left_out:
            print(f"  left out: {name} (not part of a {result.kind})")
        return 0
    removed = f", {len(result.deleted)} stale removed" if result.deleted else ""
    print(
        f"published {result.kind} {args.folder} to {result.repo_id}@{result.revision} "
        f"({len(result.files)} files{removed}; commit {result.commit[:12]})"
    )
    return 0
