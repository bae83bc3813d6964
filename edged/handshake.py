"""The handshake with the line's controller (PLC), the same whatever carries it (MQTT now; OPC UA later).

    PLC                                  edged
     |-- trigger {part_id, camera?} ------>|  checked (edged.incoming), then per camera:
     |<-- trigger/ack {accepted | reason} -|  at once: accepted, or refused (unknown_camera, not_ready,
     |                                     |  recipe_switching, bad_message, repeated, overloaded)
     |<-- result {part_id, inspection_id} -|  exactly one per accepted trigger (a verdict or not_inspected)
     |-- cmd/result_ack {inspection_id} -->|  the PLC has taken the result: no longer counted
     |<== ready/<camera> (retained) =======|  true while a trigger would be accepted

`inspection_id` is the result's row id in the station's SQLite database: it only increases, and it finds the
row (and its image) later. Results the PLC has not acknowledged are counted (`ResultAcks`); past
`MAX_UNACKNOWLEDGED` the oldest are given up and counted as overruns, so the count stays bounded and a PLC
that stopped taking results is visible in the health file and /stats.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from enum import Enum

MAX_UNACKNOWLEDGED = 1000  # results awaiting the PLC's ack; beyond, the oldest is an overrun


class TriggerRefusal(str, Enum):
    """Why a trigger was not accepted: the word in its ack's `reason`."""

    UNKNOWN_CAMERA = "unknown_camera"  # names no camera in trigger mode mqtt
    NOT_READY = "not_ready"  # the camera is reconnecting, failed or finished, or the pipeline is not running
    RECIPE_SWITCHING = "recipe_switching"  # the camera's new recipe is being loaded
    BAD_MESSAGE = "bad_message"  # not a trigger edged can read (edged.incoming's reason in `detail`)
    REPEATED = "repeated"  # the part is outstanding already (a redelivery or a PLC retry): one result only
    OVERLOADED = "overloaded"  # too many triggered parts await their result


def camera_refusal(state: str, switching: bool) -> TriggerRefusal | None:
    """Whether a camera in capture state `state` takes a trigger now (None: it does). A starting camera does: its
    trigger waits for the first frame up to `timeout_ms`, as ever."""
    if state not in ("starting", "streaming"):
        return TriggerRefusal.NOT_READY
    if switching:
        return TriggerRefusal.RECIPE_SWITCHING
    return None


class ResultAcks:
    """Results sent to the PLC and not acknowledged yet, by inspection id. The recorder adds (after the commit), the
    MQTT thread removes; a lock between them, never held for long."""

    def __init__(self, limit: int = MAX_UNACKNOWLEDGED) -> None:
        self.limit = limit
        self._waiting: OrderedDict[int, float] = OrderedDict()  # inspection id -> sent at (Unix seconds)
        self._lock = threading.Lock()
        self.acknowledged = 0
        self.overruns = 0  # results given up unacknowledged to keep the count bounded
        self.unknown = 0  # acks of an id not awaited (acknowledged twice, overrun, or never sent)

    def sent(self, ids: list[int], at: float) -> None:
        """Results committed for delivery (recorder thread)."""
        with self._lock:
            for inspection_id in ids:
                self._waiting[inspection_id] = at
            while len(self._waiting) > self.limit:
                self._waiting.popitem(last=False)
                self.overruns += 1

    def acked(self, ids: tuple[int, ...]) -> int:
        """The PLC's acks (MQTT thread); returns how many were awaited."""
        known = 0
        with self._lock:
            for inspection_id in ids:
                if self._waiting.pop(inspection_id, None) is not None:
                    known += 1
            self.acknowledged += known
            self.unknown += len(ids) - known
        return known

    def unacknowledged(self) -> int:
        """Results awaiting the PLC's ack now."""
        return len(self._waiting)

    def oldest_at(self) -> float | None:
        """When the oldest unacknowledged result was sent (None: none waits)."""
        with self._lock:
            return next(iter(self._waiting.values()), None)

    def counts(self) -> dict[str, int]:
        """The health file's handshake section."""
        return {"unacknowledged": self.unacknowledged(), "acknowledged": self.acknowledged,
                "overruns": self.overruns, "unknown_acks": self.unknown}
