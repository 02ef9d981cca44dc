"""The flat view of a dataclass config with nested option groups (see :class:`~peft_debias.train.config.TrainConfig`).

A group is a field whose value is another dataclass, with :func:`group_metadata` as its metadata: it names the flat
key of each of the group's fields that is reachable flat (``r`` for ``method_options.r``, ``cda_mode`` for
``cda_options.mode``) and the fields the run sets itself. :func:`flat_keys` lists every flat key in order: the
top-level fields, with each group's keys in its place."""

from __future__ import annotations

import copy
import types
import typing
from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields, make_dataclass
from typing import Any

from peft_debias.core.errors import DebiasError


def group_metadata(help_text: str, flat: Mapping[str, str], from_run: tuple[str, ...] = (), **helps: str) -> dict:
    """The metadata of a nested option group field: ``flat`` maps flat keys to the group's fields, in the order of
    the flat interface; ``from_run`` are the fields the run sets itself; ``helps`` overrides a flat key's help."""
    return {"help": help_text, "flat": dict(flat), "from_run": from_run, "flat_help": helps}


def same_names(cls: type, *skip: str) -> dict[str, str]:
    """Every field of ``cls`` but ``skip`` as a flat key of the same name."""
    return {f.name: f.name for f in fields(cls) if f.name not in skip}


@dataclass(frozen=True)
class FlatKey:
    """A key of the flat interface: a top-level field (``group`` None) or a field of a group."""

    name: str
    group: str | None
    field: Field[Any]
    hint: Any
    help: str


@dataclass(frozen=True)
class Group:
    """A nested option group and how its fields map to flat keys."""

    name: str
    cls: type
    flat: dict[str, str]  # flat key -> field name
    from_run: tuple[str, ...]

    def extra(self, value: Any) -> dict[str, Any]:
        """The fields of ``value`` that have no flat key, are not the run's, and differ from the defaults."""
        default, mapped = self.cls(), {*self.flat.values(), *self.from_run}
        return {
            f.name: copy.deepcopy(getattr(value, f.name))
            for f in fields(self.cls)
            if f.name not in mapped and getattr(value, f.name) != getattr(default, f.name)
        }

    def parse(self, data: Any, source: str) -> Any:
        """The group from a mapping of its field names (values checked and converted like flat keys)."""
        if not isinstance(data, Mapping):
            raise DebiasError(f"{source}: {self.name} is {data!r}, not a mapping", f"write {self.name}: {{key: value}}")
        known = sorted(f.name for f in fields(self.cls) if f.name not in self.from_run)
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise DebiasError(f"{source}: {self.name} has unknown keys {unknown}", f"use only: {', '.join(known)}")
        hints = typing.get_type_hints(self.cls)
        return self.cls(**{k: typed(f"{self.name}.{k}", v, hints[k], source) for k, v in data.items()})


def groups(cls: type) -> dict[str, Group]:
    """The option groups of the dataclass ``cls``, by field name."""
    return {
        f.name: Group(f.name, f.default_factory, f.metadata["flat"], f.metadata["from_run"])  # type: ignore[arg-type]
        for f in fields(cls)
        if "flat" in f.metadata
    }


def flat_keys(cls: type) -> dict[str, FlatKey]:
    """Every flat key of the dataclass ``cls``, in order."""
    hints = typing.get_type_hints(cls)
    keys: dict[str, FlatKey] = {}
    for f in fields(cls):
        if "flat" not in f.metadata:
            keys[f.name] = FlatKey(f.name, None, f, hints[f.name], f.metadata.get("help", ""))
            continue
        sub = f.default_factory
        sub_fields, sub_hints = {s.name: s for s in fields(sub)}, typing.get_type_hints(sub)  # type: ignore[arg-type]
        for key, name in f.metadata["flat"].items():
            help_text = f.metadata["flat_help"].get(key, sub_fields[name].metadata.get("help", ""))
            keys[key] = FlatKey(key, f.name, sub_fields[name], sub_hints[name], help_text)
    return keys


def flat_property(group_name: str, name: str) -> property:
    """An attribute that reads and sets ``self.<group_name>.<name>``."""

    def get(self: Any) -> Any:
        return getattr(getattr(self, group_name), name)

    def set_(self: Any, value: Any) -> None:
        setattr(getattr(self, group_name), name, value)

    return property(get, set_, doc=f"flat key for ``{group_name}.{name}``")


def default_of(f: Field[Any]) -> Any:
    """A field's default value (a fresh one for a default factory)."""
    return f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]


def flat_dataclass(name: str, keys: Mapping[str, FlatKey]) -> type:
    """A plain dataclass with one field per flat key, with the key's type, default and help."""
    specs = []
    for key in keys.values():
        meta = {"help": key.help, **{k: v for k, v in key.field.metadata.items() if k in ("min", "max")}}
        if key.field.default is MISSING:
            spec = field(default_factory=key.field.default_factory, metadata=meta)  # type: ignore[arg-type]
        else:
            spec = field(default=key.field.default, metadata=meta)
        specs.append((key.name, key.hint, spec))
    return make_dataclass(name, specs)


def typed(key: str, value: Any, hint: Any, source: str) -> Any:
    """``value`` as the type of field ``key`` (a recipe's YAML gives strings for numbers like ``2e-4``)."""
    options = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
    if value is None and type(None) in options:
        return None
    kind = next(o for o in options if o is not type(None))
    if typing.get_origin(kind) is list:
        items = [value] if isinstance(value, str) else value
        if isinstance(items, list) and all(isinstance(i, str) for i in items):
            return items
        expected = "a list of strings"
    elif kind is bool:
        if isinstance(value, bool):
            return value
        expected = "true or false"
    elif kind is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        expected = "an integer"
    elif kind is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        expected = "a number"
    else:
        if isinstance(value, kind):
            return value
        expected = f"a {getattr(kind, '__name__', kind)}"
    raise DebiasError(f"{source}: {key} is {value!r}, not {expected}", f"write {key} as {expected}")
