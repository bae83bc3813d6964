"""JSON from outside (MQTT payloads, HTTP bodies): parsed only when its nesting is shallow.

Why: Python's JSON parser recurses once per level of arrays and objects. At the interpreter's recursion limit it
raises RecursionError, but a garbage collection that runs Python code at that depth (a finalizer, a gc callback)
turns it into the fatal "Cannot recover from stack overflow", which aborts the whole process: the test suite's
MQTT fuzz did exactly that to the in-process daemon (a trigger of 4 096 nested brackets; core dump read with gdb).
So depth is counted first, in one pass that skips string contents, and anything deeper than MAX_NESTING is refused
before the parser sees it. Real messages nest 2-3 levels.
"""

from __future__ import annotations

import json
from typing import Any

MAX_NESTING = 32  # arrays/objects inside one another


class TooDeep(ValueError):
    """JSON nested deeper than MAX_NESTING (a ValueError, as the parser's own errors are)."""


def deepest(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON text; brackets inside strings do not count."""
    depth = top = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            depth += 1
            top = max(top, depth)
        elif ch in "]}":
            depth -= 1
    return top


def loads(text: str, **kwargs: Any) -> Any:
    """`json.loads(text, **kwargs)`, or TooDeep without parsing. The exact count runs only when there are more
    brackets than the limit at all, so a normal message costs two `str.count` calls."""
    if text.count("[") + text.count("{") > MAX_NESTING and deepest(text) > MAX_NESTING:
        raise TooDeep(f"JSON nested deeper than {MAX_NESTING} levels")
    return json.loads(text, **kwargs)
