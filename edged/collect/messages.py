"""A message from the central broker checked and turned into one row, or refused with a reason.

Everything here came from outside (any client of the central broker may publish under a station's
prefix), so every field the tables use is checked for its type and range, the payload must be a JSON
object that PostgreSQL's jsonb can hold (no NaN, no NUL, no lone surrogates), and its `station` must
be the station its topic names. Results, rejects and audits carry the daemon's unique `id` (a uuid4);
a stats message has none, so its key is derived: (line, station, `at`), one stats message per station
and instant.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from edged import jsonin
from edged.topics import StationTopic

MAX_PAYLOAD = 256 * 1024  # a stats message with many cameras is a few KB; more is not from edged
MAX_TEXT = 256
MAX_TIME = 1e11  # unix seconds: year 5138; larger would overflow a timestamp


class BadMessage(ValueError):
    """A message that cannot be recorded; str() says why (for the log, escaped there)."""


@dataclass(frozen=True, slots=True)
class Record:
    """One row of the table `kind` (result, reject, audit, stats); `key` is the message id, or `at` for stats."""

    kind: str
    line: str
    station: str
    key: str
    at: float  # decided_at (result, reject, audit) or at (stats): unix seconds
    payload: str  # the JSON object as received, re-serialized strictly (jsonb)
    camera: str | None = None
    seq: int | None = None
    part_id: str | None = None
    reason: str | None = None
    is_defective: bool | None = None
    score: float | None = None
    expires_at: float | None = None
    model: str | None = None


def _reject_constant(name: str) -> Any:
    raise BadMessage(f"not strict JSON ({name})")


def _check_strings(value: Any) -> None:
    """No NUL in any key or string: jsonb cannot store one."""
    if isinstance(value, str):
        if "\x00" in value:
            raise BadMessage("a string holds a NUL character")
    elif isinstance(value, dict):
        for k, v in value.items():
            _check_strings(k)
            _check_strings(v)
    elif isinstance(value, list):
        for v in value:
            _check_strings(v)


def _object(payload: bytes) -> tuple[dict[str, Any], str]:
    if len(payload) > MAX_PAYLOAD:
        raise BadMessage(f"payload of {len(payload)} bytes is over {MAX_PAYLOAD}")
    try:
        value = jsonin.loads(payload.decode("utf-8"), parse_constant=_reject_constant)  # TooDeep: a ValueError
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise BadMessage(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BadMessage("not a JSON object")
    _check_strings(value)
    text = json.dumps(value, ensure_ascii=False, allow_nan=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadMessage("a string holds a lone surrogate") from None
    return value, text


def _text(obj: dict[str, Any], key: str, required: bool = True) -> str | None:
    v = obj.get(key)
    if v is None and not required:
        return None
    if not isinstance(v, str) or not v or len(v) > MAX_TEXT:
        raise BadMessage(f"'{key}' must be a text of 1 to {MAX_TEXT} characters")
    return v


def _number(obj: dict[str, Any], key: str, required: bool = True, lo: float = -math.inf,
            hi: float = math.inf) -> float | None:
    v = obj.get(key)
    if v is None and not required:
        return None
    if isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v) or not lo <= v <= hi:
        raise BadMessage(f"'{key}' must be a finite number" + (f" in [{lo:g}, {hi:g}]" if hi != math.inf else ""))
    return float(v)


def _time(obj: dict[str, Any], key: str, required: bool = True) -> float | None:
    return _number(obj, key, required, lo=0.0, hi=MAX_TIME)


def _when(obj: dict[str, Any], key: str) -> float:
    """A required time: unix seconds."""
    value = _time(obj, key)
    if value is None:  # _time raised already; this narrows the type
        raise BadMessage(f"'{key}' is missing")
    return value


def _seq(obj: dict[str, Any]) -> int | None:
    v = obj.get("seq")
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**63:
        raise BadMessage("'seq' must be a non-negative integer")
    return v


def _defective(obj: dict[str, Any]) -> bool | None:
    v = obj.get("is_defective")
    if v is not None and not isinstance(v, bool):
        raise BadMessage("'is_defective' must be true, false or null")
    return v


def parse(topic: str, payload: bytes) -> Record:
    """The row for one message; BadMessage says why there is none."""
    where = StationTopic.parse(topic)
    if where is None:
        raise BadMessage("not a station's result, reject, audit or stats topic")
    obj, text = _object(payload)
    if obj.get("station") != where.station:
        raise BadMessage("its 'station' is not the station of its topic")
    if where.kind == "stats":
        at = _when(obj, "at")
        return Record(kind="stats", line=where.line, station=where.station, key=repr(at), at=at, payload=text)
    decided = _when(obj, "decided_at")
    common: dict[str, Any] = dict(
        kind=where.kind, line=where.line, station=where.station, key=_text(obj, "id"), at=decided, payload=text,
        camera=_text(obj, "camera"), part_id=_text(obj, "part_id", required=False),
        reason=_text(obj, "reason"), score=_number(obj, "score", required=False))
    if where.kind == "result":
        return Record(**common, seq=_seq(obj), is_defective=_defective(obj),
                      model=_text(obj, "model", required=False))
    if where.kind == "audit" and obj.get("expired") is not True:
        raise BadMessage("an audit message without 'expired': true")
    return Record(**common, expires_at=_time(obj, "expires_at"))
