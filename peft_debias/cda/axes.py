"""Bias axes: named sets of word groups that counterfactual augmentation swaps between.

An axis has ``classes`` (e.g. ``male``/``female``, or ``jewish``/``christian``/``muslim``) and ``groups``: tuples
with one term per class (``("he", "she")``, ``("synagogue", "church", "mosque")``). A term may appear in several
groups of the same class (the first group defines its counterparts) but never in two classes. ``contextual``
rules resolve ambiguous terms from the following word, e.g. gender ``her`` -> ``his`` before a content word
("her book" -> "his book") and ``him`` otherwise ("saw her." -> "saw him."); see :mod:`peft_debias.cda.swapping`.

Built-in axes (``gender``, ``race``, ``religion``) are package data; users add their own with
:func:`register_axis` or by passing a JSON/YAML file path wherever an axis name is accepted.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Any

from peft_debias.core.errors import DebiasError, one_line
from peft_debias.core.fingerprints import sha256_text

BUILTIN_AXES = ("gender", "race", "religion")
_REGISTRY: dict[str, BiasAxis] = {}


@dataclass(frozen=True)
class ContextRule:
    """How to read an ambiguous term: as part of ``before_word`` when a content word follows, else ``otherwise``."""

    before_word: tuple[str, ...]
    otherwise: tuple[str, ...]


@dataclass(frozen=True)
class BiasAxis:
    """A bias axis and its word groups. Terms are lower-case; matching is case-insensitive."""

    name: str
    classes: tuple[str, ...]
    groups: tuple[tuple[str, ...], ...]
    contextual: Mapping[str, ContextRule] = field(default_factory=dict)
    description: str = ""

    def __post_init__(self) -> None:
        where = f"axis {self.name!r}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", self.name or ""):
            raise DebiasError(f"invalid axis name {self.name!r}", "use letters, digits, '_', '-' or '.'")
        if len(self.classes) < 2 or len(set(self.classes)) != len(self.classes):
            raise DebiasError(f"{where} needs at least two distinct classes", "list them under 'classes'")
        if not self.groups:
            raise DebiasError(f"{where} has no word groups", "add groups with one term per class")
        owner: dict[str, int] = {}
        for group in self.groups:
            if len(group) != len(self.classes):
                raise DebiasError(
                    f"{where}: group {list(group)} has {len(group)} terms for {len(self.classes)} classes",
                    "give exactly one term per class, in the order of 'classes'",
                )
            for cls, term in enumerate(group):
                if not term or term != term.strip().lower():
                    raise DebiasError(f"{where}: term {term!r} is not a lower-case word", "write terms lower-case")
                if owner.setdefault(term, cls) != cls:
                    raise DebiasError(
                        f"{where}: term {term!r} belongs to classes {self.classes[owner[term]]!r} "
                        f"and {self.classes[cls]!r}",
                        "keep each term in one class",
                    )
        for term, rule in self.contextual.items():
            for chosen in (rule.before_word, rule.otherwise):
                if chosen not in self.groups or term not in chosen:
                    raise DebiasError(
                        f"{where}: contextual rule for {term!r} names {list(chosen)}, not a group holding it",
                        "name groups that are listed under 'groups' and contain the term",
                    )

    @cached_property
    def lookup(self) -> dict[str, tuple[int, tuple[str, ...]]]:
        """term -> (class index, the group that defines its counterparts)."""
        table: dict[str, tuple[int, tuple[str, ...]]] = {}
        for group in self.groups:
            for cls, term in enumerate(group):
                table.setdefault(term, (cls, group))
        return table

    @cached_property
    def pattern(self) -> re.Pattern[str]:
        """Case-insensitive regex matching any term as a whole word; longest terms first."""
        terms = sorted(self.lookup, key=lambda t: (-len(t), t))
        alternatives = "|".join(r"\s+".join(map(re.escape, t.split())) for t in terms)
        return re.compile(rf"\b(?:{alternatives})\b", re.IGNORECASE)

    @cached_property
    def pattern_with_article(self) -> re.Pattern[str]:
        """:attr:`pattern` with an optional article before the term: groups ``article`` (``a``/``an``), ``space``
        and ``term``, so that a swap can make the article agree with the new term."""
        return re.compile(rf"(?:\b(?P<article>an?)(?P<space>\s+))?(?P<term>{self.pattern.pattern})", re.IGNORECASE)

    @property
    def terms(self) -> list[str]:
        """All terms of the axis, sorted."""
        return sorted(self.lookup)

    def mentions(self, text: str) -> bool:
        """True if ``text`` contains a term of this axis as a whole word."""
        return self.pattern.search(text) is not None

    def to_dict(self) -> dict[str, Any]:
        """The axis as plain JSON-able data (the file format read by :func:`load_axis_file`)."""
        data: dict[str, Any] = {
            "name": self.name,
            "description": self.description,
            "classes": list(self.classes),
            "groups": [list(g) for g in self.groups],
        }
        if self.contextual:
            data["contextual"] = {
                t: {"before_word": list(r.before_word), "otherwise": list(r.otherwise)}
                for t, r in sorted(self.contextual.items())
            }
        return data

    @cached_property
    def fingerprint(self) -> str:
        """A short sha256 of the word groups and rules (not the description): same words, same fingerprint."""
        data = self.to_dict()
        data.pop("description")
        return sha256_text(json.dumps(data, sort_keys=True, separators=(",", ":")))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "axis definition") -> BiasAxis:
        """Build an axis from :meth:`to_dict`-shaped data; ``source`` names the origin in error messages.

        The shape is checked first (:func:`check_axis_shape`): a wrong type anywhere is one error naming the key."""
        check_axis_shape(data, source)
        contextual = {
            term.strip().lower(): ContextRule(
                tuple(t.strip().lower() for t in rule["before_word"]),
                tuple(t.strip().lower() for t in rule["otherwise"]),
            )
            for term, rule in (data.get("contextual") or {}).items()
        }
        return cls(
            name=data["name"],
            classes=tuple(data["classes"]),
            groups=tuple(tuple(t.strip().lower() for t in g) for g in data["groups"]),
            contextual=contextual,
            description=data.get("description") or "",
        )


_WORDS = "a list of non-empty strings"
_RULE = '{"before_word": [group], "otherwise": [group]}'
# key -> (required, expected shape): the axis file format, as the errors describe it
AXIS_KEYS = {
    "name": (True, "a non-empty string"),
    "description": (False, "a string"),
    "classes": (True, "a list of at least two non-empty strings"),
    "groups": (True, "a non-empty list of groups, each a list of non-empty strings (one term per class)"),
    "contextual": (False, f"an object mapping a term to {_RULE}"),
}


def _what(value: Any) -> str:
    """How a JSON/YAML value reads in an error: its kind, and a short excerpt."""
    kinds = [(bool, "a boolean"), (str, "a string"), (int, "a number"), (float, "a number"), (list, "a list")]
    kind = next((name for t, name in kinds if isinstance(value, t)), None)
    if value is None:
        return "null"
    if isinstance(value, Mapping):
        kind = "an object"
    elif isinstance(value, str) and not value.strip():
        return "an empty string"
    return f"{kind or type(value).__name__} ({one_line(json.dumps(value, default=str), 60)})"


def _shape_error(source: str, key: str, value: Any, expected: str) -> DebiasError:
    return DebiasError(
        f"{source}: {key} is {_what(value)}, expected {expected}",
        "fix that key (the built-in axes in peft_debias/data/axes/ show the format)",
    )


def _words(source: str, key: str, value: Any, expected: str = _WORDS) -> None:
    if not isinstance(value, list | tuple):  # tuples: an axis given in code
        raise _shape_error(source, key, value, expected)
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise _shape_error(source, f"{key}[{i}]", item, "a non-empty string")


def check_axis_shape(data: Any, source: str = "axis definition") -> None:
    """Refuse axis data whose shape is wrong (:data:`AXIS_KEYS`): not an object, a missing or unknown key, a value
    of the wrong type, an empty string. The error names ``source``, the key (``groups[3][1]``,
    ``contextual.her.before_word``) and the expected shape."""
    if not isinstance(data, Mapping):
        raise DebiasError(
            f"{source} is {_what(data)}, not an object", "write an object with 'name', 'classes' and 'groups'"
        )
    unknown = sorted(str(k) for k in data if k not in AXIS_KEYS)
    if unknown:
        raise DebiasError(
            f"{source} has unknown keys {unknown}", f"use only {', '.join(AXIS_KEYS)} (check the spelling)"
        )
    missing = [k for k, (required, _) in AXIS_KEYS.items() if required and k not in data]
    if missing:
        raise DebiasError(f"{source} lacks {', '.join(repr(k) for k in missing)}", "add the missing keys")
    if not isinstance(data["name"], str) or not data["name"].strip():
        raise _shape_error(source, "name", data["name"], AXIS_KEYS["name"][1])
    if data.get("description") is not None and not isinstance(data["description"], str):
        raise _shape_error(source, "description", data["description"], AXIS_KEYS["description"][1])
    _words(source, "classes", data["classes"], AXIS_KEYS["classes"][1])
    groups = data["groups"]
    if not isinstance(groups, list | tuple) or not groups:
        raise _shape_error(source, "groups", groups, AXIS_KEYS["groups"][1])
    for i, group in enumerate(groups):
        _words(source, f"groups[{i}]", group, "a list of non-empty strings, one term per class")
    contextual = data.get("contextual")
    if contextual is None:
        return
    if not isinstance(contextual, Mapping):
        raise _shape_error(source, "contextual", contextual, AXIS_KEYS["contextual"][1])
    for term, rule in contextual.items():
        if not isinstance(term, str) or not term.strip():
            raise _shape_error(source, "a contextual term", term, "a non-empty string")
        if not isinstance(rule, Mapping) or set(rule) != {"before_word", "otherwise"}:
            raise _shape_error(source, f"contextual.{term}", rule, _RULE)
        for key in ("before_word", "otherwise"):
            _words(source, f"contextual.{term}.{key}", rule[key], "a group: a list of non-empty strings")


def load_axis_file(path: str | Path) -> BiasAxis:
    """Read an axis from a JSON or YAML file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DebiasError(f"cannot read axis file {path} ({one_line(err)})", "pass a readable UTF-8 file") from err
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as err:
        raise DebiasError(
            f"axis file {path} is not valid {path.suffix[1:].upper() or 'JSON'}: {one_line(err)}", "fix the syntax"
        ) from err
    return BiasAxis.from_dict(data, source=f"axis file {path}")


def _ensure_builtins() -> None:
    for name in BUILTIN_AXES:
        if name not in _REGISTRY:
            text = resources.files("peft_debias").joinpath(f"data/axes/{name}.json").read_text(encoding="utf-8")
            _REGISTRY[name] = BiasAxis.from_dict(json.loads(text), source=f"built-in axis {name}")


def register_axis(axis: BiasAxis | Mapping[str, Any] | str | Path, *, overwrite: bool = False) -> BiasAxis:
    """Add an axis to the registry (an axis, its dict form, or a JSON/YAML file path) and return it."""
    _ensure_builtins()
    if isinstance(axis, (str, Path)):
        axis = load_axis_file(axis)
    elif not isinstance(axis, BiasAxis):
        axis = BiasAxis.from_dict(axis)
    if axis.name in _REGISTRY and not overwrite:
        raise DebiasError(f"axis {axis.name!r} is already registered", "choose another name or pass overwrite=True")
    _REGISTRY[axis.name] = axis
    return axis


def list_axes() -> list[str]:
    """Names of the registered axes."""
    _ensure_builtins()
    return sorted(_REGISTRY)


def get_axis(name: str | BiasAxis) -> BiasAxis:
    """Look up an axis by name, or load it from a ``.json``/``.yaml``/``.yml`` file path."""
    if isinstance(name, BiasAxis):
        return name
    _ensure_builtins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if Path(name).suffix.lower() in (".json", ".yaml", ".yml"):
        if not Path(name).is_file():
            raise DebiasError(f"axis file {name} not found", "check the path")
        return load_axis_file(name)
    raise DebiasError(
        f"unknown axis {name!r} (known: {', '.join(list_axes())})",
        "pick a known axis or pass a JSON/YAML axis file",
    )
