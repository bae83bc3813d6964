"""Method options (``--opt KEY=VALUE``): one set of typing and range rules for every method."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


class OptionError(ValueError):
    """A bad ``--opt``: unknown key or a value of the wrong type or range; the message names it."""


TRUE = ("1", "true", "yes", "on")
FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Option:
    """One method option: its default (whose type is the option's type), allowed values and meaning."""

    default: Any
    doc: str = ""
    choices: tuple[str, ...] | None = None
    low: float | None = None  # smallest allowed number
    high: float | None = None  # largest allowed number
    low_open: bool = False  # low itself is not allowed
    none_ok: bool = False  # "none" is a value
    check: Callable[[Any], str | None] | None = None  # extra rule: returns what is wrong, or None


def _typed(raw: Any, default: Any) -> Any:
    """`raw` as the type of `default`; ValueError with what was expected."""
    if isinstance(default, bool):
        text = str(raw).strip().lower()
        if text not in TRUE + FALSE:
            raise ValueError("true or false")
        return text in TRUE
    if isinstance(default, int):
        try:
            number = raw if isinstance(raw, int) and not isinstance(raw, bool) else float(str(raw))
        except ValueError:
            raise ValueError("a whole number") from None
        if isinstance(number, float) and (not math.isfinite(number) or not number.is_integer()):
            raise ValueError("a whole number")
        return int(number)
    if isinstance(default, float):
        try:
            value = float(str(raw)) if not isinstance(raw, bool) else math.nan
        except ValueError:
            raise ValueError("a number") from None
        if not math.isfinite(value):
            raise ValueError("a finite number")
        return value
    if isinstance(default, tuple):
        text = "/".join(str(v) for v in raw) if isinstance(raw, list | tuple) else str(raw)
        try:
            numbers = tuple(int(v) for v in text.replace(",", "/").split("/") if v.strip())
        except ValueError:
            numbers = ()
        if not numbers:
            raise ValueError("whole numbers separated by / (e.g. 16/32/64)")
        return numbers
    return str(raw).strip()


def coerce_option(method: str, key: str, raw: Any, option: Option) -> Any:
    """`raw` (a string, or what the CLI already typed) as the option's type, or `OptionError` naming it."""
    where = f"{method}: --opt {key}={raw!r}"
    if option.none_ok and (raw is None or str(raw).strip().lower() in ("none", "null")):
        return None
    try:
        value = _typed(raw, option.default)
    except ValueError as exc:
        raise OptionError(f"{where}: expected {exc}") from None
    if option.choices is not None:
        lowered = {c.lower(): c for c in option.choices}
        if str(value).lower() not in lowered:
            raise OptionError(f"{where}: choose one of {', '.join(option.choices)}")
        value = lowered[str(value).lower()]
    if isinstance(value, int | float) and not isinstance(value, bool):
        low, high = option.low, option.high
        if low is not None and (value < low or (option.low_open and value == low)):
            raise OptionError(f"{where}: must be {'>' if option.low_open else '>='} {low:g}")
        if high is not None and value > high:
            raise OptionError(f"{where}: must be <= {high:g}")
    if option.check is not None:
        problem = option.check(value)
        if problem:
            raise OptionError(f"{where}: {problem}")
    return value


def parse_options(method: str, table: dict[str, Option], extra: dict[str, Any]) -> dict[str, Any]:
    """Defaults updated with `extra`, each value typed and checked; an unknown key is refused."""
    unknown = sorted(set(extra) - set(table))
    if unknown:
        known = ", ".join(sorted(table)) if table else "none: this method takes no --opt"
        raise OptionError(f"{method}: unknown option(s) {', '.join(unknown)} (known: {known})")
    out = {k: o.default for k, o in table.items()}
    for key, raw in extra.items():
        out[key] = coerce_option(method, key, raw, table[key])
    return out


def describe_option(option: Option) -> str:
    """`default  meaning (range)` for `edged-train methods`: what a user needs to write an --opt."""
    default = "none" if option.default is None else str(option.default).lower() if isinstance(
        option.default, bool) else str(option.default)
    if option.choices:
        allowed = "one of " + ", ".join(option.choices)
    else:
        low = "" if option.low is None else f"{'>' if option.low_open else '>='} {option.low:g}"
        high = "" if option.high is None else f"<= {option.high:g}"
        allowed = ", ".join(x for x in (low, high) if x)
    allowed += ("; " if allowed else "") + "none allowed" if option.none_ok else ""
    return f"{default}  {option.doc}" + (f" ({allowed})" if allowed else "")
