"""What comes in over MQTT, and what the broker does to us, with a real mosquitto and the real daemon.

Issue 12, part A: no input silences the daemon (a fuzz of every topic through mosquitto, then triggers
must still be answered and frames still inspected); incoming values are bounded and log lines cannot
be forged; rejects are not delayed behind results; secrets never leave the process; one instance per
state directory and per client id; a broker that refuses or drops us is reported clearly, once.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devkit.support import Broker, ServiceRunner, Subscriber, free_port, wait_until, write_config, write_spot_video
from edged.config import Config, load_config
from edged.incoming import MAX_PART_ID_CHARS, MAX_PAYLOAD_BYTES

pytestmark = pytest.mark.slow

BASE = "edged/test"
FPS = 20.0


class Publisher:
    """A PLC-like MQTT 5 client that publishes anything, QoS 1, and waits for the broker's ack."""

    def __init__(self, port: int) -> None:
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"plc-{free_port()}",
                                  protocol=mqtt.MQTTv5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, topic: str, payload: bytes | str, retain: bool = False, qos: int = 1,
             props: Properties | None = None) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain, properties=props)
        if qos:
            info.wait_for_publish(5)

    def trigger(self, part_id: object, **fields: Any) -> None:
        self.send(f"{BASE}/trigger", json.dumps({"part_id": part_id, **fields}))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def triggered_config(tmp_path: Path, bundle: Path, port: int, mqtt_extra: str = "") -> Any:
    """cam1 in trigger mode (a looping video: frames all the time, a defect every 10th), cam2 free-run."""
    video = tmp_path / "line.avi"
    write_spot_video(video, 40, {5, 15, 25, 35}, fps=FPS)
    extra_camera = f"""    loop: true
    realtime: true
    fps: {FPS}
    trigger: {{mode: mqtt, delay_ms: 0, timeout_ms: 1500}}
  - name: cam2
    source: "{video}"
    loop: true
    realtime: true
    fps: {FPS}
    trigger: {{gap_ms: 0}}"""
    path = write_config(tmp_path / "edged.yaml", bundle, video, tmp_path / "state", port, mqtt_extra=mqtt_extra)
    path.write_text(path.read_text().replace("    trigger: {gap_ms: 0}\n", extra_camera + "\n", 1))
    return load_config(path)


def answered(sub: Subscriber, parts: list[str], timeout: float = 15.0) -> dict[str, dict[str, Any]]:
    """Wait until every part has its result; returns part id -> result."""
    def results() -> dict[str, dict[str, Any]]:
        return {r["part_id"]: r for r in sub.objects(f"{BASE}/result") if r.get("part_id") in parts}
    wait_until(lambda: len(results()) == len(parts), timeout, f"results for {parts}")
    return results()


# --- the fuzz ----------------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=16)


def _trigger_like(now: float) -> st.SearchStrategy[bytes]:
    fields = st.fixed_dictionaries({}, optional={
        "part_id": json_values | st.text(max_size=300) | st.integers(),
        "camera": json_values | st.sampled_from(["cam1", "cam2", "cam9", ""]),
        "t": json_values | st.floats(now - 5000, now + 5000) | st.integers(-2 ** 70, 2 ** 70)})
    return fields.map(lambda d: json.dumps(d, allow_nan=True).encode())


NASTY = [  # the findings of issue 12, and their cousins
    b'{"part_id": ' + b"[" * 3000 + b"]" * 3000 + b"}",
    b'{"part_id": "p", "camera": ["cam1"]}', b'{"part_id": "p", "camera": {"a": 1}}',
    b'{"part_id": "p", "t": ' + b"9" * 400 + b"}", b'{"part_id": "p", "t": 1e999}',
    b'{"part_id": "p", "t": NaN}', b'{"part_id": "p", "t": -Infinity}', b'{"part_id": "p", "t": 1e15}',
    b'{"part_id": "x\\n2026-11-27 07:00:00.000 ERROR edged: forged"}', b'{"part_id": "a\\ud800"}',
    b'{"part_id": "' + b"p" * 4000 + b'"}', b"\xff\xfe", b"", b"null", b"[]", b'"part"', b"1e999",
    b'{"part_id": 123456789012345678901234567890}',
    b"x" * (MAX_PAYLOAD_BYTES + 1), b"[" * 200_000,  # over our cap; over the broker-side packet limit
]
TOPICS = [f"{BASE}/trigger", f"{BASE}/reject", f"{BASE}/status", f"{BASE}/camera/cam1", f"{BASE}/result",
          f"{BASE}/stats", f"{BASE}/audit", f"{BASE}/trigger/extra", f"{BASE}/unknown", "other/topic"]


def test_fuzz_of_every_topic_leaves_the_daemon_inspecting_and_answering_triggers(
        tmp_path: Path, tiny_bundle: Path, broker: Broker) -> None:
    cfg = triggered_config(tmp_path, tiny_bundle, broker.port)
    sub = Subscriber(broker.port, [f"{BASE}/result", f"{BASE}/reject"])
    plc = Publisher(broker.port)
    # retained before the daemon subscribes: delivered to it as retained, i.e. stale (and again on every
    # reconnect); a trigger is an event, so it is refused
    plc.send(f"{BASE}/trigger", json.dumps({"part_id": "retained", "camera": "cam1"}), retain=True)
    runner = ServiceRunner(cfg).start()
    service = runner.service
    try:
        wait_until(lambda: service.link is not None and service.link.connected and service.counters.inspected > 5,
                   20, "the daemon connected and inspecting")
        plc.trigger("before-1", camera="cam1")
        answered(sub, ["before-1"])
        sent = 0

        @settings(max_examples=300, deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(payload=st.one_of(st.sampled_from(NASTY), _trigger_like(time.time()), json_values.map(
                   lambda v: json.dumps(v, allow_nan=True).encode()), st.binary(max_size=600),
                   st.integers(0, 64).map(lambda n: b'{"part_id": "deep", "t": ' + b"[" * n * 64 + b"}")),
               topic=st.just(f"{BASE}/trigger") | st.sampled_from(TOPICS), retain=st.booleans(),
               user_props=st.booleans())
        def publish_anything(payload: bytes, topic: str, retain: bool, user_props: bool) -> None:
            nonlocal sent
            props = None
            if user_props:
                props = Properties(PacketTypes.PUBLISH)
                props.UserProperty = ("x", "y" * 300)  # (control characters: mosquitto drops the sender)
                props.ContentType = "application/json"
            plc.send(topic, payload, retain=retain and topic != f"{BASE}/trigger/extra", props=props)
            sent += 1

        publish_anything()
        plc.send(f"{BASE}/trigger", b"", retain=True)  # clear a retained trigger the fuzz may have left
        link = service.link
        assert link is not None
        inspected = service.counters.inspected

        # afterwards: the same connection (paho's thread never died), triggers answered, frames inspected
        parts = [f"after-{i}" for i in range(5)]
        for part in parts:  # one at a time: five at once would overflow the camera's 4-frame queue
            plc.trigger(part, camera="cam1", t=time.time())
            answered(sub, [part])
        results = answered(sub, parts)
        wait_until(lambda: service.counters.inspected > inspected + 20, 20, "inspection going on")
        health_file = cfg.storage.state_dir / "health.json"
        wait_until(lambda: json.loads(health_file.read_text())["mqtt"]["refused"] > 50, 10, "counts in health")
        health = json.loads(health_file.read_text())
    finally:
        plc.close()
        runner.stop()
        sub.close()
    assert sent >= 300
    assert link.refused > 50  # messages are handled in order: all were seen before the answers came
    assert link.callback_errors == 0 and link.paho_restarts == 0, "a callback raised on fuzzed input"
    assert {r["reason"] for r in results.values()} <= {"ok", "defect"}
    assert health["mqtt"]["refused"] >= 50 and health["mqtt"]["callback_errors"] == 0
    db = sqlite3.connect(cfg.storage.state_dir / "edged.db")
    stored = [p for (p,) in db.execute("SELECT part_id FROM inspections WHERE part_id IS NOT NULL")]
    # whatever the fuzz got admitted is bounded and printable: no 4000-char ids, no control characters
    assert all(len(p) <= MAX_PART_ID_CHARS and p.isprintable() for p in stored), stored
    assert set(parts) <= set(stored)
    ours = [r for r in sub.on(f"{BASE}/result") if isinstance(r, dict)]  # the fuzz published there too
    assert "retained" not in stored and all(r.get("part_id") != "retained" for r in ours)


def test_bad_triggers_are_counted_and_logged_escaped_once_per_interval(
        tmp_path: Path, tiny_bundle: Path, broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    cfg = triggered_config(tmp_path, tiny_bundle, broker.port)
    sub = Subscriber(broker.port, [f"{BASE}/result"])
    plc = Publisher(broker.port)
    caplog.set_level(logging.INFO)
    runner = ServiceRunner(cfg).start()
    service = runner.service
    try:
        wait_until(lambda: service.link is not None and service.link.connected, 20, "connected")
        link = service.link
        assert link is not None
        plc.trigger("x\n2026-11-27 07:00:00.000 ERROR edged.recorder: cam1: part FORGED NOT INSPECTED")
        for _ in range(200):  # a flood of bad messages costs one log line per interval, not 200
            plc.send(f"{BASE}/trigger", b'{"part_id": "p", "camera": ["cam1"]}')
        plc.trigger("p" * (MAX_PART_ID_CHARS + 1))
        plc.trigger("far-future", t=time.time() + 3600)  # would wait in memory for an hour
        plc.send(f"{BASE}/trigger", b'{"part_id": "never", "t": Infinity}')
        wait_until(lambda: link.refused >= 204, 10, "every bad message refused")
        plc.trigger("ok-1", camera="cam1")
        answered(sub, ["ok-1"])
        health_file = cfg.storage.state_dir / "health.json"
        wait_until(lambda: json.loads(health_file.read_text())["mqtt"]["refused"] >= 204, 10, "counts in health")
        health = json.loads(health_file.read_text())
    finally:
        plc.close()
        runner.stop()
        sub.close()
    lines = [r.getMessage() for r in caplog.records]
    refused = [line for line in lines if "refused a message" in line]
    assert 1 <= len(refused) <= 3, refused  # throttled (one per 30 s, plus the first of each kind at most)
    assert refused[0].count("\n") == 0 and "\\x0a2026-11-27" in refused[0]
    assert not any("FORGED" in line and "NOT INSPECTED" in line and "refused" not in line for line in lines)
    assert all("\n" not in line for line in lines if "trigger" in line)
    assert health["mqtt"]["refused"] >= 204 and health["mqtt"]["callback_errors"] == 0
    assert health["mqtt"]["triggers_outstanding"] <= 1
    db = sqlite3.connect(cfg.storage.state_dir / "edged.db")
    # the triggered camera's only part is the good trigger's (cam2 runs free: its defects name their own parts)
    triggered = db.execute("SELECT part_id FROM inspections WHERE camera = 'cam1' AND part_id IS NOT NULL")
    assert [p for (p,) in triggered] == ["ok-1"]


# --- one instance per state directory and per client id -------------------------------------------------

def _edged(*args: str) -> list[str]:
    return [sys.executable, "-m", "edged", *args]


def _health(state: Path) -> dict[str, Any]:
    try:
        return json.loads((state / "health.json").read_text())
    except (OSError, ValueError):
        return {}


def test_a_second_daemon_on_the_same_state_directory_refuses_to_start(
        tmp_path: Path, tiny_bundle: Path, broker: Broker) -> None:
    video = tmp_path / "line.avi"
    write_spot_video(video, 40, {5})
    state = tmp_path / "state"
    cfg = write_config(tmp_path / "edged.yaml", tiny_bundle, video, state, broker.port,
                       extra_camera="    loop: true\n    realtime: true\n    fps: 20")
    first = subprocess.Popen(_edged("run", "-c", str(cfg)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: _health(state).get("broker") == "connected", 20, "the first daemon connected")
        second = subprocess.run(_edged("run", "-c", str(cfg)), capture_output=True, text=True, timeout=60)
        replay = subprocess.run(_edged("replay", str(video), "-c", str(cfg), "--db", str(state / "edged.db")),
                                capture_output=True, text=True, timeout=60)
        assert first.poll() is None, "the first daemon must be unharmed"
        pid_file_before = (state / "edged.lock").read_text().strip()
    finally:
        first.terminate()
        _, first_err = first.communicate(timeout=30)
    assert second.returncode == 1, second.stderr
    assert f"another edged (pid {first.pid}) is running with the state directory {state}" in second.stderr
    assert "Traceback" not in second.stderr and second.stderr.startswith("edged: another edged")
    assert replay.returncode == 1 and "another edged" in replay.stderr  # a replay into the live database too
    assert pid_file_before == str(first.pid)
    assert first.returncode == 0, first_err
    assert "connection lost" not in first_err
    # the lock goes with the process: the next daemon starts (SIGKILL releases it as well: flock)
    third = subprocess.Popen(_edged("run", "-c", str(cfg)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: _health(state).get("pid") == third.pid, 20, "the next daemon running")
    finally:
        third.kill()
        third.communicate(timeout=30)


def test_replay_with_mqtt_beside_the_service_does_not_take_its_session_or_status(
        tmp_path: Path, tiny_bundle: Path, broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    video = tmp_path / "line.avi"
    write_spot_video(video, 40, {5, 25})
    cfg_path = write_config(tmp_path / "edged.yaml", tiny_bundle, video, tmp_path / "state", broker.port,
                            extra_camera="    loop: true\n    realtime: true\n    fps: 20")
    sub = Subscriber(broker.port, [f"{BASE}/status", f"{BASE}/reject"])
    caplog.set_level(logging.INFO)
    runner = ServiceRunner(load_config(cfg_path)).start()
    try:
        wait_until(lambda: runner.service.link is not None and runner.service.link.connected, 20, "service connected")
        wait_until(lambda: "online" in sub.on(f"{BASE}/status"), 10, "status online")
        before = len(sub.on(f"{BASE}/reject"))
        replay = subprocess.run(_edged("replay", str(video), "-c", str(cfg_path), "--mqtt"), capture_output=True,
                                text=True, timeout=120)
        wait_until(lambda: len(sub.on(f"{BASE}/reject")) >= before + 2, 10, "the replay's rejects")
        time.sleep(0.5)  # a takeover would show now
        link = runner.service.link
        assert link is not None and link.connected
    finally:
        runner.stop()
        sub.close()
    assert replay.returncode == 0, replay.stderr
    lines = [r.getMessage() for r in caplog.records]
    assert not [line for line in lines if "connection lost" in line or "session over" in line], lines
    assert sum("MQTT connected" in line for line in lines) == 1
    # the replay said nothing on the station's status topic: no 'offline' will, no 'stopped'
    assert sub.on(f"{BASE}/status")[-1] == "stopped"  # the service's own clean stop, last
    assert sub.on(f"{BASE}/status")[:-1] == ["online"] * (len(sub.on(f"{BASE}/status")) - 1)
    assert "-replay-" in replay.stderr and "MQTT connected" in replay.stderr


# --- outbox priority ---------------------------------------------------------------------------------------

def test_a_reject_goes_out_before_thousands_of_pending_results(tmp_path: Path, tiny_bundle: Path,
                                                               broker: Broker) -> None:
    import threading

    from edged.health import Heartbeats
    from edged.mqtt_link import MqttLink
    from edged.store import InspectionWriter, OutboxMessage, open_database

    cfg = load_config(write_config(tmp_path / "edged.yaml", tiny_bundle, tmp_path, tmp_path / "state", broker.port,
                                   mqtt_extra="outbox: {rate_per_s: 50}"))
    db_path = tmp_path / "state" / "edged.db"
    writer = InspectionWriter(open_database(db_path))
    # a trigger flood's results, waiting: at 50/s, 40 s of sending in front of anything queued behind them
    writer.record([], [OutboxMessage("result", f"{BASE}/result", {"part_id": f"p{i}"}, None) for i in range(2000)])
    sub = Subscriber(broker.port, [f"{BASE}/reject", f"{BASE}/result"])
    stop = threading.Event()
    link = MqttLink(cfg, db_path, Heartbeats(), stop)
    link.start()
    try:
        wait_until(lambda: len(sub.on(f"{BASE}/result")) >= 20, 20, "results flowing")
        deadline = time.time() + 10.0
        writer.record([], [OutboxMessage("reject", f"{BASE}/reject", {"id": "r1", "expires_at": deadline}, deadline)])
        link.wake()
        wait_until(lambda: sub.on(f"{BASE}/reject"), 15, "the reject")
        arrived = time.time()
        results_before_it = len(sub.on(f"{BASE}/result"))
    finally:
        stop.set()
        link.wake()
        link.join(10)
        sub.close()
    assert arrived < deadline and link.expired == 0
    assert results_before_it < 1000  # it overtook at least half of the flood (FIFO: behind all 2000)


# --- the recorder's fast path (MqttLink.offer) ------------------------------------------------------------

class SteppedLink:
    """An MqttLink whose thread is not started: the test takes its steps (`step`) on its own thread, so whether
    `offer` finds the link busy or caught up is the test's choice, not the scheduler's."""

    def __init__(self, tmp_path: Path, bundle: Path, port: int) -> None:
        from edged.health import Heartbeats
        from edged.mqtt_link import MqttLink
        from edged.store import InspectionWriter, Outbox, connect, open_database

        cfg = load_config(write_config(tmp_path / "edged.yaml", bundle, tmp_path, tmp_path / "state", port))
        db_path = tmp_path / "state" / "edged.db"
        self.writer = InspectionWriter(open_database(db_path))
        self.link = MqttLink(cfg, db_path, Heartbeats(), threading.Event())
        self.link.outbox = Outbox(connect(db_path))
        self.conn = self.writer.conn

    def step(self) -> bool:
        """One pass of the link's thread, here; its result (False until stopped, for `wait_until`)."""
        return self.link._step()

    def ids(self, sub: Subscriber) -> list[object]:
        """The ids of the rejects `sub` received, in arrival order."""
        return [m["id"] for m in sub.on(f"{BASE}/reject") if isinstance(m, dict)]

    def reject(self, name: str) -> list[Any]:
        """Commit one reject (as the recorder does) and return the outbox items `offer` gets."""
        from edged.store import OutboxMessage

        deadline = time.time() + 30.0
        return self.writer.record([], [OutboxMessage("reject", f"{BASE}/reject", {"id": name}, deadline)]).outbox

    def connect(self) -> None:
        wait_until(lambda: self.step() or self.link.connected, 10, "the link connected")
        self.step()  # its first look at the outbox

    def close(self) -> None:
        self.link.finish()


def test_a_committed_reject_goes_out_from_the_committing_thread_when_the_link_is_caught_up(
        tmp_path: Path, tiny_bundle: Path, broker: Broker) -> None:
    line = SteppedLink(tmp_path, tiny_bundle, broker.port)
    sub = Subscriber(broker.port, [f"{BASE}/reject"])
    try:
        line.connect()
        line.link.offer(line.reject("r1"))
        assert line.link.offered == 1  # published by offer itself: no step of the link's thread in between
        wait_until(lambda: line.ids(sub) == ["r1"], 10, "r1 at the subscriber")
        wait_until(lambda: line.step() or line.link.delivered == 1, 10, "its acknowledgement")
        # the row is what the link's own path leaves: delivered, one attempt counted
        assert line.conn.execute("SELECT state, attempts FROM outbox").fetchall() == [("delivered", 1)]
    finally:
        line.close()
        sub.close()


def test_a_reject_the_link_could_not_take_at_once_is_never_overtaken(tmp_path: Path, tiny_bundle: Path,
                                                                     broker: Broker) -> None:
    """Order is kept whatever the fast path finds. r0 waits from before the connection: r1, offered once
    connected, must wait behind it for the link's query. r2 is offered while the link's thread is in a step
    (its lock held): r3, offered when the link is free again, must wait too, until the link has fetched r2.
    After that, r4 goes out at once again."""
    line = SteppedLink(tmp_path, tiny_bundle, broker.port)
    sub = Subscriber(broker.port, [f"{BASE}/reject"])
    try:
        assert line.reject("r0")  # committed before the link ever connected, never offered
        line.link._connect()  # connect without the step's look at the outbox
        wait_until(lambda: line.link.connected, 10, "the link connected")
        line.link.offer(line.reject("r1"))
        assert line.link.offered == 0  # r0 is older and not yet fetched
        line.step()  # the link's thread: r0, r1 from the outbox
        with line.link._step_lock:  # the link's thread busy in a step
            line.link.offer(line.reject("r2"))
        line.link.offer(line.reject("r3"))
        assert line.link.offered == 0
        line.step()  # r2, r3 from the outbox, in their order
        line.link.offer(line.reject("r4"))
        assert line.link.offered == 1
        wait_until(lambda: len(sub.on(f"{BASE}/reject")) == 5, 10, "five rejects")
        assert line.ids(sub) == ["r0", "r1", "r2", "r3", "r4"]
    finally:
        line.close()
        sub.close()


# --- a broker that refuses or drops us -------------------------------------------------------------------

def _errors(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and text in r.getMessage()]


class ClosingPeer:
    """A loopback listener that reads each CONNECT and closes without a CONNACK: what a broker does to a client
    certificate it does not accept, or a port that is not an MQTT broker at all. (mqtt.prefix can no longer carry
    the control character that made mosquitto do it: the config refuses it.)"""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            with conn:
                conn.settimeout(2)
                with contextlib.suppress(OSError):
                    conn.recv(4096)

    def close(self) -> None:
        self.sock.close()


def test_a_broker_closing_before_connack_is_reported_clearly_once(
        tmp_path: Path, tiny_bundle: Path, caplog: pytest.LogCaptureFixture) -> None:
    video = tmp_path / "line.avi"
    write_spot_video(video, 40, {5})
    peer = ClosingPeer()
    cfg = load_config(write_config(tmp_path / "edged.yaml", tiny_bundle, video, tmp_path / "state", peer.port,
                                   extra_camera="    loop: true\n    realtime: true\n    fps: 20"))
    caplog.set_level(logging.INFO)
    runner = ServiceRunner(cfg).start()
    try:
        link = None
        wait_until(lambda: runner.service.link is not None and runner.service.link.connect_refusals >= 2, 20,
                   "two refused connection attempts")
        link = runner.service.link
        inspected = runner.service.counters.inspected
        wait_until(lambda: runner.service.counters.inspected > inspected, 10, "inspection going on meanwhile")
    finally:
        runner.stop()
        peer.close()
    assert link is not None and not link.connected
    assert peer.accepted >= 2
    said = _errors(caplog, "closed the connection before acknowledging it")
    assert len(said) == 1, said  # once, not on every attempt
    assert "client certificate" in said[0] and "not an MQTT broker" in said[0]


def _password_station(tmp_path: Path, tiny_bundle: Path, password: str) -> tuple[Broker, Path, Config]:
    """A started broker that accepts only edged/right, and a looping station logging in with `password` read
    from a file (returned, for the test to change)."""
    work = tmp_path / "broker"
    work.mkdir()
    passwords = work / "passwd"
    subprocess.run(["mosquitto_passwd", "-b", "-c", str(passwords), "edged", "right"], check=True,
                   capture_output=True)
    broker = Broker(work)
    broker.conf.write_text(broker.conf.read_text().replace(
        "allow_anonymous true", f"allow_anonymous false\npassword_file {passwords}"))
    broker.start()
    secret = tmp_path / "mqtt-password"
    secret.write_text(f"{password}\n")
    video = tmp_path / "line.avi"
    write_spot_video(video, 40, {5})
    cfg = load_config(write_config(tmp_path / "edged.yaml", tiny_bundle, video, tmp_path / "state", broker.port,
                                   extra_camera="    loop: true\n    realtime: true\n    fps: 20",
                                   mqtt_extra=f"username: edged, password_file: {secret}"))
    return broker, secret, cfg


def test_a_wrong_password_is_said_once_and_retried_with_backoff(
        tmp_path: Path, tiny_bundle: Path, caplog: pytest.LogCaptureFixture) -> None:
    broker, secret, cfg = _password_station(tmp_path, tiny_bundle, "wrong")
    caplog.set_level(logging.INFO)
    runner = ServiceRunner(cfg).start()
    try:
        wait_until(lambda: runner.service.link is not None and runner.service.link.connect_refusals >= 2, 30,
                   "two refused attempts")
        link = runner.service.link
        assert link is not None
        refused_at = time.monotonic()
        secret.write_text("right\n")  # the technician fixes it: read again on the next attempt, no restart
        wait_until(lambda: link.connected, 30, "connected with the right password")
        waited = time.monotonic() - refused_at
    finally:
        runner.stop()
        broker.stop()
    said = _errors(caplog, "refused the connection")
    assert len(said) == 1, said  # the default reconnect (0.5..1 s here) would have said it every second
    assert "wrong user name or password (mqtt.username, mqtt.password_file)" in said[0]
    assert waited > 1.0  # the backoff had grown (2, 4, 8 s): no attempt every second
    assert any("connected" in r.getMessage() and "failed attempt(s)" in r.getMessage() for r in caplog.records)


def test_a_password_file_that_becomes_unreadable_is_said_and_retried_while_inspection_goes_on(
        tmp_path: Path, tiny_bundle: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Read again at every connection (rotation): a file spoiled while the daemon runs is an error naming the key,
    retried with the refusal backoff; the link thread lives and connects once the file is right again."""
    broker, secret, cfg = _password_station(tmp_path, tiny_bundle, "right")
    caplog.set_level(logging.INFO)
    secret.write_bytes(b"right\xff\n")  # spoiled after the config was checked (edged run checks it at start)
    runner = ServiceRunner(cfg).start()
    try:
        wait_until(lambda: runner.service.link is not None and runner.service.link.connect_refusals >= 1, 30,
                   "the unreadable password said")
        link = runner.service.link
        assert link is not None and link.is_alive() and not link.connected
        inspected = runner.service.counters.inspected
        wait_until(lambda: runner.service.counters.inspected > inspected, 10, "inspection going on meanwhile")
        secret.write_text("right\n")
        wait_until(lambda: link.connected, 30, "connected once the file is readable")
    finally:
        runner.stop()
        broker.stop()
    said = _errors(caplog, "mqtt.password_file: cannot read")
    assert len(said) == 1 and f"{secret}: not UTF-8 text" in said[0], said
    assert "right" not in said[0].replace(str(tmp_path), "")


def test_two_links_with_one_client_id_do_not_fight_for_the_session(
        tmp_path: Path, tiny_bundle: Path, broker: Broker, caplog: pytest.LogCaptureFixture) -> None:
    """Two daemons configured with the same station on two boxes (the lock cannot see across boxes): each
    connect takes the session from the other. They back off (5 s, 10 s, ...) instead of dozens a second."""
    import threading

    from edged.health import Heartbeats
    from edged.mqtt_link import MqttLink
    from edged.store import open_database

    cfg = load_config(write_config(tmp_path / "edged.yaml", tiny_bundle, tmp_path, tmp_path / "state", broker.port))
    stop = threading.Event()
    links = []
    caplog.set_level(logging.INFO)
    for name in ("a", "b"):
        db = tmp_path / name / "edged.db"
        open_database(db).close()
        links.append(MqttLink(cfg, db, Heartbeats(), stop))
    links[0].start()
    wait_until(lambda: links[0].connected, 10, "the first link connected")
    links[1].start()
    try:
        time.sleep(6.0)  # an observation window: how often did they take the session from each other?
    finally:
        stop.set()
        for link in links:
            link.wake()
            link.join(10)
    connects = [r for r in caplog.records if r.getMessage().startswith("MQTT connected")]
    assert 2 <= len(connects) <= 8, [r.getMessage() for r in connects]  # was: 20 and more
    said = _errors(caplog, "keeps taking our session over")
    assert 1 <= len(said) <= 2 and "a second edged running with this station or mqtt.client_id" in said[0]
    assert sum(link.takeovers for link in links) >= 1


# --- secrets -------------------------------------------------------------------------------------------

def test_a_camera_password_never_leaves_the_process(tmp_path: Path, tiny_bundle: Path, broker: Broker) -> None:
    """In /stats, the health file, the log, `edged status` and `edged check-config`: masked everywhere."""
    secret = "S3cr3t-pw"
    video = tmp_path / "line.avi"
    write_spot_video(video, 40, {5})
    state = tmp_path / "state"
    camera = f"rtsp://operator:{secret}@127.0.0.1:{free_port()}/live"  # nobody serves it: reconnects, logged
    cfg = write_config(tmp_path / "edged.yaml", tiny_bundle, video, state, broker.port, extra_camera=f"""
    loop: true
    realtime: true
    fps: 20
  - name: cam2
    source: "{camera}"
    open_timeout_s: 1
    reconnect: {{initial_s: 0.2, max_s: 0.5}}""")
    sub = Subscriber(broker.port, [f"{BASE}/stats", f"{BASE}/camera/cam2"])
    proc = subprocess.Popen(_edged("run", "-c", str(cfg), "-v"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_until(lambda: _health(state).get("cameras", {}).get("cam2", {}).get("state") == "reconnecting", 30,
                   "cam2 reconnecting (its failure logged)")
        wait_until(lambda: len(sub.on(f"{BASE}/stats")) >= 2, 30, "stats on MQTT")
        status = subprocess.run(_edged("status", "-c", str(cfg)), capture_output=True, text=True, timeout=60)
        check = subprocess.run(_edged("check-config", "-c", str(cfg)), capture_output=True, text=True, timeout=60)
        health_text = (state / "health.json").read_text()
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
        sub.close()
    stats = json.dumps(sub.on(f"{BASE}/stats"))
    everything = {"stats": stats, "health": health_text, "log": out + err, "status": status.stdout + status.stderr,
                  "check-config": check.stdout + check.stderr}
    assert "cannot open rtsp://operator:***@127.0.0.1" in err  # the failure is logged, masked
    for where, text in everything.items():
        assert secret not in text, f"the camera password is in {where}"
    masked = "rtsp://operator:***@127.0.0.1"
    assert masked in health_text and masked in stats and masked in status.stdout and masked in check.stdout


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the injected death
def test_a_dead_paho_thread_is_noticed_and_replaced(tmp_path: Path, tiny_bundle: Path, broker: Broker,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """Fault injection: paho's network thread ends (as a bug in paho on odd input would end it) without
    a disconnect callback. The link must not look connected while nothing moves: it starts over."""
    cfg = triggered_config(tmp_path, tiny_bundle, broker.port)
    sub = Subscriber(broker.port, [f"{BASE}/result"])
    plc = Publisher(broker.port)
    caplog.set_level(logging.INFO)
    runner = ServiceRunner(cfg).start()
    service = runner.service
    try:
        wait_until(lambda: service.link is not None and service.link.connected, 20, "connected")
        link = service.link
        assert link is not None
        client = link._client
        assert client is not None

        def die(*args: object) -> None:
            raise SystemExit  # not an Exception: nothing in paho or in our guard catches it; the thread ends

        client.on_message = die
        plc.trigger("kills-the-thread", camera="cam1")
        wait_until(lambda: link.paho_restarts == 1, 10, "the dead thread noticed")
        wait_until(lambda: link.connected and link._client is not client, 10, "a fresh connection")
        plc.trigger("after", camera="cam1")
        answered(sub, ["after"])
        health_file = cfg.storage.state_dir / "health.json"
        wait_until(lambda: json.loads(health_file.read_text())["mqtt"]["paho_restarts"] == 1, 10, "health")
    finally:
        plc.close()
        runner.stop()
        sub.close()
    assert any("MQTT network thread ended unexpectedly" in r.getMessage() for r in caplog.records
               if r.levelno >= logging.ERROR)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def _certificate(folder: Path, name: str, ca: str | None, ip: str | None = None) -> None:
    """An EC key and a certificate: self-signed when `ca` is None, else signed by that CA."""
    key, crt = folder / f"{name}.key", folder / f"{name}.crt"
    if ca is None:
        _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                 "-keyout", str(key), "-out", str(crt), "-days", "2", "-subj", f"/CN={name}")
        return
    csr, ext = folder / f"{name}.csr", folder / f"{name}.ext"
    ext.write_text(f"subjectAltName=IP:{ip}\n" if ip else "basicConstraints=CA:FALSE\n")
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", str(key),
             "-out", str(csr), "-subj", f"/CN={name}")
    _openssl("x509", "-req", "-in", str(csr), "-CA", str(folder / f"{ca}.crt"), "-CAkey", str(folder / f"{ca}.key"),
             "-CAcreateserial", "-out", str(crt), "-days", "2", "-extfile", str(ext))


@pytest.mark.parametrize("who", ["broker refuses ours", "we refuse the broker's"])
def test_a_certificate_refused_either_way_is_reported_clearly_once(
        tmp_path: Path, tiny_bundle: Path, caplog: pytest.LogCaptureFixture, who: str) -> None:
    """The broker refusing our client certificate closes the connection before CONNACK; our refusing its
    certificate fails the handshake. Either way: one clear error, a backoff, inspection goes on."""
    certs = tmp_path / "certs"
    certs.mkdir()
    _certificate(certs, "ca", None)
    _certificate(certs, "server", "ca", ip="127.0.0.1")
    _certificate(certs, "rogue-ca", None)
    # ours signed by a CA the broker does not trust; or we trust only the rogue CA, not the broker's
    _certificate(certs, "client", "rogue-ca" if who == "broker refuses ours" else "ca")
    trusted = certs / ("ca.crt" if who == "broker refuses ours" else "rogue-ca.crt")
    work = tmp_path / "broker"
    work.mkdir()
    broker = Broker(work)
    broker.conf.write_text(broker.conf.read_text() + f"cafile {certs / 'ca.crt'}\ncertfile {certs / 'server.crt'}\n"
                           f"keyfile {certs / 'server.key'}\nrequire_certificate true\n")
    broker.start()
    video = tmp_path / "line.avi"
    write_spot_video(video, 40, {5})
    tls = (f"tls: {{enabled: true, ca_file: {trusted}, cert_file: {certs / 'client.crt'}, "
           f"key_file: {certs / 'client.key'}}}")
    cfg = load_config(write_config(tmp_path / "edged.yaml", tiny_bundle, video, tmp_path / "state", broker.port,
                                   extra_camera="    loop: true\n    realtime: true\n    fps: 20", mqtt_extra=tls))
    caplog.set_level(logging.INFO)
    runner = ServiceRunner(cfg).start()
    try:
        wait_until(lambda: runner.service.link is not None and runner.service.link.connect_refusals >= 2, 20,
                   "two refused attempts")
        inspected = runner.service.counters.inspected
        wait_until(lambda: runner.service.counters.inspected > inspected, 10, "inspection going on meanwhile")
    finally:
        runner.stop()
        broker.stop()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR and "MQTT" in r.getMessage()]
    assert len(errors) == 1, errors
    expected = ("closed the connection before acknowledging it" if who == "broker refuses ours" else
                "TLS handshake failed ([SSL: CERTIFICATE_VERIFY_FAILED]")
    assert expected in errors[0] and ("client certificate" in errors[0] or "mqtt.tls" in errors[0]), errors
