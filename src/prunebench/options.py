"""Declared options: each one's type, range, choices and default, written once.

Methods, recovery variants and stages declare their options as `Option`s. A study's values
are checked against these declarations when the study is parsed, so a bad value stops
`prunebench plan`, `snakemake -n` and every CLI verb before any work, with one line naming the
key and what is allowed. The same declarations document the options (`prunebench schema`) and
decide what is hashed: a value equal to its default is left out of a run's name, so adding an
option with a default keeps old run names valid.

This module is a leaf: it imports nothing from the package but the error type.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from prunebench.errors import ConfigError

_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


@dataclass(frozen=True)
class Option:
    """One option: `kind` is bool, int, float, str or list (of `item` values).

    Numbers must be finite; `low`/`high` bound them (inclusive unless `*_open`); `choices`
    lists the allowed values; `nullable` admits null (None).
    """

    default: Any
    kind: type
    help: str = ""
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple[Any, ...] | None = None
    nullable: bool = False
    item: type | None = None  # element kind of a list option
    min_items: int = 0
    increasing: bool = False  # list items strictly increasing

    def check(self, value: Any, key: str) -> Any:
        """The validated, converted value, or a ConfigError naming `key` and what is allowed."""
        if value is None:
            if self.nullable:
                return None
            raise ConfigError(f"{key} must be {self.allowed()}, got null")
        if self.kind is list:
            if not isinstance(value, (list, tuple)) or len(value) < self.min_items:
                raise ConfigError(f"{key} must be {self.allowed()}, got {value!r}")
            items = tuple(self._scalar(v, f"{key}[{i}]", self.item) for i, v in enumerate(value))
            if self.increasing and any(a >= b for a, b in zip(items, items[1:])):
                raise ConfigError(f"{key} must be strictly increasing, got {list(value)!r}")
            return items
        return self._scalar(value, key, self.kind)

    def _scalar(self, value: Any, key: str, kind: type | None) -> Any:
        ok = {
            bool: isinstance(value, bool),
            int: isinstance(value, int) and not isinstance(value, bool),
            float: isinstance(value, (int, float)) and not isinstance(value, bool),
            str: isinstance(value, str),
        }.get(kind, True)
        if not ok:
            raise ConfigError(f"{key} must be {self.allowed()}, got {value!r}")
        if kind is float:
            value = float(value)
        if kind in (int, float):
            if not math.isfinite(value):
                raise ConfigError(f"{key} must be a finite number, got {value!r}")
            low_bad = self.low is not None and (value <= self.low if self.low_open else value < self.low)
            high_bad = self.high is not None and (
                value >= self.high if self.high_open else value > self.high)
            if low_bad or high_bad:
                raise ConfigError(f"{key} must be {self.allowed()}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{key} must be one of {', '.join(map(str, self.choices))}, "
                              f"got {value!r}")
        return value

    def allowed(self) -> str:
        """What the option admits, in words (for error messages and the schema)."""
        kind = self.item if self.kind is list else self.kind
        if self.choices is not None:
            text = "one of " + ", ".join(map(str, self.choices))
        else:
            text = _TYPE_NAMES.get(kind, kind.__name__ if kind else "a value")
            if self.low is not None or self.high is not None:
                lo = "(" if self.low_open else "["
                hi = ")" if self.high_open else "]"
                low = "-inf" if self.low is None else f"{self.low:g}"
                high = "inf" if self.high is None else f"{self.high:g}"
                text += f" in {lo}{low}, {high}{hi}"
        if self.kind is list:
            text = f"a list of {text}" + (" (increasing)" if self.increasing else "")
            if self.min_items:
                text += f" with at least {self.min_items} item(s)"
        return text + (" or null" if self.nullable else "")

    def schema(self) -> dict:
        """A JSON Schema fragment with the default and the allowed values."""
        types = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array"}
        out: dict[str, Any] = {"description": f"{self.help} ({self.allowed()})".strip(),
                               "default": list(self.default) if isinstance(self.default, tuple)
                               else self.default}
        if self.choices is not None:
            out["enum"] = list(self.choices) + ([None] if self.nullable else [])
        else:
            kind = types.get(self.kind)
            out["type"] = [kind, "null"] if self.nullable else kind
        return out


def resolve_options(declared: Mapping[str, Option], values: Mapping[str, Any] | None,
                    key: str) -> dict[str, Any]:
    """Defaults overridden by `values`, each checked; unknown names are an error."""
    if values is None:
        values = {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{key} must be a mapping of option -> value, got {values!r}")
    unknown = sorted(set(values) - set(declared), key=str)
    if unknown:
        allowed = ", ".join(sorted(declared)) or "none"
        raise ConfigError(f"unknown option {key}.{unknown[0]}; allowed: {allowed}")
    out = {}
    for name, opt in declared.items():
        value = values.get(name, opt.default)
        out[name] = opt.check(value, f"{key}.{name}") if name in values else _freeze(value)
    return out


def non_default(declared: Mapping[str, Option], values: Mapping[str, Any]) -> dict[str, Any]:
    """The options that differ from their declared default (what a run name hashes)."""
    return {k: v for k, v in sorted(values.items())
            if k not in declared or _freeze(declared[k].default) != _freeze(v)}


def _freeze(value: Any) -> Any:
    return tuple(value) if isinstance(value, (list, tuple)) else value


def options_schema(declared: Mapping[str, Option]) -> dict:
    return {"type": "object", "additionalProperties": False,
            "properties": {name: opt.schema() for name, opt in declared.items()}}


def fraction(default: float, help: str = "", *, open_low: bool = False) -> Option:
    """A number in [0, 1) (or (0, 1))."""
    return Option(default, float, help, low=0.0, high=1.0, low_open=open_low, high_open=True)


def positive_int(default: int | None, help: str = "", *, nullable: bool = False) -> Option:
    return Option(default, int, help, low=1, nullable=nullable)


def choice(default: str, choices: Sequence[str], help: str = "") -> Option:
    return Option(default, str, help, choices=tuple(choices))


__all__ = ["Option", "choice", "fraction", "non_default", "options_schema", "positive_int",
           "resolve_options"]
