"""Shared fixtures: a real mosquitto broker on a free loopback port, and tiny real model bundles."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edged.bundle import InputSpec, Manifest, ModelFile, OutputSpec, Threshold, sha256_file, write_manifest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Broker:
    """A real mosquitto on 127.0.0.1:<port>; can be stopped and started again on the same port."""

    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
                             "max_queued_messages 10000\n")
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if not Path(MOSQUITTO).exists():
            pytest.skip("mosquitto is not installed (scripts/test.sh installs it)")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    b = Broker(tmp_path)
    b.start()
    yield b
    b.stop()


def build_max_bundle(out: Path, size: int = 32, threshold: float = 0.5, map_threshold: float = 0.5,
                     channels: int = 1) -> Path:
    """A real ONNX bundle whose anomaly map is the gray input itself and whose score is its maximum.

    Frames that are dark everywhere are good; a bright spot is a defect at the spot. Both precisions
    point at real files (identical graphs) so the daemon's whole loading path is exercised.
    """
    out.mkdir(parents=True, exist_ok=True)
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", channels, size, size])
    amap = helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["N", 1, size, size])
    score = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["anomaly_map"], keepdims=1, axes=[1]),
        helper.make_node("ReduceMax", ["anomaly_map"], ["score"], keepdims=0, axes=[1, 2, 3]),
    ]
    graph = helper.make_graph(nodes, "max", [x], [score, amap])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    models = {}
    for precision, name in (("fp32", "model.fp32.onnx"), ("int8", "model.onnx")):
        onnx.save(model, out / name)
        models[precision] = ModelFile(
            file=name, sha256=sha256_file(out / name), precision=precision,  # type: ignore[arg-type]
            threshold=Threshold(value=threshold, method="manual"), map_threshold=map_threshold)
    manifest = Manifest(
        bundle_id="test-max", method="test-max", created="2026-11-27T00:00:00Z",
        input=InputSpec(width=size, height=size, channels=channels,  # type: ignore[arg-type]
                        color_order="gray" if channels == 1 else "rgb"),
        outputs=OutputSpec(score="score", map="anomaly_map"), models=models,  # type: ignore[arg-type]
    )
    write_manifest(out, manifest)
    return out


@pytest.fixture
def tiny_bundle(tmp_path: Path) -> Path:
    return build_max_bundle(tmp_path / "bundle")


def spot_frame(defective: bool, size: tuple[int, int] = (80, 60), seed: int = 0,
               spot: tuple[int, int] = (40, 30)) -> np.ndarray:
    """A dark noisy BGR frame; with a bright 9x9 spot at `spot` (x, y) when defective."""
    rng = np.random.default_rng(seed)
    w, h = size
    img = rng.integers(10, 60, size=(h, w, 3), dtype=np.uint8)
    if defective:
        x, y = spot
        img[max(0, y - 4):y + 5, max(0, x - 4):x + 5] = 255
    return img


def write_spot_video(path: Path, n_frames: int, defective: set[int], fps: float = 30.0,
                     size: tuple[int, int] = (80, 60)) -> list[bool]:
    """An MJPG video of spot frames (readable by OpenCV's FFmpeg backend); returns the labels."""
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    labels = []
    for i in range(n_frames):
        writer.write(spot_frame(i in defective, size=size, seed=i))
        labels.append(i in defective)
    writer.release()
    return labels


def write_config(path: Path, bundle: Path, source: str | Path, state_dir: Path, broker_port: int | None = None,
                 extra_camera: str = "", extra: str = "") -> Path:
    """A small daemon config for tests (YAML text, as a technician would write it)."""
    mqtt = (f"mqtt: {{host: 127.0.0.1, port: {broker_port}, stats_interval_s: 1}}" if broker_port
            else "mqtt: {enabled: false}")
    path.write_text(f"""
station: test
model: {{bundle: {bundle}}}
cameras:
  - name: cam1
    source: "{source}"
    trigger: {{gap_ms: 0}}
{extra_camera}
storage: {{state_dir: {state_dir}}}
health: {{status_interval_s: 0.5}}
{mqtt}
{extra}
""")
    return path


class Subscriber:
    """A real paho subscriber collecting messages per topic."""

    def __init__(self, port: int, topics: list[str]) -> None:
        import json as _json
        import threading

        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, object, bool]] = []
        self._lock = threading.Lock()
        self._json = _json
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{free_port()}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.connected = threading.Event()
        self.client.on_connect = lambda c, u, f, rc, p: (c.subscribe([(t, 1) for t in topics]), self.connected.set())
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.connected.wait(5)
        time.sleep(0.2)

    def _on_message(self, client: object, userdata: object, msg: object) -> None:
        text = msg.payload.decode()  # type: ignore[attr-defined]
        try:
            payload = self._json.loads(text)
        except ValueError:
            payload = text
        with self._lock:
            self.messages.append((msg.topic, payload, bool(msg.retain)))  # type: ignore[attr-defined]

    def on(self, topic: str) -> list[object]:
        with self._lock:
            return [p for t, p, _ in self.messages if t == topic]

    def wait_for(self, topic: str, count: int, timeout: float = 10.0) -> list[object]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.on(topic)
            if len(got) >= count:
                return got
            time.sleep(0.05)
        return self.on(topic)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
