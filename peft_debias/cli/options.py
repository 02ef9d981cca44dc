"""Command-line options generated from a documented dataclass config (``max_steps`` -> ``--max-steps``).

Options default to ``argparse.SUPPRESS`` so that only what the user typed overrides a recipe or the dataclass
defaults; booleans get ``--x/--no-x``, list fields are repeatable, the field's ``metadata["help"]`` is the help text
and ``metadata["min"]`` / ``metadata["max"]`` bounds checked while parsing (:func:`bounded`): an out-of-range number
is a one-line usage error.
"""

from __future__ import annotations

import argparse
import types
import typing
from collections.abc import Callable, Iterable
from dataclasses import MISSING, fields
from typing import Any


def _base_type(hint: Any) -> Any:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint


def bounded(kind: Callable[[str], Any], minimum: float | None = None, maximum: float | None = None) -> Callable:
    """An argparse ``type=``: the text as ``kind`` (``int``, ``float``), refused outside ``[minimum, maximum]``
    (either may be None) or when it is NaN."""

    def convert(text: str) -> Any:
        value = kind(text)  # a ValueError is argparse's "invalid int value"
        if value != value:
            raise argparse.ArgumentTypeError(f"must be a number, not {text}")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, not {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}, not {value}")
        return value

    convert.__name__ = getattr(kind, "__name__", "number")
    return convert


def at_least(kind: Callable[[str], Any], minimum: float) -> Callable[[str], Any]:
    """An argparse ``type=``: the text as ``kind``, refused when below ``minimum`` (see :func:`bounded`)."""
    return bounded(kind, minimum)


def field_type(cls: type, name: str) -> Callable[[str], Any]:
    """The argparse ``type=`` of the numeric field ``name`` of the dataclass ``cls``: its type, with the bounds of
    its metadata (``"min"``, ``"max"``), so an option written by hand checks what the config checks."""
    f = next(f for f in fields(cls) if f.name == name)
    kind = _base_type(typing.get_type_hints(cls)[name])
    return bounded(kind, f.metadata.get("min"), f.metadata.get("max"))


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, hidden: Iterable[str] = ("progress",)) -> None:
    """One option per field of ``cls`` (except ``hidden``), plus ``--no-progress`` when ``progress`` is hidden."""
    hidden = set(hidden)
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in hidden:
            continue
        flag = "--" + f.name.replace("_", "-")
        kind = _base_type(hints[f.name])
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        help_text = f.metadata.get("help", "") + (f" (default: {default})" if default not in (None, [], "") else "")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_text)
        elif typing.get_origin(kind) is list:
            parser.add_argument(flag, action="append", default=argparse.SUPPRESS, help=help_text + " (repeatable)")
        else:
            minimum, maximum = f.metadata.get("min"), f.metadata.get("max")
            convert = kind if minimum is None and maximum is None else bounded(kind, minimum, maximum)
            parser.add_argument(flag, type=convert, default=argparse.SUPPRESS, help=help_text)
    if "progress" in hidden:
        parser.add_argument(
            "--no-progress", dest="progress", action="store_false", default=argparse.SUPPRESS, help="no progress bar"
        )


def add_placement_arguments(parser: argparse.ArgumentParser | Any, *, device_map: bool = True) -> None:
    """``--device``, ``--dtype`` and (unless ``device_map`` is False) ``--device-map``, ``--max-memory``,
    ``--offload-folder``: where a model loads and in what precision (:class:`~peft_debias.models.placement.Placement`).
    """
    from peft_debias.models.placement import DEVICE_HELP, DEVICE_MAP_HELP, DEVICE_MAPS, DTYPE_CHOICES, DTYPE_HELP

    parser.add_argument("--device", default="auto", help=DEVICE_HELP)
    parser.add_argument("--dtype", default="auto", choices=DTYPE_CHOICES, metavar="DTYPE", help=DTYPE_HELP)
    if not device_map:
        return
    parser.add_argument("--device-map", choices=DEVICE_MAPS, help=DEVICE_MAP_HELP)
    parser.add_argument(
        "--max-memory",
        action="append",
        metavar="DEVICE=SIZE",
        help="with --device-map: the most a device may hold, e.g. cpu=8GiB or 0=20GiB (repeatable)",
    )
    parser.add_argument("--offload-folder", help="with --device-map: where weights that fit nowhere go (default: temp)")


def placement_from_args(args: argparse.Namespace) -> Any:
    """The :class:`~peft_debias.models.placement.Placement` the placement options ask for (checked)."""
    from peft_debias.models.placement import Placement, parse_max_memory

    return Placement(
        device=args.device,
        dtype=args.dtype,
        device_map=getattr(args, "device_map", None),
        max_memory=parse_max_memory(getattr(args, "max_memory", None)),
        offload_folder=getattr(args, "offload_folder", None),
    ).check()
