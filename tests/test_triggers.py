"""Triggered inspection over MQTT: one result per trigger with its part id, one reject per bad part,
not_inspected (and a fail-safe reject) when the camera cannot deliver in time."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from devkit.support import Broker, Subscriber, free_port, write_spot_video

pytestmark = pytest.mark.slow

FPS = 30.0
BLOCK = 30  # frames per block: good, defective, good, defective, ...
N_FRAMES = 12 * BLOCK


def defective_frames() -> set[int]:
    return {i for i in range(N_FRAMES) if (i // BLOCK) % 2 == 1}


def publish(port: int, topic: str, payload: dict[str, object]) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"plc-{free_port()}")
    c.connect("127.0.0.1", port)
    c.loop_start()
    c.publish(topic, json.dumps(payload), qos=1).wait_for_publish(5)
    c.loop_stop()
    c.disconnect()


def wait_health(path: Path, predicate, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            h = json.loads(path.read_text())
            if predicate(h):
                return h
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"health condition not met in {timeout} s")


def test_mqtt_triggers_get_one_result_each(tmp_path: Path, tiny_bundle: Path, broker: Broker) -> None:
    video = tmp_path / "line.avi"
    write_spot_video(video, N_FRAMES, defective_frames(), fps=FPS)
    dead = f"rtsp://127.0.0.1:{free_port()}/nothing"  # nobody serves this: the camera stays unavailable
    cfg = tmp_path / "edged.yaml"
    cfg.write_text(f"""
station: test
model: {{bundle: {tiny_bundle}}}
cameras:
  - name: cam1
    source: "{video}"
    realtime: true
    fps: {FPS}
    trigger: {{mode: mqtt, delay_ms: 0, timeout_ms: 1500}}
  - name: cam2
    source: "{dead}"
    open_timeout_s: 1
    reconnect: {{initial_s: 0.5, max_s: 1}}
    trigger: {{mode: mqtt, timeout_ms: 800, fail_safe: reject}}
storage: {{state_dir: {tmp_path / "state"}}}
health: {{status_interval_s: 0.2}}
mqtt: {{host: 127.0.0.1, port: {broker.port}}}
""")
    sub = Subscriber(broker.port, ["edged/test/result", "edged/test/reject"])
    proc = subprocess.Popen([sys.executable, "-m", "edged", "run", "-c", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        health = tmp_path / "state" / "health.json"
        h = wait_health(health, lambda h: h["cameras"]["cam1"]["frames"] >= 5 and h["broker"] == "connected")
        cam = h["cameras"]["cam1"]
        start = cam["last_frame_at"] - (cam["frames"] - 1) / FPS  # wall time of frame 0

        def at_frame(k: float) -> float:
            return start + k / FPS

        # parts in the middle of blocks 2 (good), 3 (defective), 4 (good), 5 (defective), by sensor time
        plan = {"P-good-1": 2.5, "P-bad-1": 3.5, "P-good-2": 4.5, "P-bad-2": 5.5}
        for part, block in plan.items():
            due = at_frame(block * BLOCK)
            while time.time() < due - 0.05:
                time.sleep(0.01)
            publish(broker.port, "edged/test/trigger", {"part_id": part, "t": due, "camera": "cam1"})
        publish(broker.port, "edged/test/trigger", {"part_id": "P-dark", "camera": "cam2"})
        publish(broker.port, "edged/test/trigger", {"part_id": ""})  # bad trigger: ignored, logged
        results = sub.wait_for_objects("edged/test/result", len(plan) + 1, timeout=15)
        rejects = sub.wait_for_objects("edged/test/reject", 3, timeout=10)
        time.sleep(1.0)  # anything extra would arrive now
        results, rejects = sub.objects("edged/test/result"), sub.objects("edged/test/reject")
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
        sub.close()
    assert proc.returncode == 0, err
    by_part = {r["part_id"]: r for r in results}
    assert len(results) == len(by_part) == len(plan) + 1, results  # exactly one result per trigger
    for part in plan:
        assert by_part[part]["reason"] == ("defect" if "bad" in part else "ok")
        assert by_part[part]["captured_at"] >= by_part[part]["decided_at"] - 5
    assert by_part["P-dark"]["reason"] == "not_inspected"
    reject_parts = sorted(r["part_id"] for r in rejects)
    assert reject_parts == ["P-bad-1", "P-bad-2", "P-dark"]
    assert {r["reason"] for r in rejects if r["part_id"] == "P-dark"} == {"not_inspected"}
    db = sqlite3.connect(tmp_path / "state" / "edged.db")
    rows = dict(db.execute("SELECT part_id, reason FROM inspections WHERE part_id IS NOT NULL").fetchall())
    assert rows == {"P-good-1": "ok", "P-bad-1": "defect", "P-good-2": "ok", "P-bad-2": "defect",
                    "P-dark": "not_inspected"}
    # only triggered frames are inspected in mqtt mode
    assert db.execute("SELECT COUNT(*) FROM inspections").fetchone()[0] == 5
