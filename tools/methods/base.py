"""The contract between the shared training pipeline (`tools/fit.py`) and each detector method.

The pipeline loads and splits the data, prepares every image with `edged.preprocess.prepare_uint8`
(the daemon's own code) using the method's `InputSpec`, then calls `Method.fit`. What comes back can
export itself as ONE fp32 ONNX graph whose outputs are the image score (higher = more anomalous) and,
for image models, the anomaly map at input size. Quantization, calibration, the manifest and the
evaluation are shared code and never method-specific except through `QuantizeOptions`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edged.bundle import InputSpec, OutputSpec

# What every method accepts unless it declares its own limits (attributes of the method object):
# ``min_size``/``max_size``/``size_multiple`` (--size), ``min_images`` (training images after the hold-out).
MIN_SIZE = 16  # below this no method sees more than a blur: a 7 px model is a degenerate one
MAX_SIZE = 2048  # the manifest allows 4096; beyond 2048 px every method runs out of memory or time on a CPU
MIN_IMAGES = 8  # good images to train on; fewer gives a model of a handful of parts, not of the product


@dataclass
class FitOptions:
    size: int = 128  # model input width in pixels (and height, unless `height` is given)
    height: int | None = None  # model input height; None: square (size x size)
    seed: int = 0
    epochs: int | None = None  # None: the method's default
    extra: dict[str, Any] = field(default_factory=dict)  # method options from --opt KEY=VALUE
    progress: bool = True  # show a progress bar (tqdm)

    @property
    def shape(self) -> tuple[int, int]:
        """(width, height) of the model input."""
        return self.size, self.height if self.height is not None else self.size


@dataclass
class QuantizeOptions:
    """How `tools/quantize.py` should make the int8 model of this method."""

    enabled: bool = True
    per_channel: bool = True
    op_types: list[str] | None = None  # None: onnxruntime's default set
    nodes_to_exclude: list[str] = field(default_factory=list)
    calibrate_method: str = "MinMax"  # MinMax | Entropy | Percentile
    extra_options: dict[str, Any] = field(default_factory=dict)


class Trained(Protocol):
    """A fitted detector, ready for export."""

    spec: InputSpec
    outputs: OutputSpec
    params: dict[str, Any]  # what the manifest records about training (epochs, loss, ...)
    quantize: QuantizeOptions

    def export_onnx(self, path: Path) -> None:
        """Write the fp32 graph: input `spec.name` (N x ...) -> outputs named in `outputs`."""
        ...


class Method(Protocol):
    name: str

    def input_spec(self, opts: FitOptions) -> InputSpec:
        """How images must be prepared for this method at these options."""
        ...

    def fit(self, images: list[np.ndarray], opts: FitOptions) -> Trained:
        """Learn from good images, already prepared as uint8 HxW(xC) at `input_spec(opts)`."""
        ...


# --- method options (--opt KEY=VALUE), one set of rules for every method ------------------------------------------

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
            value = tuple(int(v) for v in text.replace(",", "/").split("/") if v.strip())
        except ValueError:
            value = ()
        if not value:
            raise ValueError("whole numbers separated by / (e.g. 16/32/64)")
        return value
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


def describe_options(table: dict[str, Option]) -> str:
    """One line per option for --help texts and error messages."""
    return "\n".join(f"{k} (default {o.default!r}): {o.doc}" for k, o in table.items())
