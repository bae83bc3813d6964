"""edged/collect/messages.py: what the daemon publishes becomes one row each; anything else is refused with
a reason, never an exception of another kind (outside data)."""

from __future__ import annotations

import json

import pytest

from edged.collect.messages import BadMessage, parse
from edged.payloads import Audit, Reject, Result

LINE = "acme/plant1/press-shop/line3"


def result(uid: str = "r1", station: str = "st1", defective: bool = False) -> Result:
    return Result(id=uid, station=station, camera="cam1", seq=7, part_id=None, reason="defect" if defective else "ok",
                  is_defective=defective, captured_at=1.8e9, decided_at=1.8e9 + 0.01, score=0.7, threshold=0.5,
                  confidence=0.9, regions=(), model="m")


def reject(uid: str = "j1", station: str = "st1") -> Reject:
    return Reject(id=uid, station=station, camera="cam1", part_id="p1", seq=7, captured_at=1.8e9,
                  decided_at=1.8e9 + 0.01, expires_at=1.8e9 + 2, score=0.7, threshold=0.5, confidence=0.9,
                  regions=(), model="m", frames=1, image=None)


def test_each_kind_becomes_its_row() -> None:
    r = parse(f"{LINE}/st1/result", result().to_json().encode())
    assert (r.kind, r.line, r.station, r.key, r.camera, r.seq, r.is_defective) == (
        "result", LINE, "st1", "r1", "cam1", 7, False)
    j = parse(f"{LINE}/st1/reject", reject().to_json().encode())
    assert (j.kind, j.key, j.part_id, j.expires_at) == ("reject", "j1", "p1", pytest.approx(1.8e9 + 2))
    a = parse(f"{LINE}/st1/audit", Audit(reject().to_dict()).to_json().encode())
    assert (a.kind, a.key) == ("audit", "j1")
    s = parse(f"{LINE}/st1/stats", json.dumps({"station": "st1", "at": 1.8e9, "inspected": 3}).encode())
    assert (s.kind, s.key, s.at) == ("stats", repr(1.8e9), 1.8e9)  # stats have no id: (line, station, at)


@pytest.mark.parametrize(("topic", "payload", "why"), [
    (f"{LINE}/st1/camera", b"{}", "not a station's"),
    ("result", b"{}", "not a station's"),
    (f"{LINE}/st1/result", b"\xff\xfe", "not JSON"),
    (f"{LINE}/st1/result", b"[1, 2]", "not a JSON object"),
    (f"{LINE}/st1/result", b'{"station": "st1", "score": NaN}', "not strict JSON"),
    (f"{LINE}/st1/result", b'{"station": "st1", "x": "a\\u0000b"}', "NUL"),
    (f"{LINE}/st1/result", b'{"station": "st1", "x": "\\ud800"}', "lone surrogate"),
    (f"{LINE}/st1/result", b"[" * 100_000 + b"]" * 100_000, "not JSON"),
    (f"{LINE}/st1/result", b" " * (300 * 1024), "over"),
    (f"{LINE}/st2/result", result().to_json().encode(), "not the station of its topic"),
    (f"{LINE}/st1/result", json.dumps({**result().to_dict(), "id": ""}).encode(), "'id'"),
    (f"{LINE}/st1/result", json.dumps({**result().to_dict(), "id": 5}).encode(), "'id'"),
    (f"{LINE}/st1/result", json.dumps({**result().to_dict(), "decided_at": 1e300}).encode(), "'decided_at'"),
    (f"{LINE}/st1/result", json.dumps({**result().to_dict(), "decided_at": True}).encode(), "'decided_at'"),
    (f"{LINE}/st1/result", json.dumps({**result().to_dict(), "seq": -1}).encode(), "'seq'"),
    (f"{LINE}/st1/result", json.dumps({**result().to_dict(), "is_defective": "yes"}).encode(), "'is_defective'"),
    (f"{LINE}/st1/reject", json.dumps({**reject().to_dict(), "expires_at": "soon"}).encode(), "'expires_at'"),
    (f"{LINE}/st1/audit", reject().to_json().encode(), "'expired': true"),
    (f"{LINE}/st1/stats", b'{"station": "st1"}', "'at'"),
])
def test_a_bad_message_is_refused_with_a_reason(topic: str, payload: bytes, why: str) -> None:
    with pytest.raises(BadMessage) as info:
        parse(topic, payload)
    assert why in str(info.value)
