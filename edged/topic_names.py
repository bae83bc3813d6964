"""What may stand in an MQTT topic: the checks for the mqtt prefix key and a collector's station filter.

A prefix is joined into every topic (`<prefix>/<station>/reject`), so a `+` or `#` in it would make
the daemon publish to a topic no subscriber can name, an empty level or a stray `/` would split the
plant's tree in two, and a leading `$` puts it among the broker's own topics ($SYS), which brokers
refuse to forward. Checked once, at config time, with a message that says what is wrong.
Station and camera names are one level each: `edged.section.NAME_RE` already keeps them safe.
"""

from __future__ import annotations

import unicodedata

MAX_PREFIX_BYTES = 256  # far under MQTT's 65535; a longer prefix is a mistake, not a plant


def _bad_character(text: str) -> str | None:
    """A description of the first character no topic level should hold, if any."""
    for ch in text:
        if ch == "\x00":
            return "a NUL character"
        if unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") or ch.isspace():
            return f"the character U+{ord(ch):04X} (a control or space character)"
    return None


def check_prefix(value: str, wildcards: bool = False) -> str:
    """`value` if it is a valid topic prefix of one or more levels (`acme/plant1/press-shop/line3`), else
    ValueError saying why. With `wildcards`, a level may be exactly `+` (a collector's filter over
    several lines); `#` is never allowed: the levels after the prefix say what a message is."""
    if not value:
        raise ValueError("must not be empty")
    if len(value.encode("utf-8")) > MAX_PREFIX_BYTES:
        raise ValueError(f"must be at most {MAX_PREFIX_BYTES} bytes")
    bad = _bad_character(value)
    if bad:
        raise ValueError(f"must not contain {bad}")
    if value.startswith("/") or value.endswith("/"):
        raise ValueError("must not start or end with '/' (that makes an empty topic level)")
    if value.startswith("$"):
        raise ValueError("must not start with '$' (topics starting with $ belong to the broker)")
    for level in value.split("/"):
        if not level:
            raise ValueError("must not contain an empty level ('//')")
        if "#" in level:
            raise ValueError("must not contain the wildcard '#'")
        if "+" in level and not (wildcards and level == "+"):
            raise ValueError("may use '+' only as a whole level" if wildcards
                             else "must not contain the wildcard '+'")
    return value
