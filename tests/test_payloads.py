"""Outgoing payloads (edged/payloads.py): the wire format, field by field and in order, spelled out here
because it is the contract with the controls engineers (README, "MQTT contract")."""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from edged.frames import CameraStamp, Frame, Region, Verdict
from edged.parts import PartEvent, Trigger
from edged.payloads import Audit, CameraState, NotInspected, Reject, Result, Stats, Status

T0 = 1_795_766_400.123456789
REGION = Region(x=212, y=88, w=40, h=12, area=310, peak=0.0912345678)


def _verdict(seq: int, at: float, score: float = 0.04123456789, part_id: str | None = None) -> Verdict:
    frame = Frame("cam1", seq, np.zeros((1, 1), np.uint8), 100.0 + seq, at, part_id=part_id)
    return Verdict(frame, score, 0.0297, score > 0.0297, 100.01 + seq, at + 0.0081234567, "cae-1",
                   (REGION,), reason="defect" if score > 0.0297 else "ok")


def test_reject_fields_order_and_rounding() -> None:
    first, best = _verdict(1234, T0), _verdict(1236, T0 + 0.066)
    event = PartEvent("cam1", first, best, 0.0, frames=3)
    reject = Reject.for_part(event, "5f0c1e", "line1", 2000.0, "/var/lib/edged/images/x.jpg")
    assert reject.to_dict() == {
        "id": "5f0c1e", "station": "line1", "camera": "cam1", "part_id": "cam1-1234", "seq": 1236,
        "reason": "defect", "captured_at": 1795766400.189457, "decided_at": 1795766400.19758,
        "expires_at": 1795766402.123457, "score": 0.041235, "threshold": 0.0297, "confidence": 1.3884,
        "regions": [{"x": 212, "y": 88, "w": 40, "h": 12, "area": 310, "peak": 0.091235}],
        "model": "cae-1", "frames": 3, "image": "/var/lib/edged/images/x.jpg", "recipe": None,
        "camera_frame_id": None, "camera_timestamp_ns": None, "inspection_id": None}
    assert list(reject.to_dict()) == ["id", "station", "camera", "part_id", "seq", "reason", "captured_at",
                                      "decided_at", "expires_at", "score", "threshold", "confidence", "regions",
                                      "model", "frames", "image", "recipe", "camera_frame_id",
                                      "camera_timestamp_ns", "inspection_id"]
    assert reject.deadline == reject.to_dict()["expires_at"]  # the outbox row expires when the message says
    assert json.loads(reject.to_json()) == reject.to_dict()


def test_a_capped_reject_runs_from_its_last_frame() -> None:
    event = PartEvent("cam1", _verdict(1, T0), _verdict(2, T0 + 1), 0.0, capped=True, last_captured_at=T0 + 4)
    assert Reject.for_part(event, "u", "s", 2000.0, None).deadline == round(T0 + 6, 6)


def test_result_fields_order_and_rounding() -> None:
    v = _verdict(7, T0, score=0.01, part_id="A-1042")
    assert Result.for_verdict(v, "u1", "line1").to_dict() == {
        "id": "u1", "station": "line1", "camera": "cam1", "seq": 7, "part_id": "A-1042", "reason": "ok",
        "is_defective": False, "captured_at": 1795766400.123457, "decided_at": 1795766400.13158, "score": 0.01,
        "threshold": 0.0297, "confidence": 0.3367,
        "regions": [{"x": 212, "y": 88, "w": 40, "h": 12, "area": 310, "peak": 0.091235}], "model": "cae-1",
        "input_ok": None, "degraded": None, "recipe": None, "camera_frame_id": None, "camera_timestamp_ns": None,
        "inspection_id": None}


def test_the_cameras_own_frame_number_and_clock_go_into_results_and_rejects() -> None:
    """A GenICam frame's block id and timestamp, so the line can match a verdict with its own records; a clock
    the camera does not give (0) is null, not a time."""
    frame = dataclasses.replace(_verdict(7, T0).frame, camera_stamp=CameraStamp(frame_id=65534, timestamp_ns=2**60))
    v = dataclasses.replace(_verdict(7, T0), frame=frame)
    result = Result.for_verdict(v, "u1", "line1").to_dict()
    assert (result["camera_frame_id"], result["camera_timestamp_ns"]) == (65534, 2**60)
    reject = Reject.for_part(PartEvent("cam1", v, v, 0.0), "u1", "line1", 2000.0, None)
    assert (reject.to_dict()["camera_frame_id"], reject.to_dict()["camera_timestamp_ns"]) == (65534, 2**60)
    assert '"camera_timestamp_ns":1152921504606846976' in reject.to_json().replace(" ", "")  # an integer, exact
    no_clock = dataclasses.replace(v, frame=dataclasses.replace(frame, camera_stamp=CameraStamp(3, 0)))
    assert Result.for_verdict(no_clock, "u", "s").to_dict()["camera_timestamp_ns"] is None


def test_not_inspected_has_nulls_where_there_is_no_verdict() -> None:
    trig = Trigger("A-1", "cam2", due_at=T0, deadline_at=T0 + 1.5, received_at=T0)
    message = NotInspected.for_trigger(trig, "u2", "line1", 2000.0, decided_at=T0 + 1.6)
    assert message.to_dict() == {
        "id": "u2", "station": "line1", "camera": "cam2", "part_id": "A-1", "seq": None, "reason": "not_inspected",
        "is_defective": None, "captured_at": None, "decided_at": 1795766401.723457,
        "triggered_at": 1795766400.123457, "expires_at": 1795766403.623457, "score": None, "threshold": None,
        "confidence": None, "regions": [], "model": None, "input_ok": None, "degraded": None,
        "recipe": None, "camera_frame_id": None, "camera_timestamp_ns": None, "inspection_id": None}
    assert message.deadline == message.to_dict()["expires_at"]


def test_audit_is_the_stored_reject_marked_expired() -> None:
    stored = '{"id": "r1", "reason": "defect", "expires_at": 12.5}'
    assert Audit.of_stored(stored).to_dict() == {"id": "r1", "reason": "defect", "expires_at": 12.5, "expired": True}
    assert Audit.of_stored(stored).to_json() == '{"id":"r1","reason":"defect","expires_at":12.5,"expired":true}'


def test_stats_from_the_health_dict_never_nan() -> None:
    health = {"station": "line1", "updated_at": T0, "inspected": 5, "rejects": 1, "cameras": {"cam1": {"fps": 2.0}},
              "latency_ms": {"p50": float("nan"), "p99": None}, "outbox_backlog": 0, "expired": 0,
              "broker": "connected", "disk": {"db_errors": 0, "images_paused": False, "db_full": False},
              "invalid_outputs": 0, "dead_threads": {}, "mqtt": {"refused": 2}}
    stats = Stats.from_health(health, cpu_percent=12.5, rss_bytes=150_123_456)
    assert list(stats.to_dict()) == ["station", "at", "inspected", "rejects", "cameras", "latency_ms",
                                     "outbox_backlog", "expired", "broker", "db_errors", "images_paused", "db_full",
                                     "invalid_outputs", "dead_threads", "mqtt", "cpu_percent", "rss_mb", "runtime",
                                     "handshake"]
    assert stats.to_dict()["rss_mb"] == 150.1
    assert json.loads(stats.to_json())["latency_ms"] == {"p50": None, "p99": None}


def test_plain_text_payloads_are_the_contract_words() -> None:
    assert [s.value for s in Status] == ["online", "offline", "stopped"]
    assert [s.value for s in CameraState] == ["starting", "streaming", "reconnecting", "failed", "finished"]
