"""Shared test helpers (fixtures are in conftest.py): a real mosquitto broker on a free loopback port,
tiny real model bundles, generated videos, configs and MQTT subscribers."""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, TypeVar

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from devkit.localbroker import MOSQUITTO, LocalBroker, free_port  # noqa: F401 (re-exported)
from edged import jsonin
from edged.bundle import InputSpec, Manifest, ModelFile, OutputSpec, Threshold, sha256_file, write_manifest

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt
    from paho.mqtt.properties import Properties
    from paho.mqtt.reasoncodes import ReasonCode

    from edged.config import Config
    from edged.sdnotify import Notifier

# A decoded JSON object, as the daemon publishes them (results, rejects, stats, health): its values are
# whatever JSON types the message carried, for the test to compare.
JsonObject = dict[str, Any]


T = TypeVar("T")


def _wait_count(get: Callable[[], list[T]], count: int, timeout: float) -> list[T]:
    """`get()` once it holds `count` items, or what it holds after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = get()
        if len(got) >= count:
            return got
        time.sleep(0.05)
    return get()


def load_script(name: str) -> ModuleType:
    """scripts/<name>.py as a module, for the tests that check a script (the scripts are not a package)."""
    path = Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"edged_script_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def json_object(value: object) -> JsonObject:
    """`value` (a nested section of a manifest or message) as the JSON object the test expects there."""
    assert isinstance(value, dict), f"not a JSON object: {value!r}"
    return value


def json_array(value: object) -> list[Any]:
    """`value` (a nested section of a manifest or message) as the JSON array the test expects there."""
    assert isinstance(value, list), f"not a JSON array: {value!r}"
    return value

# `edged` with a switch that hangs inference while $EDGED_TEST_FREEZE_FILE exists (kept out of edged/)
FROZEN_DAEMON = Path(__file__).resolve().parents[1] / "devkit" / "frozen_daemon.py"


class Broker(LocalBroker):
    """A real mosquitto for a test; the test is skipped where mosquitto is not installed. (As root it runs
    as root: see `LocalBroker`, or a persistent broker would save nothing in pytest's 0700 tmp_path.)"""

    def start(self, timeout: float = 10.0) -> None:
        if not self.available():
            pytest.skip("mosquitto is not installed (scripts/test.sh installs it)")
        super().start(timeout)


def build_max_bundle(out: Path, size: int = 32, threshold: float = 0.5, map_threshold: float = 0.5,
                     channels: int = 1, bundle_id: str = "test-max") -> Path:
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
            file=name, sha256=sha256_file(out / name), precision=precision,
            threshold=Threshold(value=threshold, method="manual"), map_threshold=map_threshold)
    manifest = Manifest(
        bundle_id=bundle_id, method="test-max", created="2026-11-27T00:00:00Z",
        input=InputSpec(width=size, height=size, channels=channels,
                        color_order="gray" if channels == 1 else "rgb"),
        outputs=OutputSpec(score="score", map="anomaly_map"), models=models,
        runtimes=("onnxruntime", "opencv"),
    )
    write_manifest(out, manifest)
    return out


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


def read_image(path: Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """`cv2.imread` for a file the test wrote: fails naming the file where it cannot be read (imread's None)."""
    image = cv2.imread(str(path), flags)
    assert image is not None, f"cannot read the image {path}"
    return image


def write_spot_video(path: Path, n_frames: int, defective: set[int], fps: float = 30.0,
                     size: tuple[int, int] = (80, 60)) -> list[bool]:
    """An MJPG video of spot frames (readable by OpenCV's FFmpeg backend); returns the labels."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    labels = []
    for i in range(n_frames):
        writer.write(spot_frame(i in defective, size=size, seed=i))
        labels.append(i in defective)
    writer.release()
    return labels


def write_config(path: Path, bundle: Path, source: str | Path, state_dir: Path, broker_port: int | None = None,
                 extra_camera: str = "", extra: str = "", mqtt_extra: str = "") -> Path:
    """A small daemon config for tests (YAML text, as a technician would write it). The web view is off unless
    `extra` configures it (its default port 8080 is one per machine; a web test asks for port 0)."""
    more = f", {mqtt_extra}" if mqtt_extra else ""
    extra = extra if "web:" in extra else f"{extra}\nweb: {{enabled: false}}"
    mqtt = (f"mqtt: {{host: 127.0.0.1, port: {broker_port}, stats_interval_s: 1{more}}}" if broker_port
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


# How long a test's subscriber waits for the broker to grant its subscriptions: long enough for a loaded CI host
# (a loopback CONNECT-CONNACK-SUBSCRIBE-SUBACK takes milliseconds), short enough to fail a broken fixture.
SUBSCRIBED_S = 10.0


class Subscriber:
    """A real paho subscriber collecting messages per topic."""

    def __init__(self, port: int, topics: list[str]) -> None:
        import threading

        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, object, bool]] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"test-sub-{free_port()}",
                                  protocol=mqtt.MQTTv5)
        self.client.on_message = self._on_message
        self.connected = threading.Event()  # set by the SUBACK
        self.topics = topics
        self.seen: list[str] = []  # CONNACKs and disconnects, for the message when no SUBACK comes
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self.connected.wait(SUBSCRIBED_S):
            seen = ", ".join(self.seen) or "nothing (no CONNACK)"
            self.close()
            raise AssertionError(f"no SUBACK from the broker on port {port} in {SUBSCRIBED_S} s; the client saw: "
                                 f"{seen}")

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags, rc: ReasonCode,
                    props: Properties | None) -> None:
        self.seen.append(f"CONNACK {rc}")
        if not rc.is_failure:
            client.subscribe([(t, 1) for t in self.topics])

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: mqtt.DisconnectFlags, rc: ReasonCode,
                       props: Properties | None) -> None:
        self.seen.append(f"disconnect {rc}")

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, reasons: list[ReasonCode],
                      props: Properties | None) -> None:
        self.connected.set()  # connected AND subscribed: what is published from now on arrives

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        text = msg.payload.decode(errors="replace")
        try:
            payload = jsonin.loads(text)  # depth-checked: json at the recursion limit can abort the process
        except (ValueError, RecursionError):  # anything may arrive (the fuzz tests publish everywhere)
            payload = text
        with self._lock:
            self.messages.append((msg.topic, payload, bool(msg.retain)))

    def on(self, topic: str) -> list[object]:
        """Every payload on topic so far: parsed JSON when it is JSON, else the text."""
        with self._lock:
            return [p for t, p, _ in self.messages if t == topic]

    def objects(self, topic: str) -> list[JsonObject]:
        """The payloads on topic that are JSON objects (what the daemon publishes on its topics)."""
        return [p for p in self.on(topic) if isinstance(p, dict)]

    def wait_for(self, topic: str, count: int, timeout: float = 10.0) -> list[object]:
        """The payloads on topic once there are `count` of them, or all there are after `timeout` s."""
        return _wait_count(lambda: self.on(topic), count, timeout)

    def wait_for_objects(self, topic: str, count: int, timeout: float = 10.0) -> list[JsonObject]:
        """`wait_for` counting only the JSON-object payloads, which it returns."""
        return _wait_count(lambda: self.objects(topic), count, timeout)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class DurableSubscriber:
    """A paho MQTT 5 subscriber with a persistent session that reconnects quickly after a broker restart.

    With `Broker(persistence=True)` it misses nothing across an outage: QoS 1 messages published while
    it is away are queued by the broker (and saved over the restart). Keeps every raw message with its
    arrival time and MQTT 5 properties, so tests can count duplicates and check message expiry.
    """

    def __init__(self, port: int, topics: list[str], client_id: str | None = None) -> None:
        import threading

        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        self.raw: list[tuple[float, str, bytes, bool, dict[str, int]]] = []  # (time, topic, payload, retain, props)
        self._lock = threading.Lock()
        self.connects = 0
        self.connected_at: list[float] = []  # time.time() of each (re)connect
        self.connected = threading.Event()
        self.topics = topics
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"durable-{free_port()}",
                                  protocol=mqtt.MQTTv5)
        # paho annotates the delays as int; they are sleep times in seconds, and fractions work
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=0.5)  # type: ignore[arg-type]  # float is fine
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600
        self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        self.client.loop_start()
        if not self.connected.wait(SUBSCRIBED_S):
            connects = self.connects
            self.close()
            raise AssertionError(f"no SUBACK from the broker on port {port} in {SUBSCRIBED_S} s ({connects} CONNACKs)")

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: mqtt.ConnectFlags, rc: ReasonCode,
                    props: Properties | None) -> None:
        self.connects += 1
        self.connected_at.append(time.time())
        self.client.subscribe([(t, 1) for t in self.topics])

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, reasons: list[ReasonCode],
                      props: Properties | None) -> None:
        self.connected.set()  # connected AND subscribed (the SUBACK), also after each reconnect

    def _on_disconnect(self, client: mqtt.Client, userdata: object, flags: mqtt.DisconnectFlags, rc: ReasonCode,
                       props: Properties | None) -> None:
        self.connected.clear()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        props: dict[str, int] = {}  # the MQTT 5 properties the tests check
        p = getattr(msg, "properties", None)
        if p is not None and hasattr(p, "MessageExpiryInterval"):
            props["MessageExpiryInterval"] = int(p.MessageExpiryInterval)
        with self._lock:
            self.raw.append((time.time(), msg.topic, bytes(msg.payload), bool(msg.retain), props))

    def on(self, topic: str) -> list[tuple[float, object, dict[str, int]]]:
        """(arrival time, payload parsed as JSON when it is JSON, properties) for each raw message."""

        out: list[tuple[float, object, dict[str, int]]] = []
        with self._lock:
            raw = list(self.raw)
        for t, top, payload, _, props in raw:
            if top != topic:
                continue
            text = payload.decode()
            try:
                value: object = jsonin.loads(text)  # as above: the fuzz tests publish deep JSON everywhere
            except (ValueError, RecursionError):
                value = text
            out.append((t, value, props))
        return out

    def objects(self, topic: str) -> list[tuple[float, JsonObject, dict[str, int]]]:
        """`on`, for the messages whose payload is a JSON object."""
        return [(t, p, props) for t, p, props in self.on(topic) if isinstance(p, dict)]

    def ids(self, topic: str) -> list[str]:
        """The `id` of every message on topic, in arrival order, duplicates included."""
        return [str(p["id"]) for _, p, _ in self.objects(topic) if "id" in p]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class ServiceRunner:
    """An in-process `Service` running in a background thread (no signal handlers), stopped on demand."""

    def __init__(self, config: Config, notifier: Notifier | None = None) -> None:
        import threading

        from edged.sdnotify import Notifier
        from edged.service import Service

        self.service = Service(config, handle_signals=False, notifier=notifier or Notifier({}))
        self.error: BaseException | None = None
        self.exit_code: int | None = None
        self.thread = threading.Thread(target=self._run, name="test-service", daemon=True)

    def _run(self) -> None:
        try:
            self.exit_code = self.service.run()
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def start(self) -> ServiceRunner:
        self.thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.service.stop_requested.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the service did not stop"
        if self.error is not None:
            raise self.error


def open_descriptors() -> int:
    """Open file descriptors of this process, less the archive's images in flight.

    The recorder writes each image to `*.tmp` and renames it, so at any instant up to one such file per
    writer is open; counting them made a leak check race the recorder (CI once saw +3 descriptors, all of
    them `.tmp` images). A leaked socket, pipe or file is still counted.
    """
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the descriptor listdir itself used, or one closed meanwhile
            continue
        count += not target.endswith(".tmp")
    return count


def wait_until(condition: Callable[[], object], timeout: float, what: str, poll: float = 0.05) -> None:
    """Poll `condition()` until it is true; fail with `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def report_figures(name: str, figures: dict[str, object]) -> None:
    """Print measured figures (seen with `pytest -s`) and append them to $EDGED_FIGURES when set."""
    import json

    line = json.dumps({"test": name, **figures}, default=str)
    print(f"\n[figures] {line}")
    out = os.environ.get("EDGED_FIGURES")
    if out:
        with open(out, "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
