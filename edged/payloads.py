"""What edged publishes: one typed class per outgoing payload (README, "MQTT contract").

The wire format is a contract with the controls engineers and the MES: field names, their order, which
are null and how numbers are rounded. Each class holds the values as the daemon knows them and its
`to_dict()` is the only place that turns them into the message, so the format of a reject cannot drift
between the durable path, the direct path (database failing) and the audit copy. `to_json()` is strict
JSON (`edged.jsonout`: never NaN or Infinity). Plain-text payloads (status, camera state) are enums whose
value is the word on the wire.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from edged import jsonout
from edged.frames import CameraStamp, Region, Verdict
from edged.parts import PartEvent, Trigger
from edged.recipes import RecipeOutcome


def _t(seconds: float) -> float:
    """Unix seconds on the wire: microseconds."""
    return round(seconds, 6)


def _camera_keys(stamp: CameraStamp | None) -> dict[str, int | None]:
    """What the camera itself numbered the frame (GenICam: its block id and clock), for matching a result with
    the line's own records; null for cameras that give none."""
    return {"camera_frame_id": stamp.frame_id if stamp is not None else None,
            "camera_timestamp_ns": stamp.timestamp_ns if stamp is not None and stamp.timestamp_ns else None}


class Status(str, Enum):
    """`<base>/status`, retained: the daemon's presence."""

    ONLINE = "online"  # on each connection
    OFFLINE = "offline"  # the last will: the daemon vanished
    STOPPED = "stopped"  # a clean exit


class CameraState(str, Enum):
    """`<base>/camera/<name>`, retained: what the capture thread is doing."""

    STARTING = "starting"
    STREAMING = "streaming"
    RECONNECTING = "reconnecting"
    FAILED = "failed"
    FINISHED = "finished"


class Payload:
    """A JSON payload: `to_dict()` is the message, `to_json()` its strict JSON text."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """The message as published (a JSON object); each payload class defines it."""
        raise NotImplementedError

    def to_json(self) -> str:
        """The published text: strict JSON (NaN or Infinity raise instead of going out)."""
        return jsonout.dumps(self.to_dict())


@dataclass(frozen=True, slots=True)
class Reject(Payload):
    """A defective part: move it off the line before `expires_at`."""

    id: str
    station: str
    camera: str
    part_id: str
    seq: int
    captured_at: float
    decided_at: float
    expires_at: float
    score: float
    threshold: float
    confidence: float
    regions: tuple[Region, ...]
    model: str
    frames: int
    image: str | None
    recipe: str = ""  # the recipe that judged the part (edged.recipes)
    camera_stamp: CameraStamp | None = None  # the best frame's own numbering by the camera (GenICam)

    @classmethod
    def for_part(cls, event: PartEvent, uid: str, station: str, ttl_ms: float, image: str | None) -> Reject:
        """The part's best frame. The deadline runs from the part's first frame; for a part closed by its
        maximum length, from its last one: that part is still in view, and a deadline from its first
        frame would have passed already."""
        best = event.best
        start = event.last_captured_at if event.capped else event.first.frame.captured_at
        return cls(id=uid, station=station, camera=event.camera, part_id=event.part_id, seq=best.frame.seq,
                   captured_at=best.frame.captured_at, decided_at=best.decided_at,
                   expires_at=start + ttl_ms / 1000.0, score=best.score, threshold=best.threshold,
                   confidence=best.confidence, regions=best.regions, model=best.model, frames=event.frames,
                   image=image, recipe=best.recipe, camera_stamp=best.frame.camera_stamp)

    @property
    def deadline(self) -> float:
        """`expires_at` exactly as the message says it (the outbox row expires at the same instant)."""
        return _t(self.expires_at)

    def to_dict(self) -> dict[str, Any]:
        """The /reject message (its keys are the contract with the line's controller)."""
        return {
            "id": self.id, "station": self.station, "camera": self.camera, "part_id": self.part_id,
            "seq": self.seq, "reason": "defect", "captured_at": _t(self.captured_at),
            "decided_at": _t(self.decided_at), "expires_at": self.deadline, "score": round(self.score, 6),
            "threshold": round(self.threshold, 6), "confidence": round(self.confidence, 4),
            "regions": [r.to_dict() for r in self.regions], "model": self.model, "frames": self.frames,
            "image": self.image, "recipe": self.recipe or None, **_camera_keys(self.camera_stamp),
            "inspection_id": None,  # filled in with the row id as the outbox row is written (edged.store)
        }


@dataclass(frozen=True, slots=True)
class NotInspected(Payload):
    """A triggered part that got no verdict in time: its result, and with `fail_safe: reject` its reject
    (the same message on both topics): the line must not ship it as inspected."""

    id: str
    station: str
    camera: str
    part_id: str
    decided_at: float
    triggered_at: float
    expires_at: float
    input_ok: bool | None = None  # the frame's input health when one was taken (degraded camera), else null
    degraded: str = ""  # why: the camera's degraded reason (input_health.on_degraded: not_inspected)
    camera_stamp: CameraStamp | None = None  # the frame's numbering by the camera, when a frame was taken

    @classmethod
    def for_trigger(cls, trig: Trigger, uid: str, station: str, ttl_ms: float, decided_at: float) -> NotInspected:
        """The result of a triggered part with no verdict by its deadline; it expires `ttl_ms` after that."""
        return cls(id=uid, station=station, camera=trig.camera, part_id=trig.part_id, decided_at=decided_at,
                   triggered_at=trig.due_at, expires_at=trig.deadline_at + ttl_ms / 1000.0)

    @property
    def deadline(self) -> float:
        """Unix seconds after which this message must not actuate anything (the outbox expires it)."""
        return _t(self.expires_at)

    def to_dict(self) -> dict[str, Any]:
        """The /result (and, fail-safe, /reject) message of a part not inspected: the verdict's fields are null."""
        return {
            "id": self.id, "station": self.station, "camera": self.camera, "part_id": self.part_id, "seq": None,
            "reason": "not_inspected", "is_defective": None, "captured_at": None,
            "decided_at": _t(self.decided_at), "triggered_at": _t(self.triggered_at), "expires_at": self.deadline,
            "score": None, "threshold": None, "confidence": None, "regions": [], "model": None,
            "input_ok": self.input_ok, "degraded": self.degraded or None, "recipe": None,
            **_camera_keys(self.camera_stamp),
            "inspection_id": None,  # filled in with the row id as the outbox row is written (edged.store)
        }


@dataclass(frozen=True, slots=True)
class Result(Payload):
    """One verdict (`mqtt.publish_results`, and always for a triggered part)."""

    id: str
    station: str
    camera: str
    seq: int
    part_id: str | None
    reason: str
    is_defective: bool
    captured_at: float
    decided_at: float
    score: float
    threshold: float
    confidence: float
    regions: tuple[Region, ...]
    model: str
    input_ok: bool | None = None  # the frame's input health (edged.input_health); null when it is off
    degraded: str = ""  # the camera's degraded reason when the frame was captured ('' when not)
    recipe: str = ""  # the recipe whose model and threshold judged the frame (edged.recipes)
    camera_stamp: CameraStamp | None = None  # the frame's own numbering by the camera (GenICam)

    @classmethod
    def for_verdict(cls, v: Verdict, uid: str, station: str, part_id: str | None = None) -> Result:
        """The result of one inspected frame; `part_id` the free-run part a defective frame belongs to (else the
        trigger's, on the frame)."""
        flag = v.frame.input
        return cls(id=uid, station=station, camera=v.frame.camera, seq=v.frame.seq,
                   part_id=part_id or v.frame.part_id,
                   reason=v.reason, is_defective=v.is_defective, captured_at=v.frame.captured_at,
                   decided_at=v.decided_at, score=v.score, threshold=v.threshold, confidence=v.confidence,
                   regions=v.regions, model=v.model, input_ok=flag.ok if flag is not None else None,
                   degraded=v.degraded, recipe=v.recipe, camera_stamp=v.frame.camera_stamp)

    def to_dict(self) -> dict[str, Any]:
        """The /result message."""
        return {
            "id": self.id, "station": self.station, "camera": self.camera, "seq": self.seq,
            "part_id": self.part_id, "reason": self.reason, "is_defective": self.is_defective,
            "captured_at": _t(self.captured_at), "decided_at": _t(self.decided_at),
            "score": round(self.score, 6), "threshold": round(self.threshold, 6),
            "confidence": round(self.confidence, 4), "regions": [r.to_dict() for r in self.regions],
            "model": self.model, "input_ok": self.input_ok, "degraded": self.degraded or None,
            "recipe": self.recipe or None, **_camera_keys(self.camera_stamp),
            "inspection_id": None,  # the row id when sent through the outbox (a triggered part's result)
        }


@dataclass(frozen=True, slots=True)
class RecipeAck(Payload):
    """`<base>/cmd/recipe/ack`: the answer to one recipe command, after its model was loaded and verified (switched)
    or not (refused: the cameras keep the recipe named in `current`)."""

    station: str
    request_id: str
    recipe: str | None  # as asked, when it could be read
    cameras: tuple[str, ...]
    switched: bool
    reason: str
    model: str | None
    current: Mapping[str, str]  # camera -> the recipe it runs after this request
    requested_at: float
    done_at: float

    @classmethod
    def of(cls, outcome: RecipeOutcome, station: str, current: Mapping[str, str]) -> RecipeAck:
        """The answer to a request that reached the switcher."""
        r = outcome.request
        return cls(station, r.request_id, r.recipe, r.cameras, outcome.ok, outcome.reason, outcome.model,
                   current, r.received_at, outcome.done_at)

    def to_dict(self) -> dict[str, Any]:
        """The ack message."""
        return {"station": self.station, "request_id": self.request_id, "recipe": self.recipe,
                "cameras": list(self.cameras), "result": "switched" if self.switched else "refused",
                "reason": self.reason or None, "model": self.model, "current": dict(self.current),
                "requested_at": _t(self.requested_at), "done_at": _t(self.done_at)}


@dataclass(frozen=True, slots=True)
class TriggerAck(Payload):
    """`<base>/trigger/ack`: one per camera a trigger named (or one with `camera` null for a message that names
    none readably): accepted, or refused with a reason word (edged.handshake.TriggerRefusal) and its detail."""

    station: str
    part_id: str | None
    camera: str | None
    accepted: bool
    reason: str  # '' when accepted
    detail: str  # safe text (edged.incoming's escaped reason)
    received_at: float

    def to_dict(self) -> dict[str, Any]:
        """The trigger ack message."""
        return {"station": self.station, "part_id": self.part_id, "camera": self.camera,
                "result": "accepted" if self.accepted else "refused", "reason": self.reason or None,
                "detail": self.detail or None, "received_at": _t(self.received_at)}


@dataclass(frozen=True, slots=True)
class Ready(Payload):
    """`<base>/ready/<camera>`, retained: whether a trigger for the camera would be accepted now, and why not."""

    station: str
    camera: str
    ready: bool
    reason: str  # '' when ready
    recipe: str
    model: str
    since: float

    def to_dict(self) -> dict[str, Any]:
        """The ready flag."""
        return {"station": self.station, "camera": self.camera, "ready": self.ready, "reason": self.reason or None,
                "recipe": self.recipe, "model": self.model, "since": _t(self.since)}


@dataclass(frozen=True, slots=True)
class Alarm(Payload):
    """`<base>/alarm/<camera>`, retained while the camera is degraded: the camera changed, not the parts (too_dark,
    too_bright, out_of_focus, noisy, blocked, frozen: its input; reject_rate: a flood of rejects). Cleared by an empty
    retained message (which deletes the retained alarm at the broker: a late subscriber sees none)."""

    station: str
    camera: str
    reasons: tuple[str, ...]  # every active reason; the first is the one shown
    since: float  # Unix seconds the first active reason was raised
    on_degraded: str  # what the station does with verdicts meanwhile: judge | not_inspected
    detail: Mapping[str, float | None]  # the statistics that raised it (edged.input_health, units there)

    def to_dict(self) -> dict[str, Any]:
        """The alarm message."""
        return {"station": self.station, "camera": self.camera, "state": "degraded", "reason": self.reasons[0],
                "reasons": list(self.reasons), "since": _t(self.since), "on_degraded": self.on_degraded,
                "detail": dict(self.detail)}


@dataclass(frozen=True, slots=True)
class Audit(Payload):
    """A reject that expired before delivery, told to the MES: the stored reject plus `"expired": true`.

    It is made from the outbox row's text (whatever reject shape was stored, by this or an older version),
    so it carries the reject's fields as they were sent, not re-derived ones."""

    reject: Mapping[str, Any]

    @classmethod
    def of_stored(cls, payload: str) -> Audit:
        """The audit message for an expired reject, from the payload stored in the outbox."""
        return cls(json.loads(payload))

    def to_dict(self) -> dict[str, Any]:
        """The stored reject marked `expired: true`: to /audit, never to /reject."""
        return {**self.reject, "expired": True}


@dataclass(frozen=True, slots=True)
class Stats(Payload):
    """Every `mqtt.stats_interval_s`: a summary of the health file plus the process's CPU and memory."""

    station: str
    at: float
    inspected: int
    rejects: int
    cameras: Mapping[str, Any]
    latency_ms: Mapping[str, float | None]
    outbox_backlog: int
    expired: int
    broker: str
    db_errors: int
    images_paused: bool
    db_full: bool
    invalid_outputs: int
    dead_threads: Mapping[str, str]
    mqtt: Mapping[str, int]
    cpu_percent: float
    rss_bytes: int
    runtime: str = ""  # what runs the model and how it was chosen: "openvino/fp32 (auto)"
    handshake: Mapping[str, int] = field(default_factory=dict)  # results the PLC has not acknowledged, overruns

    @classmethod
    def from_health(cls, h: Mapping[str, Any], cpu_percent: float, rss_bytes: int) -> Stats:
        """`h` is the service's health dict (the same numbers as the health file, never two counts)."""
        disk = h["disk"]
        return cls(station=h["station"], at=h["updated_at"], inspected=h["inspected"], rejects=h["rejects"],
                   cameras=h["cameras"], latency_ms=h["latency_ms"], outbox_backlog=h["outbox_backlog"],
                   expired=h["expired"], broker=h["broker"], db_errors=disk["db_errors"],
                   images_paused=disk["images_paused"], db_full=disk["db_full"],
                   invalid_outputs=h["invalid_outputs"], dead_threads=h["dead_threads"], mqtt=h["mqtt"],
                   cpu_percent=cpu_percent, rss_bytes=rss_bytes, runtime=runtime_label(h),
                   handshake=h.get("handshake", {}))

    def to_dict(self) -> dict[str, Any]:
        """The /stats message."""
        return {"station": self.station, "at": self.at, "inspected": self.inspected, "rejects": self.rejects,
                "cameras": self.cameras, "latency_ms": self.latency_ms, "outbox_backlog": self.outbox_backlog,
                "expired": self.expired, "broker": self.broker, "db_errors": self.db_errors,
                "images_paused": self.images_paused, "db_full": self.db_full,
                "invalid_outputs": self.invalid_outputs, "dead_threads": self.dead_threads, "mqtt": self.mqtt,
                "cpu_percent": self.cpu_percent, "rss_mb": round(self.rss_bytes / 1e6, 1), "runtime": self.runtime,
                "handshake": dict(self.handshake)}


def runtime_label(h: Mapping[str, Any]) -> str:
    """`runtime/precision (auto|explicit)` from the health dict's runtime_choice (model.runtime, issue 19)."""
    choice = h.get("runtime_choice")
    if not isinstance(choice, Mapping):
        return str(h.get("runtime", ""))
    return f"{choice.get('runtime', '?')}/{choice.get('precision', '?')} ({choice.get('mode', '?')})"
