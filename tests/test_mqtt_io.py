"""edged/mqtt_io.py: one paho client's network thread of ours, against a real mosquitto on loopback."""

from __future__ import annotations

import threading
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from devkit.support import Broker, Subscriber, wait_until
from edged.mqtt_io import ClientLoop


class Loop:
    """A client on `port` driven by a ClientLoop, recording its callbacks."""

    def __init__(self, port: int, name: str) -> None:
        self.lock = threading.RLock()
        self.acked: list[int] = []
        self.messages: list[bytes] = []
        self.broken = threading.Event()
        self.disconnected = threading.Event()
        self.connected = threading.Event()
        self.subscribed = threading.Event()
        self.name = name
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.on_publish = lambda c, u, mid, r, p: self.acked.append(mid)
        self.client.on_message = lambda c, u, m: self.messages.append(bytes(m.payload))
        self.client.on_disconnect = lambda *a: self.disconnected.set()
        self.client.connect("127.0.0.1", port)
        self.io = ClientLoop(self.client, self.lock, self.broken.set, name=f"io-{name}")
        self.io.start()
        assert self.connected.wait(5) and self.subscribed.wait(5)

    def _on_connect(self, client: mqtt.Client, *args: Any) -> None:
        client.subscribe([(f"{self.name}/in", 1)])  # in a callback: queued, written by the network thread
        self.connected.set()

    def publish(self, topic: str, payload: str) -> Any:
        with self.lock:
            info = self.client.publish(topic, payload, qos=1)
            left = self.client.want_write()
        return info, left


def test_a_publish_is_written_on_the_callers_thread_and_acknowledged(broker: Broker) -> None:
    """Why the module exists: with no paho thread, publish leaves nothing queued for another thread to write;
    the network thread reads the PUBACK and the incoming messages (paho's callbacks run there)."""
    sub = Subscriber(broker.port, ["io/out"])
    loop = Loop(broker.port, "io-a")
    try:
        info, left = loop.publish("io/out", "r1")
        assert info.rc == mqtt.MQTT_ERR_SUCCESS and left is False  # on the wire when publish returned
        wait_until(lambda: info.mid in loop.acked, 5, "the PUBACK read by the network thread")
        wait_until(lambda: sub.on("io/out") == ["r1"], 5, "delivered")
        sub.client.publish("io-a/in", b"hello", qos=1)
        wait_until(lambda: loop.messages == [b"hello"], 5, "an incoming message dispatched")
        assert loop.io.alive()
    finally:
        loop.io.stop(join_s=5)
        sub.close()
    assert not loop.io.alive() and _closed(loop.client)


def _closed(client: mqtt.Client) -> bool:
    sock = client.socket()
    return sock is None or sock.fileno() == -1


def test_a_lost_connection_ends_the_thread_after_paho_said_so(broker: Broker) -> None:
    loop = Loop(broker.port, "io-b")
    broker.stop()
    assert loop.disconnected.wait(5)  # paho's on_disconnect, on the network thread
    loop.io.thread.join(5)
    assert not loop.io.alive() and not loop.broken.is_set()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")  # the injected death
def test_a_callback_that_raises_what_nothing_catches_ends_the_thread(broker: Broker) -> None:
    """The owner's watchdog (MqttLink._check_paho_thread) relies on it: a dead thread is seen as not alive."""
    sub = Subscriber(broker.port, ["nothing"])
    loop = Loop(broker.port, "io-c")

    def die(*args: object) -> None:
        raise SystemExit

    loop.client.on_message = die
    try:
        sub.client.publish("io-c/in", b"x", qos=1)
        loop.io.thread.join(5)
        assert not loop.io.alive() and _closed(loop.client)  # closed on the way out
    finally:
        sub.close()


def test_a_socket_closed_behind_pahos_back_ends_the_thread_and_says_so(broker: Broker) -> None:
    """Whichever finds it first, paho (a read or write fails: on_disconnect) or the next select (on_broken), the
    owner is told and the thread ends."""
    loop = Loop(broker.port, "io-d")
    sock = loop.client.socket()
    assert sock is not None
    with loop.lock:  # the thread is in its select or waits for the lock: never inside paho while it closes
        sock.close()
        loop.io.wake()
    wait_until(lambda: loop.broken.is_set() or loop.disconnected.is_set(), 5, "the owner told")
    loop.io.thread.join(5)
    assert not loop.io.alive()


def test_stop_from_any_thread_and_a_wake_after_the_end_are_harmless(broker: Broker) -> None:
    loop = Loop(broker.port, "io-e")
    loop.io.stop()
    loop.io.thread.join(5)
    assert not loop.io.alive()
    loop.io.wake()  # the pair is closed: nothing raised
    loop.io.stop(join_s=1)
