"""The PLC handshake (edged.handshake): trigger acks with their reasons, inspection ids, ready flags and the
count of results the PLC has not acknowledged, on a real mosquitto against the daemon."""

from __future__ import annotations

import json
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from devkit.support import (
    Broker,
    ServiceRunner,
    Subscriber,
    build_max_bundle,
    free_port,
    wait_until,
    write_spot_video,
)
from edged.config import load_config
from edged.handshake import ResultAcks, TriggerRefusal, camera_refusal
from edged.incoming import MessageRefused, parse_result_ack
from edged.payloads import Ready, TriggerAck


def test_result_acks_count_what_waits_and_give_up_the_oldest_past_the_limit() -> None:
    acks = ResultAcks(limit=3)
    acks.sent([1, 2], at=10.0)
    assert acks.acked((1, 9)) == 1  # 9 was never sent
    acks.sent([3, 4, 5], at=11.0)  # four waiting: 2 is given up
    assert acks.counts() == {"unacknowledged": 3, "acknowledged": 1, "overruns": 1, "unknown_acks": 1}
    assert acks.acked((2,)) == 0 and acks.oldest_at() == 11.0
    assert acks.acked((3, 4, 5)) == 3 and acks.unacknowledged() == 0 and acks.oldest_at() is None


def test_a_camera_takes_triggers_while_starting_or_streaming_and_not_while_switching() -> None:
    assert camera_refusal("streaming", False) is None and camera_refusal("starting", False) is None
    for state in ("reconnecting", "failed", "finished"):
        assert camera_refusal(state, False) is TriggerRefusal.NOT_READY
    assert camera_refusal("streaming", True) is TriggerRefusal.RECIPE_SWITCHING


def test_result_acks_are_checked_where_they_enter() -> None:
    assert parse_result_ack(b'{"inspection_id": 12}') == (12,)
    assert parse_result_ack(b'{"inspection_ids": [3, 4]}') == (3, 4)
    for bad in (b'{"inspection_id": 0}', b'{"inspection_id": "12"}', b'{"inspection_id": true}',
                b'{"inspection_ids": []}', b'{"inspection_ids": [1, -2]}', b'{"inspection_ids": ' +
                json.dumps(list(range(1, 1002))).encode() + b"}", b"{}"):
        with pytest.raises(MessageRefused):
            parse_result_ack(bad)


def test_ack_and_ready_payloads() -> None:
    assert TriggerAck("s1", "P-1", "cam1", True, "", "", 5.0).to_dict() == {
        "station": "s1", "part_id": "P-1", "camera": "cam1", "result": "accepted", "reason": None, "detail": None,
        "received_at": 5.0}
    assert TriggerAck("s1", None, None, False, "bad_message", "not JSON", 5.0).to_dict()["result"] == "refused"
    assert Ready("s1", "cam1", False, "recipe_switching", "a", "model-a", 1.5).to_dict() == {
        "station": "s1", "camera": "cam1", "ready": False, "reason": "recipe_switching", "recipe": "a",
        "model": "model-a", "since": 1.5}


class _Plc:
    """A real paho client standing in for the line's controller."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-plc")
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, topic: str, body: dict[str, object] | bytes) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.client.publish(topic, data, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.mark.slow
def test_the_daemon_acknowledges_each_trigger_and_counts_results_the_plc_has_not_taken(
        tmp_path: Path, broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    video = tmp_path / "line.avi"
    write_spot_video(video, 900, set())
    bundle = build_max_bundle(tmp_path / "bundle", bundle_id="model-a")
    dead = f"rtsp://127.0.0.1:{free_port()}/nothing"  # nobody serves it: the camera stays reconnecting
    cfg = tmp_path / "edged.yaml"
    cfg.write_text(f"""
station: test
model: {{bundle: {bundle}}}
cameras:
  - name: cam1
    source: "{video}"
    realtime: true
    fps: 30
    trigger: {{mode: mqtt, timeout_ms: 5000}}
  - name: cam2
    source: "{dead}"
    open_timeout_s: 1
    reconnect: {{initial_s: 0.5, max_s: 1}}
    trigger: {{mode: mqtt, timeout_ms: 800, fail_safe: reject}}
storage: {{state_dir: {tmp_path / "state"}}}
health: {{status_interval_s: 0.2}}
mqtt: {{host: 127.0.0.1, port: {broker.port}}}
web: {{enabled: false}}
""")
    base = "edged/test"
    sub = Subscriber(broker.port, [f"{base}/trigger/ack", f"{base}/result", f"{base}/reject", f"{base}/ready/+"])
    runner = ServiceRunner(load_config(cfg)).start()
    service = runner.service
    plc: _Plc | None = None
    try:
        wait_until(lambda: service.link is not None and service.link.connected, 20, "the broker")
        wait_until(lambda: service.stats["cam1"].state == "streaming" and service.stats["cam2"].state ==
                   "reconnecting", 20, "cam1 streaming, cam2 reconnecting")
        plc = _Plc(broker.port)
        for part in ("P-0", "P-1", "P-1", "P-2"):  # P-1 twice: a PLC retry within its timeout gets one result
            plc.send(f"{base}/trigger", {"part_id": part, "camera": "cam1"})
        plc.send(f"{base}/trigger", {"part_id": "P-dead", "camera": "cam2"})
        plc.send(f"{base}/trigger", {"part_id": "P-x", "camera": "cam9"})
        plc.send(f"{base}/trigger", b"not json")
        acks = sub.wait_for_objects(f"{base}/trigger/ack", 7, timeout=10)
        results = sub.wait_for_objects(f"{base}/result", 4, timeout=15)
        time.sleep(0.5)  # anything extra would arrive now
        acks, results = sub.objects(f"{base}/trigger/ack"), sub.objects(f"{base}/result")
        ids = [int(str(r["inspection_id"])) for r in results]
        plc.send(f"{base}/cmd/result_ack", {"inspection_ids": ids[:3]})
        wait_until(lambda: service.result_acks.acknowledged == 3, 10, "the PLC's acks counted")
        health = service.health()
        ready = {str(r["camera"]): r for r in sub.objects(f"{base}/ready/cam1") + sub.objects(f"{base}/ready/cam2")}
    finally:
        if plc is not None:
            plc.close()
        runner.stop()
        sub.close()
    assert [(a["part_id"], a["camera"], a["result"], a["reason"]) for a in acks] == [
        ("P-0", "cam1", "accepted", None), ("P-1", "cam1", "accepted", None), ("P-1", "cam1", "refused", "repeated"),
        ("P-2", "cam1", "accepted", None), ("P-dead", "cam2", "refused", "not_ready"),
        ("P-x", None, "refused", "unknown_camera"), (None, None, "refused", "bad_message")], acks  # one each, in order
    assert len(results) == 4, results  # exactly one per part
    by_part = {str(r["part_id"]): r for r in results}
    assert by_part["P-dead"]["reason"] == "not_inspected"  # refused, and still its one (fail-safe) result
    said = [r.getMessage() for r in caplog.records if "P-dead" in r.getMessage() and "NOT INSPECTED" in r.getMessage()]
    assert said == ["cam2: part P-dead NOT INSPECTED (trigger refused: not_ready)"]  # not "no verdict in time"
    assert sorted(ids) == ids and len(set(ids)) == len(ids), ids  # increasing: the station's row ids
    assert {r["reason"] for p, r in by_part.items() if p != "P-dead"} == {"ok"}
    assert health["handshake"] == {"unacknowledged": 1, "acknowledged": 3, "overruns": 0, "unknown_acks": 0}
    assert ready["cam1"]["ready"] is True and ready["cam2"]["ready"] is False, ready
    assert ready["cam2"]["reason"] == "not_ready" and ready["cam1"]["model"] == "model-a"


@pytest.mark.slow
def test_a_stopped_daemon_leaves_every_ready_flag_false(tmp_path: Path, broker: Broker) -> None:
    video = tmp_path / "line.avi"
    write_spot_video(video, 300, set())
    bundle = build_max_bundle(tmp_path / "bundle")
    cfg = tmp_path / "edged.yaml"
    cfg.write_text(f"""
station: test
model: {{bundle: {bundle}}}
cameras: [{{name: cam1, source: "{video}", realtime: true, fps: 30, trigger: {{mode: mqtt}}}}]
storage: {{state_dir: {tmp_path / "state"}}}
mqtt: {{host: 127.0.0.1, port: {broker.port}}}
web: {{enabled: false}}
""")
    runner = ServiceRunner(load_config(cfg)).start()
    try:
        wait_until(lambda: runner.service._ready.get("cam1", (False, ""))[0], 20, "cam1 ready")
    finally:
        runner.stop()
    late = Subscriber(broker.port, ["edged/test/ready/cam1"])  # a late subscriber gets the retained flag
    try:
        flags = late.wait_for_objects("edged/test/ready/cam1", 1, timeout=10)
    finally:
        late.close()
    assert flags[-1]["ready"] is False and flags[-1]["reason"] == "not_ready", flags


def test_edged_status_shows_the_plc_acks_and_each_cameras_recipe() -> None:
    import io

    from edged.config import parse_config
    from edged.status import render

    cfg = parse_config({"model": {"bundle": "/b"}, "cameras": [{"name": "cam1", "source": "0"}]})
    health = {"station": "s1", "handshake": {"unacknowledged": 7, "acknowledged": 120, "overruns": 2,
                                             "unknown_acks": 1},
              "recipes": {"cam1": {"recipe": "flange-b", "model": "model-b"}},
              "cameras": {"cam1": {"state": "streaming", "source": "0"}}}
    out = io.StringIO()
    render(cfg, health, {}, None, out, now=0.0)
    lines = out.getvalue().splitlines()
    assert any(line.split() == ["plc", "acks", "unacknowledged", "7", "acknowledged", "120", "overruns", "2",
                                "unknown", "1"] for line in lines), lines
    assert any(line.split() == ["recipe", "flange-b", "model", "model-b"] for line in lines), lines
    quiet = io.StringIO()
    render(cfg, {**health, "handshake": {"unacknowledged": 0}}, {}, None, quiet, now=0.0)
    assert "plc acks" not in quiet.getvalue()  # no handshake in use: no line
