"""The ``peft-debias`` command line.

The error contract lives here, once, for every subcommand: a user error (:class:`~peft_debias.core.errors.DebiasError`
or a bad argument) prints ``peft-debias: error: <what is wrong>; <how to fix>`` as one line on stderr and exits
with code 2, without a traceback unless ``--debug`` is given. Commands write outputs atomically
(:mod:`peft_debias.core.atomic`), so a failed command leaves nothing at its destination.

Subcommands are an explicit registry of modules under :mod:`peft_debias.cli`; each module defines
``HELP``, ``add_arguments(parser)`` and ``run(args) -> int`` and imports heavy libraries only inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from peft_debias.core.errors import DebiasError, one_line
from peft_debias.core.version import __version__

PROG = "peft-debias"
COMMANDS: dict[str, str] = {
    "biased": "peft_debias.cli.biased",
    "cda": "peft_debias.cli.cda",
    "demo": "peft_debias.cli.demo",
    "downstream": "peft_debias.cli.downstream",
    "merge": "peft_debias.cli.merge",
    "publish": "peft_debias.cli.publish",
    "eval": "peft_debias.cli.eval",
    "experiment": "peft_debias.cli.experiment",
    "train": "peft_debias.cli.train",
    "vector": "peft_debias.cli.vector",
}


class _Parser(argparse.ArgumentParser):
    """argparse with the one-line error contract."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{PROG}: error: {one_line(message)}; see '{self.prog} --help'\n")


def _common() -> argparse.ArgumentParser:
    common = _Parser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors")
    common.add_argument(
        "-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more log output (-vv for debug logs)"
    )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (the subcommand modules are imported, their heavy dependencies are not)."""
    parser = _Parser(
        prog=PROG,
        parents=[_common()],
        description="Remove social bias from language models with PEFT adapters and bias vectors.",
    )
    parser.set_defaults(debug=False, verbose=0)
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        cmd = sub.add_parser(name, help=module.HELP, description=module.HELP, parents=[_common()])
        module.add_arguments(cmd)
        cmd.set_defaults(run=module.run)
    return parser


# The libraries' progress-bar switches, read when they are imported (the commands import them lazily, after this).
_LIBRARY_BARS_ENV = ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")


def _quiet_library_bars() -> None:
    """Only the CLI's own progress bars: none from transformers ("Loading weights", "Writing model shards"),
    huggingface_hub or datasets, whatever the verbosity (a user's own setting of the variables wins).

    transformers has no switch of its own that can be set before it is imported: it starts with huggingface_hub's
    global one, so the environment variables cover it without importing anything here. When the libraries are
    imported already (``main()`` called in a process that loaded them), their switches are turned directly.
    """
    ours = [name for name in _LIBRARY_BARS_ENV if os.environ.setdefault(name, "1") == "1"]
    if "HF_HUB_DISABLE_PROGRESS_BARS" not in ours:
        return
    if "transformers" in sys.modules:  # also turns huggingface_hub's off
        importlib.import_module("transformers.utils.logging").disable_progress_bar()
    elif "huggingface_hub" in sys.modules:
        importlib.import_module("huggingface_hub.utils").disable_progress_bars()


def _configure_logging(verbose: int) -> None:
    """Warnings only by default (commands print their own one-line summaries); ``-v`` INFO, ``-vv`` DEBUG; no
    library progress bars (:func:`_quiet_library_bars`; the commands' own follow ``--no-progress``)."""
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("peft_debias").setLevel(level)
    if verbose < 2:
        from peft_debias.train.optim import quiet_bitsandbytes

        quiet_bitsandbytes()
    _quiet_library_bars()
    if verbose == 0:
        import warnings

        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        # deprecation notices of the libraries (e.g. transformers' is_gradient_checkpointing) are not the user's
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"(transformers|peft|accelerate)\b")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 unexpected failure, 2 user error, 130 interrupted)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    _configure_logging(args.verbose)
    try:
        return int(args.run(args) or 0)
    except DebiasError as err:
        if args.debug:
            raise
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; nothing was written to the destination", file=sys.stderr)
        return 130
    except Exception as err:
        if args.debug:
            raise
        print(
            f"{PROG}: error: unexpected {type(err).__name__}: {one_line(err)}; "
            "rerun with --debug for the traceback and report it",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
