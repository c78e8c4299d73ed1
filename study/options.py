"""How an option is declared: one dataclass field whose metadata carries its help, group, value kind and where it
may be set (HF's ``HfArgumentParser`` shape). The CLIs (``study.cli.add_options``), the task and space files
(``study.task``, ``study.space``), the checks and the record are all read off these declarations.

A kind checks and normalises a value, from Python, YAML or the command line alike: ``check(value)`` returns the
value in its one type (an image size is always ``(H, W)``) or raises ``ValueError`` with what was expected;
``parse(text)`` turns a command-line word into a value first.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable
from typing import Any

from foundation.errors import ConfigError
from foundation.storage import is_remote

# The CLI's help groups, in the order ``--help`` shows them.
GROUPS = ("task and data", "model", "recipe", "search", "resources", "storage and resume", "speed", "views")
# Where an option may be set: the two commands, the task file, a space (or preset) file; ``search``: a space may
# search it (``space:`` and ``points:``); ``resume``: it may change on ``--resume``.
PLACES = ("run", "trial", "task", "space", "search", "resume")


class Kind:
    """A value kind: ``check`` normalises or raises ValueError(expected); ``parse`` reads a CLI word."""

    expected = "a value"
    metavar: str | None = None
    append = False  # a repeatable option: each occurrence adds one value

    def check(self, value: Any) -> Any:
        return value

    def parse(self, text: str) -> Any:
        return text

    def choices(self) -> tuple | None:
        return None


class Number(Kind):
    """An int or a float within bounds; an integer kind refuses 8.5 and 2.0 alike, and booleans."""

    def __init__(self, kind: type, low: float | None = None, high: float | None = None, low_open: bool = False,
                 optional: bool = False) -> None:
        self.kind, self.low, self.high, self.low_open, self.optional = kind, low, high, low_open, optional
        noun = "an integer" if kind is int else "a number"
        if low is not None and high is not None:
            self.expected = f"{noun} in {'(' if low_open else '['}{low:g}, {high:g}]"
        elif low is not None:
            self.expected = f"{noun} {'>' if low_open else '>='} {low:g}"
        else:
            self.expected = noun
        self.metavar = "N" if kind is int else "X"

    def check(self, value: Any) -> Any:
        if value is None and self.optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(self.expected)
        if self.kind is int and not isinstance(value, int):
            raise ValueError(self.expected)
        low_bad = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        if low_bad or (self.high is not None and value > self.high):
            raise ValueError(self.expected)
        return self.kind(value)

    def parse(self, text: str) -> Any:
        try:
            return self.kind(text)
        except ValueError:
            raise ValueError(self.expected) from None


class Choice(Kind):
    def __init__(self, values: Iterable[str] | Callable[[], Iterable[str]], optional: bool = False) -> None:
        self.values, self.optional = values, optional

    def choices(self) -> tuple:
        return tuple(self.values() if callable(self.values) else self.values)

    @property
    def expected(self) -> str:  # type: ignore[override]
        return f"one of {', '.join(self.choices())}"

    def check(self, value: Any) -> Any:
        if value is None and self.optional:
            return None
        if value not in self.choices():
            raise ValueError(self.expected)
        return value


class Flag(Kind):
    expected = "true or false"

    def __init__(self, optional: bool = False) -> None:
        self.optional = optional

    def check(self, value: Any) -> Any:
        if value is None and self.optional:
            return None
        if not isinstance(value, bool):
            raise ValueError(self.expected)
        return value


class Text(Kind):
    """A non-empty string (a path, a name, a URI), or None when optional."""

    def __init__(self, optional: bool = True, metavar: str | None = None, expected: str = "a non-empty text") -> None:
        self.optional, self.metavar, self.expected = optional, metavar, expected

    def check(self, value: Any) -> Any:
        if value in (None, "") and self.optional:
            return value
        if not isinstance(value, str) or not value:
            raise ValueError(self.expected)
        return value


class LocalPath(Text):
    """A path option: a local path is made absolute against the working folder where it is read, whichever layer
    gave it (default, preset, file or command line), since Ray's workers and a resumed study run elsewhere; a
    ``scheme://`` URI is kept as it is."""

    def check(self, value: Any) -> Any:
        value = super().check(value)
        if not value or is_remote(value):
            return value
        return os.path.abspath(os.path.expanduser(value))

    parse = check


class Size(Kind):
    """An image size: ``64`` -> (64, 64); ``"64x128"`` or ``[64, 128]`` -> (64, 128) as (height, width)."""

    expected = "N or HxW with sides of at least 8 pixels"
    metavar = "HxW"

    def __init__(self, optional: bool = False) -> None:
        self.optional = optional

    def check(self, value: Any) -> tuple[int, int] | None:
        if value is None and self.optional:
            return None
        if isinstance(value, (list, tuple)):
            parts = list(value)
        elif isinstance(value, int) and not isinstance(value, bool):
            parts = [value, value]
        elif isinstance(value, str):
            text = value.lower().strip()
            parts = text.split("x") if "x" in text else [text, text]
        else:
            raise ValueError(self.expected)
        if len(parts) != 2 or not all(isinstance(p, int) and not isinstance(p, bool) or
                                      isinstance(p, str) and p.strip().isdigit() for p in parts):
            raise ValueError(self.expected)
        height, width = (int(p) for p in parts)
        if height < 8 or width < 8:
            raise ValueError(self.expected)
        return height, width

    parse = check


class Pair(Kind):
    """Two numbers, low <= high: ``0.5,2.0`` or ``[0.5, 2.0]``."""

    expected = "two numbers LOW,HIGH with 0 < LOW <= HIGH"
    metavar = "LOW,HIGH"

    def check(self, value: Any) -> tuple[float, float]:
        parts = value.split(",") if isinstance(value, str) else value
        try:
            low, high = (float(v) for v in parts)
        except (TypeError, ValueError):
            raise ValueError(self.expected) from None
        if not 0 < low <= high or not math.isfinite(high) or any(isinstance(v, bool) for v in parts):
            raise ValueError(self.expected)
        return low, high

    parse = check


class Duration(Kind):
    """A length of time in seconds: ``7200``, ``"90s"``, ``"30m"``, ``"2h"``, ``"1.5h"``; > 0, or None (unset)."""

    expected = "a duration > 0: seconds, or a number with s, m or h (e.g. 90s, 30m, 2h)"
    metavar = "DURATION"
    UNITS = {"s": 1, "m": 60, "h": 3600}

    def check(self, value: Any) -> float | None:
        if value is None:
            return None
        if isinstance(value, str):
            text = value.strip().lower()
            scale = self.UNITS.get(text[-1:], None)
            try:
                value = float(text[:-1] if scale else text) * (scale or 1)
            except ValueError:
                raise ValueError(self.expected) from None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise ValueError(self.expected)
        return float(value)

    parse = check


def option(default: Any, help: str, group: str, kind: Kind, *, where: Iterable[str] = ("run", "trial"),
           factory: Callable[[], Any] | None = None, task_key: str | None = None, cli: str | None = None,
           fmt: str | None = None) -> Any:
    """One option's declaration: a dataclass field whose metadata says everything else about it."""
    where = frozenset(where)
    assert group in GROUPS and where <= set(PLACES), (group, where)
    metadata = {"help": help, "group": group, "kind": kind, "where": where, "task_key": task_key, "cli": cli,
                "fmt": fmt}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def declared(cls: type) -> list[dataclasses.Field]:
    """The fields of ``cls`` that are options (internal fields carry no ``kind``)."""
    return [f for f in dataclasses.fields(cls) if "kind" in f.metadata]


def declaration(cls: type, name: str) -> dataclasses.Field | None:
    """The option ``name`` of ``cls``; None where it is no option."""
    return next((f for f in declared(cls) if f.name == name), None)


def names(cls: type, place: str) -> tuple[str, ...]:
    """The options of ``cls`` that may be set in ``place`` (one of ``PLACES``)."""
    return tuple(f.name for f in declared(cls) if place in f.metadata["where"])


def is_missing(value: Any) -> bool:
    """None or NaN: a value a row does not have (a table's empty cell)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def size_text(size: tuple[int, int] | list[int]) -> str:
    """``(64, 128)`` -> ``"64x128"``: a size as the CLI and the files spell it."""
    return "x".join(map(str, size))


def show(cls: type, name: str, value: Any) -> str:
    """A value as tables show it: by its declared format (``fmt``), "-" when absent."""
    if is_missing(value):
        return "-"
    field = declaration(cls, name)
    fmt = field.metadata["fmt"] if field is not None else None
    if isinstance(value, tuple):
        return size_text(value)
    return format(value, fmt) if fmt and isinstance(value, (int, float)) else str(value)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_value(cls: type, name: str, value: Any, where: str | None = None) -> Any:
    """One option's value checked and normalised by its declaration in ``cls``; the ConfigError names ``where``
    (a file and key) or else the option."""
    field = declaration(cls, name)
    if field is None:
        raise ConfigError(f"{where or flag(name)}: not an option")
    try:
        return field.metadata["kind"].check(value)
    except ValueError as exc:
        raise ConfigError(f"{where or flag(name)}: expected {exc}, got {value!r}") from None


def check_fields(obj: Any) -> None:
    """Normalise every option of ``obj`` (a dataclass instance) by its kind; ConfigError names the option."""
    for f in declared(type(obj)):
        value = getattr(obj, f.name)
        try:
            object.__setattr__(obj, f.name, f.metadata["kind"].check(value))
        except ValueError as exc:
            raise ConfigError(f"{flag(f.name)}: expected {exc}, got {value!r}") from None
