"""JSON that leaves the process (MQTT payloads, outbox rows, the health file): strict JSON only.

Python's json writes NaN and Infinity by default, which is not JSON: a PLC gateway or MES parser fails
on it, or worse reads a number. Non-finite floats (a model output, a division by zero in a statistic)
become null here, and json.dumps runs with allow_nan=False so anything that slips past is an error at
the writer, not a broken message at the consumer.
"""

from __future__ import annotations

import json
import math
from typing import Any


def finite(value: Any) -> Any:
    """`value` with every non-finite float (also inside dicts, lists, tuples) replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def dumps(value: Any, **kwargs: Any) -> str:
    """json.dumps for the outside: compact by default, never NaN or Infinity."""
    kwargs.setdefault("separators", (",", ":"))
    return json.dumps(finite(value), allow_nan=False, **kwargs)
