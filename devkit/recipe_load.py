"""A recipe switch under load, for tests/test_recipes_load.py and `scripts/bench.py recipes`.

The daemon runs in this process on a looped 30 fps video with one camera in trigger mode mqtt; a PLC thread
publishes a trigger every `interval_s` over a real mosquitto; recipe commands switch the camera between two
real bundles (different model ids and thresholds) while the triggers go on. What comes back is collected
as it was published, so a test can check it and the benchmark can time it.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt

from devkit.support import JsonObject, ServiceRunner, Subscriber, build_max_bundle, wait_until, write_spot_video
from edged.config import load_config

RECIPES = {"a": ("model-a", 0.5), "b": ("model-b", 0.9)}  # recipe -> (model id, threshold)


@dataclass
class SwitchLoad:
    """What one run sent and got back."""

    triggers: list[str] = field(default_factory=list)  # part ids, in the order sent
    requests: list[tuple[str, str, float]] = field(default_factory=list)  # (request id, recipe, sent at)
    results: list[JsonObject] = field(default_factory=list)
    trigger_acks: list[JsonObject] = field(default_factory=list)
    recipe_acks: list[JsonObject] = field(default_factory=list)

    def switch_ms(self) -> list[float | None]:
        """Per request: its sending to the decision of the first result on the new model (ms; None: none came)."""
        out: list[float | None] = []
        for _, recipe, sent in self.requests:
            model = RECIPES[recipe][0]
            times = [float(str(r["decided_at"])) for r in self.results
                     if r.get("model") == model and float(str(r["decided_at"])) >= sent]
            out.append(round((min(times) - sent) * 1000.0, 1) if times else None)
        return out

    def ack_ms(self) -> list[float | None]:
        """Per request: its sending to its ack's `done_at` (load and verify; ms)."""
        done = {str(a["request_id"]): float(str(a["done_at"])) for a in self.recipe_acks}
        return [round((done[rid] - sent) * 1000.0, 1) if rid in done else None for rid, _, sent in self.requests]


def _config(work: Path, port: int, video: Path, a: Path, b: Path, timeout_ms: float) -> Path:
    path = work / "edged.yaml"
    path.write_text(f"""
station: load
model: {{bundle: {a}}}
recipes: {{a: {{bundle: {a}}}, b: {{bundle: {b}, threshold: {RECIPES['b'][1]}}}}}
cameras:
  - name: cam1
    source: "{video}"
    realtime: true
    fps: 30
    loop: true
    recipe: a
    trigger: {{mode: mqtt, timeout_ms: {timeout_ms}}}
storage: {{state_dir: {work / "state"}, images: {{save: none}}}}
health: {{status_interval_s: 0.5}}
mqtt: {{host: 127.0.0.1, port: {port}, stats_interval_s: 5}}
web: {{enabled: false}}
""")
    return path


def _triggers(port: int, stop: threading.Event, interval_s: float, sent: list[str]) -> None:
    """The PLC: a trigger every `interval_s` (paced from the start, so a slow publish does not drift the rate)."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="load-plc")
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        start = time.monotonic()
        while not stop.is_set():
            part = f"T-{len(sent):05d}"
            client.publish("edged/load/trigger", json.dumps({"part_id": part, "camera": "cam1"}), qos=1)
            sent.append(part)
            stop.wait(max(0.0, start + len(sent) * interval_s - time.monotonic()))
    finally:
        client.loop_stop()
        client.disconnect()


def run(work: Path, port: int, *, seconds: float = 6.0, switches: int = 2, interval_s: float = 0.1,
        timeout_ms: float = 2000.0) -> SwitchLoad:
    """One run against the mosquitto on `port`: `switches` switches a -> b -> a ... evenly spread over `seconds`."""
    work.mkdir(parents=True, exist_ok=True)
    video = work / "line.avi"
    write_spot_video(video, 90, {i for i in range(0, 90, 3)})  # a spot every third frame: both models see it
    a = build_max_bundle(work / "a", threshold=RECIPES["a"][1], bundle_id=RECIPES["a"][0])
    b = build_max_bundle(work / "b", threshold=RECIPES["b"][1], bundle_id=RECIPES["b"][0])
    cfg = load_config(_config(work, port, video, a, b, timeout_ms))
    sub = Subscriber(port, ["edged/load/result", "edged/load/trigger/ack", "edged/load/cmd/recipe/ack"])
    runner = ServiceRunner(cfg).start()
    out = SwitchLoad()
    stop = threading.Event()
    plc = threading.Thread(target=_triggers, args=(port, stop, interval_s, out.triggers), daemon=True)
    commander = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="load-commander")
    try:
        wait_until(lambda: runner.service.link is not None and runner.service.link.connected, 20, "the broker")
        wait_until(lambda: runner.service.stats["cam1"].state == "streaming", 20, "cam1 streaming")
        commander.connect("127.0.0.1", port)
        commander.loop_start()
        plc.start()
        started = time.monotonic()
        for i in range(switches):
            time.sleep(max(0.0, started + seconds * (i + 1) / (switches + 1) - time.monotonic()))
            recipe = "b" if i % 2 == 0 else "a"
            rid = f"switch-{i}"
            out.requests.append((rid, recipe, time.time()))
            commander.publish("edged/load/cmd/recipe", json.dumps({"request_id": rid, "recipe": recipe}), qos=1)
        time.sleep(max(0.0, started + seconds - time.monotonic()))
        stop.set()
        plc.join(10)
        sub.wait_for_objects("edged/load/result", len(out.triggers), timeout=timeout_ms / 1000.0 + 15)
        time.sleep(0.5)  # anything extra would arrive now
    finally:
        stop.set()
        commander.loop_stop()
        commander.disconnect()
        runner.stop()
        sub.close()
    out.results = sub.objects("edged/load/result")
    out.trigger_acks = sub.objects("edged/load/trigger/ack")
    out.recipe_acks = sub.objects("edged/load/cmd/recipe/ack")
    return out
