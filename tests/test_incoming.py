"""Incoming MQTT messages: one place checks them, and whatever arrives is either typed and bounded or
refused with a reason that is safe to log; nothing else ever escapes (fuzzed with hypothesis)."""

from __future__ import annotations

import json
import math
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edged import incoming
from edged.incoming import MessageRefused, TriggerAdmission, decode_object, parse_trigger
from edged.parts import Trigger

MAX_PART_ID_CHARS, MAX_PAYLOAD_BYTES, MAX_T_FUTURE_S = (incoming.MAX_PART_ID_CHARS, incoming.MAX_PAYLOAD_BYTES,
                                                        incoming.MAX_T_FUTURE_S)

CAMERAS = {"cam1": (0.0, 1000.0), "cam2": (50.0, 800.0)}
NOW = 1_795_766_400.0


def refused(payload: bytes | str, cameras: dict[str, tuple[float, float]] = CAMERAS) -> str:
    raw = payload.encode() if isinstance(payload, str) else payload
    with pytest.raises(MessageRefused) as info:
        parse_trigger(raw, NOW, cameras)
    return str(info.value)


def test_a_good_trigger_names_its_part_camera_and_times() -> None:
    [trig] = parse_trigger(json.dumps({"part_id": "A-1042", "t": NOW - 0.25, "camera": "cam2"}).encode(), NOW, CAMERAS)
    assert trig == Trigger("A-1042", "cam2", NOW - 0.2, NOW + 0.8, NOW)
    both = parse_trigger(b'{"part_id": 17}', NOW, CAMERAS)
    assert [(t.part_id, t.camera, t.due_at) for t in both] == [("17", "cam1", NOW), ("17", "cam2", NOW + 0.05)]


def test_the_findings_of_issue_12_are_refused_not_raised() -> None:
    assert "nested too deeply" in refused('{"part_id": ' + "[" * 2000 + "]" * 2000 + "}")
    assert "'camera' must be a camera name (got list)" in refused('{"part_id": "p", "camera": ["cam1"]}')
    assert "'camera' must be a camera name (got dict)" in refused('{"part_id": "p", "camera": {}}')
    assert "out of range" in refused('{"part_id": "p", "t": ' + "9" * 400 + "}")  # too large for a float
    assert "out of range" in refused('{"part_id": "p", "t": 1e400}')  # parses as inf
    assert "is not a number" in refused('{"part_id": "p", "t": NaN}')
    assert "is not a number" in refused('{"part_id": "p", "t": Infinity}')
    assert "ahead of" in refused(json.dumps({"part_id": "p", "t": NOW + MAX_T_FUTURE_S + 1}))
    assert "ahead of" in refused(json.dumps({"part_id": "p", "t": 1.0}))  # 1970: a clock that is wrong
    assert "control or format" in refused(json.dumps({"part_id": "x\n2026-11-27 ERROR edged: forged"}))
    assert "control or format" in refused(json.dumps({"part_id": "a\u2028b"}))
    assert "control or format" in refused('{"part_id": "a\\ud800b"}')  # a lone surrogate: SQLite cannot store it
    assert "over the limit" in refused(json.dumps({"part_id": "p" * (MAX_PART_ID_CHARS + 1)}))
    assert "over the limit" in refused(json.dumps({"part_id": "p" * (MAX_PAYLOAD_BYTES + 1)}))
    assert "'part_id' must be a string or an integer (got bool)" in refused('{"part_id": true}')
    assert "must not be empty" in refused('{"part_id": ""}')
    assert "use a string" in refused('{"part_id": ' + "1" * 30 + "}")
    assert "not UTF-8" in refused(b'{"part_id": "\xff"}')
    assert "expected a JSON object, got list" in refused("[1, 2]")
    assert "is not a camera in trigger mode mqtt" in refused('{"part_id": "p", "camera": "cam9"}')
    assert "'t' must be Unix seconds (got str)" in refused('{"part_id": "p", "t": "now"}')
    # the refusal's text is one line, whatever the message held
    assert "\n" not in refused(json.dumps({"part_id": "p", "camera": "c\nFORGED"}))


def test_admission_bounds_outstanding_triggers_and_ignores_a_repeat() -> None:
    gate = TriggerAdmission(limit=3)
    now = time.time()

    def trig(part: str, deadline: float) -> list[Trigger]:
        return [Trigger(part, "cam1", now, deadline, now)]

    assert gate.admit(trig("a", now + 1), now) and gate.admit(trig("b", now + 1), now)
    with pytest.raises(MessageRefused, match="already outstanding"):
        gate.admit(trig("a", now + 1), now)
    gate.admit(trig("c", now + 5), now)
    with pytest.raises(MessageRefused, match="limit 3"):
        gate.admit(trig("d", now + 5), now)
    assert gate.outstanding(now) == 3
    # once their deadlines pass, the room is free again and a part id may come back
    assert gate.admit(trig("d", now + 5), now + 2) and gate.admit(trig("a", now + 5), now + 2)
    assert gate.outstanding(now + 2) == 3


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20)
trigger_like = st.fixed_dictionaries({}, optional={
    "part_id": json_values | st.text(max_size=400) | st.integers(),
    "camera": json_values | st.sampled_from(list(CAMERAS)),
    "t": json_values | st.floats(NOW - 7200, NOW + 7200) | st.integers(-2 ** 80, 2 ** 80)})


def _encode(value: object) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.one_of(trigger_like.map(_encode), json_values.map(_encode), st.binary(max_size=600),
                 st.text(max_size=600).map(str.encode)))
def test_fuzz_any_payload_is_either_a_bounded_trigger_or_refused(payload: bytes) -> None:
    try:
        triggers = parse_trigger(payload, NOW, CAMERAS)
    except MessageRefused as exc:
        text = str(exc)
        assert text.isprintable() and len(text) < 600
        return
    assert triggers and len(triggers) <= len(CAMERAS)
    for t in triggers:
        assert t.camera in CAMERAS
        assert 0 < len(t.part_id) <= MAX_PART_ID_CHARS and t.part_id.isprintable()
        assert math.isfinite(t.due_at) and math.isfinite(t.deadline_at)
        assert NOW - 3601 < t.due_at <= t.deadline_at < NOW + MAX_T_FUTURE_S + 2
        t.part_id.encode("utf-8")  # storable in SQLite, publishable in JSON


@settings(max_examples=100, deadline=None, derandomize=True)
@given(st.binary(max_size=64))
def test_fuzz_oversize_payloads_are_refused_before_parsing(head: bytes) -> None:
    payload = head + b"[" * (MAX_PAYLOAD_BYTES + 1)  # deeply nested as well: the size check comes first
    with pytest.raises(MessageRefused, match="over the limit"):
        decode_object(payload)
