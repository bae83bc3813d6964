"""The tests' broker and subscriber say why they fail: a port another listener holds is not taken for mosquitto,
and a subscriber that gets no SUBACK names what it saw (issue found by a suite run: a subscriber's bare
`assert connected.wait(5)` failed once with nothing to go on)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit import support
from devkit.support import Broker, Subscriber


@pytest.fixture
def silent_listener() -> Iterator[socket.socket]:
    """A TCP listener on loopback that accepts connections (the kernel's backlog) and never answers."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s
    s.close()


def test_a_started_broker_answers_mqtt_and_keeps_its_log(tmp_path: Path) -> None:
    broker = Broker(tmp_path)
    broker.start()
    try:
        sub = Subscriber(broker.port, ["a/b"])
        assert sub.seen == ["CONNACK Success"]
        sub.close()
        assert "mosquitto" in broker.log.read_text()
    finally:
        broker.stop()


def test_a_port_another_listener_holds_is_not_taken_for_the_broker(tmp_path: Path,
                                                                   silent_listener: socket.socket) -> None:
    """The port `free_port` chose was taken before mosquitto bound it: a first start moves to another port (the
    old probe took the other listener's TCP accept for mosquitto); a restart, whose clients know the port, fails
    saying why."""
    broker = Broker(tmp_path)
    taken = int(silent_listener.getsockname()[1])
    broker.use_port(taken)
    broker.start()
    try:
        assert broker.port != taken
        assert "Address already in use" in broker.log.read_text()
        sub = Subscriber(broker.port, ["a/b"])
        sub.close()
    finally:
        broker.stop()
    broker.use_port(taken)
    broker.started = True  # as after a first run on that port
    with pytest.raises(RuntimeError, match=f"mosquitto did not start on port {taken}: .*Address already in use"):
        broker.start()
    assert broker.proc is None


def test_a_subscriber_without_a_suback_names_what_it_saw(silent_listener: socket.socket,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(support, "SUBSCRIBED_S", 0.5)
    with pytest.raises(AssertionError, match=r"no SUBACK .* in 0.5 s; the client saw: nothing \(no CONNACK\)"):
        Subscriber(int(silent_listener.getsockname()[1]), ["a/b"])
