"""The MQTT link's incoming dispatch table (edged/mqtt_link.py), without a broker: subscriptions come
from the table, each message goes to its topic's handler or is refused and counted. The same paths
through a real mosquitto, fuzzed, are in test_reliability_mqtt.py."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from edged.config import Config, parse_config
from edged.health import Heartbeats
from edged.incoming import MAX_PAYLOAD_BYTES, MessageRefused
from edged.mqtt_link import MqttLink, Route
from edged.topics import Topics


def _config() -> Config:
    return parse_config({"station": "line1", "model": {"bundle": "b"}, "cameras": [{"name": "cam1", "source": "0"}]})


class FakeClient:
    """What _on_connect calls on paho's client."""

    def __init__(self) -> None:
        self.subscribed: list[Any] = []
        self.published: list[tuple[str, Any]] = []

    def subscribe(self, topics: Any) -> tuple[int, int]:
        self.subscribed.append(topics)
        return 0, 1

    def publish(self, topic: str, payload: Any, qos: int = 0, retain: bool = False, properties: Any = None) -> None:
        self.published.append((topic, payload))

    def want_write(self) -> bool:
        return False  # every packet written at once


def _link(tmp_path: Path, routes: dict[str, Route]) -> MqttLink:
    return MqttLink(_config(), tmp_path / "e.db", Heartbeats(), threading.Event(), routes=routes)


def _message(topic: str, payload: bytes = b"{}", retain: bool = False) -> Any:
    return SimpleNamespace(topic=topic, payload=payload, retain=retain)


def test_subscriptions_are_the_tables_topics(tmp_path: Path) -> None:
    topics = Topics.of(_config())
    routes = {topics.trigger: Route(lambda p, t: None, "trigger"),
              topics.command("recipe"): Route(lambda p, t: None, "recipe", retained=True)}
    link = _link(tmp_path, routes)
    client = FakeClient()
    link._client = client  # type: ignore[assignment]  # a fake paho client records the calls
    link._on_connect(client, None, None, SimpleNamespace(is_failure=False), None)  # type: ignore[arg-type]  # fakes for paho
    assert client.subscribed == [[("edged/line1/trigger", 1), ("edged/line1/cmd/recipe", 1)]]
    assert ("edged/line1/status", "online") in client.published

    quiet = _link(tmp_path, {})  # no table entry: nothing subscribed (no camera in trigger mode mqtt)
    client = FakeClient()
    quiet._client = client  # type: ignore[assignment]  # a fake paho client records the calls
    quiet._on_connect(client, None, None, SimpleNamespace(is_failure=False), None)  # type: ignore[arg-type]  # fakes for paho
    assert client.subscribed == []


def test_each_message_goes_to_its_topics_handler_or_is_refused(tmp_path: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    topics = Topics.of(_config())
    got: list[tuple[str, bytes]] = []

    def on_trigger(payload: bytes, arrived_at: float) -> None:
        if payload == b"bad":
            raise MessageRefused("no part_id")
        got.append(("trigger", payload))

    routes = {topics.trigger: Route(on_trigger, "trigger"),
              topics.command("recipe"): Route(lambda p, t: got.append(("recipe", p)), "recipe", retained=True)}
    link = _link(tmp_path, routes)
    link._on_message(None, None, _message(topics.trigger, b"a"))  # type: ignore[arg-type]  # a fake message
    link._on_message(None, None, _message(topics.command("recipe"), b"r", retain=True))  # type: ignore[arg-type]  # a fake message
    assert got == [("trigger", b"a"), ("recipe", b"r")] and link.refused == 0

    for msg in (_message(topics.trigger, b"a", retain=True),  # a retained event is stale (logged: the first)
                _message(topics.trigger, b"bad"),  # the handler refuses it (the log is rate-limited from here)
                _message(topics.trigger, b"x" * (MAX_PAYLOAD_BYTES + 1)),  # over the limit, never parsed
                _message(topics.stats), _message("edged/line1/trigger/extra"), _message("other")):
        link._on_message(None, None, msg)  # type: ignore[arg-type]  # a fake message
    assert len(got) == 2 and link.refused == 6 and link.callback_errors == 0
    assert "a retained trigger (stale); publish triggers with retain false" in caplog.text


def test_a_handler_that_fails_is_a_callback_error_not_a_dead_thread(tmp_path: Path) -> None:
    def broken(payload: bytes, arrived_at: float) -> None:
        raise KeyError("a bug")

    topics = Topics.of(_config())
    link = _link(tmp_path, {topics.trigger: Route(broken, "trigger")})
    link._guarded("on_message", link._on_message)(None, None, _message(topics.trigger))
    assert link.callback_errors == 1 and link.refused == 0


class FullDiskOutbox:
    """An outbox on a full disk: reads work, every write fails as SQLite says it."""

    def mark(self, rows: list[int], state: str) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    def next_to_send(self, n: int, skip: set[int]) -> list[Any]:
        return []

    def enforce_cap(self, max_rows: int, max_results: int) -> int:
        return 0

    def backlog(self) -> int:
        return 0


def test_an_ack_that_cannot_be_recorded_does_not_hold_back_direct_rejects(tmp_path: Path) -> None:
    """The disk fills while a reject is in flight: its PUBACK cannot be marked. The step must still publish
    what the recorder sent directly (its rows could not be stored), and keep the ack for the next try."""
    link = _link(tmp_path, {})
    client = FakeClient()
    link._client = client  # type: ignore[assignment]  # a fake paho client records the calls
    link._io = SimpleNamespace(alive=lambda: True, wake=lambda: None)  # type: ignore[assignment]  # its network thread, alive
    link.outbox = FullDiskOutbox()  # type: ignore[assignment]  # a fake outbox on a full disk
    link.connected = True
    link._inflight[7] = 42
    link._inflight_rows.add(42)
    link._acks.put((7, True))
    link.publish_direct("edged/line1/reject", {"id": "r1"})
    for _ in range(3):
        assert link._step() is False  # no sqlite3.Error escapes a step
    assert [t for t, _ in client.published] == ["edged/line1/reject"]
    assert link._acked == [42] and 42 in link._inflight_rows and link.delivered == 0  # kept for the next try
    assert link.db_errors == 3
