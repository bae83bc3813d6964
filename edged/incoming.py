"""Messages that come in from outside over MQTT: the one place they are checked (outgoing ones are
`edged.payloads`; the topics they arrive on are `edged.topics`, dispatched by `edged.mqtt_link`).

Whatever a PLC, a misconfigured client or an attacker publishes on a topic we subscribe to ends up
here before anything else sees it. A message is either turned into typed, bounded values or refused
with `MessageRefused`, whose text is safe to log (outside text in it is escaped and cut). Nothing in
here may raise anything else: the MQTT link counts a refusal, logs it rate-limited and carries on.

Limits (README, "MQTT contract"): payload at most MAX_PAYLOAD_BYTES; a JSON object without NaN or
Infinity; `part_id` a non-empty string of printable characters (at most MAX_PART_ID_CHARS) or an
integer; `camera` a string naming a camera in trigger mode mqtt; `t` finite Unix seconds no more
than MAX_T_FUTURE_S ahead of the arrival and no more than MAX_T_PAST_S behind it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from edged import jsonin
from edged.handshake import TriggerRefusal
from edged.parts import Trigger
from edged.recipes import RecipeRequest
from edged.safetext import escape

MAX_PAYLOAD_BYTES = 4096
MAX_PART_ID_CHARS = 256
MAX_T_FUTURE_S = 10.0  # a sensor clock this far ahead is wrong; such a trigger would wait in memory
MAX_T_PAST_S = 3600.0  # older than this: a clock that is wrong, not a late message
MAX_OUTSTANDING_TRIGGERS = 1000  # triggered parts awaiting their result, all cameras together
MAX_REQUEST_ID_CHARS = 128


class MessageRefused(ValueError):
    """An incoming message that cannot be used; str() is a reason safe to put in a log line."""


class TriggerRefused(MessageRefused):
    """A trigger refused for a reason its ack names (`code`); `part_id` when it could be read."""

    def __init__(self, code: TriggerRefusal, detail: str, part_id: str | None = None) -> None:
        super().__init__(detail)
        self.code = code
        self.part_id = part_id


def _no_constant(name: str) -> float:
    raise MessageRefused(f"{name} is not a number")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses as inf
        raise MessageRefused(f"number {escape(text, 30)} is out of range")
    return value


def decode_object(payload: bytes) -> dict[str, Any]:
    """The payload as a JSON object, or MessageRefused (too big, not UTF-8, not JSON, nested too deep,
    not an object, NaN or Infinity anywhere)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MessageRefused(f"payload of {len(payload)} bytes is over the limit of {MAX_PAYLOAD_BYTES}")
    try:
        text = payload.decode("utf-8")
        data = jsonin.loads(text, parse_constant=_no_constant, parse_float=_finite_float)
    except MessageRefused:
        raise
    except UnicodeDecodeError:
        raise MessageRefused("payload is not UTF-8") from None
    except (RecursionError, jsonin.TooDeep):
        raise MessageRefused(f"JSON nested too deeply (over {jsonin.MAX_NESTING} levels)") from None
    except ValueError as exc:  # JSONDecodeError, and int() refusing thousands of digits
        raise MessageRefused(f"not JSON: {escape(str(exc), 80)}") from None
    if not isinstance(data, dict):
        raise MessageRefused(f"expected a JSON object, got {type(data).__name__}")
    return data


def _part_id(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MessageRefused(f"'part_id' must be a string or an integer (got {type(value).__name__})")
    if isinstance(value, int):
        if abs(value) >= 10 ** 18:
            raise MessageRefused("'part_id' integer is out of range (use a string)")
        return str(value)
    if not value:
        raise MessageRefused("'part_id' must not be empty")
    if len(value) > MAX_PART_ID_CHARS:
        raise MessageRefused(f"'part_id' of {len(value)} characters is over the limit of {MAX_PART_ID_CHARS}")
    if not value.isprintable():
        raise MessageRefused(f"'part_id' {escape(value, 60)} holds control or format characters")
    return value


def _sensor_time(value: object, part_id: str, arrived_at: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MessageRefused(f"trigger {escape(part_id, 60)}: 't' must be Unix seconds "
                             f"(got {type(value).__name__})")
    if isinstance(value, int) and abs(value) > 10 ** 12:  # float() of a huge int overflows
        raise MessageRefused(f"trigger {escape(part_id, 60)}: 't' is out of range")
    t = float(value)
    if not math.isfinite(t) or t > arrived_at + MAX_T_FUTURE_S or t < arrived_at - MAX_T_PAST_S:
        raise MessageRefused(f"trigger {escape(part_id, 60)}: 't' {t!r} is more than {MAX_T_FUTURE_S:g} s ahead "
                             f"of or {MAX_T_PAST_S:g} s behind this box's clock ({arrived_at:.3f})")
    return t


@dataclass(frozen=True, slots=True)
class TriggerMessage:
    """A checked trigger message (`<base>/trigger`): part `part_id` passed the sensor at `t` (Unix
    seconds); `camera` None means every camera in trigger mode mqtt."""

    part_id: str
    t: float
    camera: str | None

    @classmethod
    def parse(cls, payload: bytes, arrived_at: float, cameras: dict[str, tuple[float, float]]) -> TriggerMessage:
        """The message, or MessageRefused; `cameras` are the mqtt-mode cameras it may name."""
        data = decode_object(payload)
        part_id = _part_id(data.get("part_id"))
        t = _sensor_time(data.get("t", arrived_at), part_id, arrived_at)
        camera = data.get("camera")
        if camera is not None and not isinstance(camera, str):
            raise MessageRefused(f"trigger {escape(part_id, 60)}: 'camera' must be a camera name "
                                 f"(got {type(camera).__name__})")
        if camera is not None and camera not in cameras:
            raise TriggerRefused(TriggerRefusal.UNKNOWN_CAMERA, f"trigger {escape(part_id, 60)}: camera "
                                 f"{escape(camera, 60)} is not a camera in trigger mode mqtt", part_id)
        return cls(part_id, t, camera)

    def triggers(self, arrived_at: float, cameras: dict[str, tuple[float, float]]) -> list[Trigger]:
        """One Trigger per camera it names (all of them when it names none: one result each)."""
        names = [self.camera] if self.camera is not None else list(cameras)
        out = []
        for name in names:
            delay_ms, timeout_ms = cameras[name]
            due = self.t + delay_ms / 1000.0
            out.append(Trigger(self.part_id, name, due, max(due, arrived_at) + timeout_ms / 1000.0, arrived_at))
        return out


def parse_trigger(payload: bytes, arrived_at: float, cameras: dict[str, tuple[float, float]]) -> list[Trigger]:
    """A trigger message -> one Trigger per camera it names. `cameras` maps each mqtt-mode camera to
    (delay_ms, timeout_ms); a message naming no camera triggers every one of them (one result each)."""
    return TriggerMessage.parse(payload, arrived_at, cameras).triggers(arrived_at, cameras)


class TriggerAdmission:
    """The entry gate for triggers (MQTT thread only): a bounded set of parts awaiting their result.

    A trigger repeated while its part is still outstanding (QoS 1 redelivery, a PLC retry) is the same
    part and gets no second result; once MAX_OUTSTANDING_TRIGGERS are outstanding, new ones are
    refused instead of piling up in memory and in every frame's matching.
    """

    def __init__(self, limit: int = MAX_OUTSTANDING_TRIGGERS) -> None:
        self.limit = limit
        self._until: dict[tuple[str, str], float] = {}  # (camera, part id) -> deadline (Unix seconds)

    def admit(self, triggers: list[Trigger], now: float | None = None) -> list[Trigger]:
        """The triggers to act on: repeats of an outstanding part are left out. Raises MessageRefused when all are
        repeats, or when they would pass the limit."""
        now = time.time() if now is None else now
        if not triggers:
            return []
        if len(self._until) + len(triggers) > self.limit:
            self._until = {k: d for k, d in self._until.items() if d > now}
        fresh = [t for t in triggers if self._until.get((t.camera, t.part_id), 0.0) <= now]
        if not fresh:
            raise TriggerRefused(TriggerRefusal.REPEATED, f"trigger {escape(triggers[0].part_id, 60)}: already "
                                 "outstanding (repeated)", triggers[0].part_id)
        if len(self._until) + len(fresh) > self.limit:
            raise TriggerRefused(TriggerRefusal.OVERLOADED, f"trigger {escape(fresh[0].part_id, 60)}: "
                                 f"{len(self._until)} triggered parts await their result already (limit {self.limit})",
                                 fresh[0].part_id)
        for t in fresh:
            self._until[(t.camera, t.part_id)] = t.deadline_at
        return fresh

    def outstanding(self, now: float | None = None) -> int:
        """Parts still awaiting their result (health file); safe from another thread."""
        now = time.time() if now is None else now
        return sum(1 for d in list(self._until.values()) if d > now)  # list(): read from another thread


# --- commands (`<base>/cmd/...`) -------------------------------------------------------------------

class CommandRefused(MessageRefused):
    """A command refused once its request id is known: it is acknowledged as refused, with this reason."""

    def __init__(self, request_id: str, reason: str) -> None:
        super().__init__(reason)
        self.request_id = request_id


def _request_id(value: object) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MessageRefused(f"'request_id' must be a string or an integer (got {type(value).__name__})")
    text = str(value)
    if not text or len(text) > MAX_REQUEST_ID_CHARS or not text.isprintable():
        raise MessageRefused(f"'request_id' {escape(text, 60)} must be 1-{MAX_REQUEST_ID_CHARS} printable characters")
    return text


def parse_recipe_command(payload: bytes, arrived_at: float, cameras: list[str], recipes: list[str]) -> RecipeRequest:
    """`<base>/cmd/recipe`: `{"request_id": ..., "recipe": <name>, "camera": <name, or absent/null: all>}`.
    MessageRefused without a usable request id (nothing to answer to), CommandRefused after it."""
    data = decode_object(payload)
    request_id = _request_id(data.get("request_id"))
    recipe = data.get("recipe")
    if not isinstance(recipe, str) or recipe not in recipes:
        raise CommandRefused(request_id, f"unknown recipe {escape(recipe, 60)} (known: {', '.join(recipes)})")
    camera = data.get("camera")
    if camera is not None and (not isinstance(camera, str) or camera not in cameras):
        raise CommandRefused(request_id, f"unknown camera {escape(camera, 60)} (known: {', '.join(cameras)})")
    return RecipeRequest(request_id, recipe, (camera,) if camera is not None else tuple(cameras), arrived_at)


MAX_ACKS_PER_MESSAGE = 1000


def _inspection_id(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 2 ** 63:
        raise MessageRefused(f"an inspection id must be a positive integer (got {escape(value, 40)})")
    return value


def parse_result_ack(payload: bytes) -> tuple[int, ...]:
    """`<base>/cmd/result_ack`: `{"inspection_id": N}` or `{"inspection_ids": [N, ...]}` (at most
    MAX_ACKS_PER_MESSAGE): the PLC has taken these results."""
    data = decode_object(payload)
    if "inspection_ids" in data:
        ids = data["inspection_ids"]
        if not isinstance(ids, list) or not ids or len(ids) > MAX_ACKS_PER_MESSAGE:
            raise MessageRefused(f"'inspection_ids' must be a list of 1-{MAX_ACKS_PER_MESSAGE} inspection ids")
        return tuple(_inspection_id(v) for v in ids)
    return (_inspection_id(data.get("inspection_id")),)
