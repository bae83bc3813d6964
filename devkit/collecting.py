"""Helpers for the collector's tests and benchmark: a collector in a thread, a publisher, the rows."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

from devkit.localbroker import free_port
from edged.collect.collector import Collector
from edged.collect.config import CollectConfig, parse_collect_config


def collect_config(broker_port: int, dsn: str, stations: Iterable[str], client_id: str | None = None,
                   **more: Any) -> CollectConfig:
    """A collect.yaml document for a loopback broker and database, validated as `edged collect` does."""
    return parse_collect_config({
        "broker": {"host": "127.0.0.1", "port": broker_port, "client_id": client_id or f"collect-{free_port()}"},
        "stations": list(stations), "postgres": {"dsn": dsn}, **more})


class CollectorRunner:
    """A real `Collector` running in a background thread until `stop()`."""

    def __init__(self, config: CollectConfig) -> None:
        self.collector = Collector(config)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="test-collector", daemon=True)

    def _run(self) -> None:
        try:
            self.collector.run()
        except BaseException as exc:  # surfaced by stop()
            self.error = exc

    def start(self, connected_within: float = 15.0) -> CollectorRunner:
        """Start, and wait until it is connected and the broker has granted its subscription (SUBACK): a message
        published before that is not for this collector, which once lost a test's first message."""
        self.thread.start()
        assert self.collector.connected.wait(connected_within), "the collector did not connect"
        assert self.collector.subscribed.wait(connected_within), "the broker did not grant the subscription"
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop and join; re-raises what the collector raised."""
        self.collector.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the collector did not stop"
        if self.error is not None:
            raise self.error


class Publisher:
    """A paho MQTT 5 client publishing at QoS 1 and waiting for each PUBACK."""

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{free_port()}",
                                  protocol=mqtt.MQTTv5)
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def send(self, topic: str, payload: str | bytes, qos: int = 1) -> None:
        """Publish and wait until the broker has it."""
        self.client.publish(topic, payload, qos=qos).wait_for_publish(10)

    def close(self) -> None:
        """Disconnect."""
        self.client.disconnect()
        self.client.loop_stop()


def table_ids(dsn: str, table: str, schema: str = "edged") -> list[str]:
    """The `id` of every row of `table` (stats: the station and time), duplicates would show twice."""
    import psycopg
    from psycopg import sql

    key = sql.SQL("station || '@' || extract(epoch FROM at)::text") if table == "stats" else sql.SQL("id")
    query = sql.SQL("SELECT {} FROM {}.{}").format(key, sql.Identifier(schema), sql.Identifier(table))
    with psycopg.connect(dsn) as conn:
        return [str(row[0]) for row in conn.execute(query).fetchall()]


def query(dsn: str, text: str) -> list[tuple[Any, ...]]:
    """Rows of one SQL query (the test's own, literal text) with search_path on the collector's schema."""
    import psycopg

    with psycopg.connect(dsn, options="-c search_path=edged") as conn:
        return conn.execute(text.encode()).fetchall()


def preload_results(port: int, prefix: str, stations: int, count: int) -> float:
    """Publish `count` result messages (the daemon's own payload) at QoS 1, spread over `stations` stations,
    as fast as the broker acknowledges them; returns the seconds it took."""
    import uuid

    import paho.mqtt.client as mqtt

    from edged.payloads import Result

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"preload-{free_port()}", protocol=mqtt.MQTTv5)
    client.max_inflight_messages_set(1000)
    client.max_queued_messages_set(0)
    client.connect("127.0.0.1", port)
    client.loop_start()
    t0 = time.perf_counter()
    infos = []
    for i in range(count):
        station = f"st{i % stations + 1}"
        now = time.time()
        payload = Result(id=uuid.uuid4().hex, station=station, camera="cam1", seq=i, part_id=None, reason="ok",
                         is_defective=False, captured_at=now, decided_at=now, score=0.1234, threshold=0.5,
                         confidence=0.9, regions=(), model="cae-128-int8").to_json()
        infos.append(client.publish(f"{prefix}/{station}/result", payload, qos=1))
    for info in infos:
        info.wait_for_publish(60)
    elapsed = time.perf_counter() - t0
    client.disconnect()
    client.loop_stop()
    return elapsed
