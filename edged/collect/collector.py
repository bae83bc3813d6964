"""The collector's MQTT side and its loop: take a batch, record it, commit, and only then acknowledge.

paho receives with `manual_ack`: a QoS 1 message is acknowledged to the broker after its row is
committed in PostgreSQL, never before, so a collector that dies (or a database that fails) loses
nothing: the broker keeps the unacknowledged messages in the collector's persistent session
(clean_start false, a session expiry, a stable client id) and redelivers them, and the primary keys
make a redelivery a no-op. The subscriptions are MQTT 5 shared ones (`$share/<group>/...`), so the
collectors of a group split the load. A bad message is logged (escaped), counted and acknowledged: it
could never be recorded, and leaving it unacknowledged would block the session.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from edged.backoff import backoff_delay
from edged.collect.config import CollectConfig
from edged.collect.messages import BadMessage, Record, parse
from edged.collect.store import PgStore, StoreDown, Written
from edged.safetext import escape
from edged.topics import collector_filters

if TYPE_CHECKING:
    import paho.mqtt.client as mqtt

log = logging.getLogger("edged.collect")

BAD_LOGGED_PER_MINUTE = 20  # a flood of bad messages is counted, not written to the journal line by line
SUMMARY_EVERY_S = 60.0


@dataclass(frozen=True, slots=True)
class Incoming:
    """A message as paho delivered it; `generation` is the connection it came on (acks go to that one only)."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    generation: int


@dataclass(slots=True)
class Counts:
    """What this collector did since it started (written by the loop's thread only, except `received`)."""

    received: int = 0
    recorded: int = 0
    duplicates: int = 0
    bad: int = 0
    refused: int = 0
    batches: int = 0
    store_errors: int = 0


class Collector:
    """One collector: `run()` until `stop` is set; thread-safe to stop from a signal handler or a test."""

    def __init__(self, config: CollectConfig, stop: threading.Event | None = None) -> None:
        self.config = config
        self.stop = stop or threading.Event()
        self.counts = Counts()
        self.connected = threading.Event()
        self.subscribed = threading.Event()  # the broker granted every filter (its SUBACK): messages flow from here
        self._inbox: queue.Queue[Incoming] = queue.Queue()
        self._store = PgStore(config.postgres)
        self._generation = 0
        self._rng = random.Random()
        self._bad_window = (0.0, 0)  # (minute start, logged in it)
        self._client: mqtt.Client | None = None

    # --- MQTT (paho's thread) -------------------------------------------------------------------------
    def _new_client(self) -> mqtt.Client:
        import paho.mqtt.client as mqtt
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        b = self.config.broker
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=b.resolved_client_id(),
                             protocol=mqtt.MQTTv5, manual_ack=True)
        if b.username:
            client.username_pw_set(b.username, b.read_password())
        if b.tls.enabled:
            client.tls_set(ca_certs=str(b.tls.ca_file) if b.tls.ca_file else None,
                           certfile=str(b.tls.cert_file) if b.tls.cert_file else None,
                           keyfile=str(b.tls.key_file) if b.tls.key_file else None)
            client.tls_insecure_set(b.tls.insecure)
        # soon back after a broker restart: mosquitto 2.0 does not restore shared subscriptions from its
        # persistence, so what the bridges forward before the collectors resubscribe is not queued for them
        client.reconnect_delay_set(1, 5)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = b.session_expiry_s
        props.ReceiveMaximum = self.config.batch_size
        client.connect_async(b.host, b.port, b.keepalive_s, clean_start=False, properties=props)
        return client

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        try:
            if reason.is_failure:
                log.error("the central broker refused the connection: %s", escape(str(reason)))
                return
            self._generation += 1
            filters = collector_filters(self.config.stations, self.config.share_group)
            client.subscribe([(f, 1) for f in filters])
            log.info("connected to %s:%d (session %s), subscribing to %s", self.config.broker.host,
                     self.config.broker.port, "resumed" if flags.session_present else "new", ", ".join(filters))
            self.connected.set()
        except Exception:  # paho's thread must live: a bug here is logged, never raised into paho
            log.exception("on_connect failed")

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: list[Any], props: Any) -> None:
        """The broker's SUBACK. A refused filter (the broker's ACL) is said loudly: nothing would arrive for it."""
        try:
            refused = [str(r) for r in reasons if r.is_failure]
            if refused:
                log.error("the central broker refused the subscription (%s): nothing is collected for those filters",
                          escape(", ".join(refused)))
                return
            if not self.subscribed.is_set():
                log.info("the central broker granted the subscription")
            self.subscribed.set()
        except Exception:  # paho's thread must live
            log.exception("on_subscribe failed")

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        self.connected.clear()
        self.subscribed.clear()
        if not self.stop.is_set():
            log.warning("lost the central broker (%s); reconnecting", escape(str(reason)))

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            self.counts.received += 1
            self._inbox.put(Incoming(msg.topic, bytes(msg.payload), msg.mid, msg.qos, self._generation))
        except Exception:  # a malformed packet must not end paho's thread
            log.exception("on_message failed")

    # --- the loop (the caller's thread) ----------------------------------------------------------------
    def run(self) -> int:
        """Connect, record until `stop`, disconnect keeping the session. Returns the exit code (0)."""
        self._connect_store()
        if self.stop.is_set():
            return 0
        self._client = self._new_client()
        self._client.loop_start()
        started_at, last_summary = time.time(), time.monotonic()
        self._report(started_at)
        try:
            while not self.stop.is_set():
                batch = self._take()
                if batch:
                    self._process(batch)
                if time.monotonic() - last_summary >= SUMMARY_EVERY_S:
                    last_summary = time.monotonic()
                    log.info("collected: %s", self.counts)
                    self._report(started_at)
        finally:
            self._client.disconnect()  # the session (and its queue) stays at the broker until it expires
            self._client.loop_stop()
            self._report(started_at)
            self._store.close()
        return 0

    def _report(self, started_at: float) -> None:
        """This collector's counts into the `collectors` table; a failure is logged, never raised."""
        try:
            self._store.report(self.config.broker.resolved_client_id(), started_at, asdict(self.counts))
        except StoreDown as exc:
            log.warning("cannot record the collector's counts: %s", escape(str(exc), 300))

    def _connect_store(self) -> None:
        attempt = 0
        while not self.stop.is_set():
            try:
                self._store.connect()
                return
            except StoreDown as exc:
                attempt += 1
                self.counts.store_errors += 1
                log.warning("%s; retrying", escape(str(exc), 300))
                self.stop.wait(backoff_delay(attempt, 1.0, 30.0, 0.2, self._rng))

    def _take(self) -> list[Incoming]:
        """Up to batch_size messages: the first waited for briefly, the rest for at most batch_ms."""
        try:
            batch = [self._inbox.get(timeout=0.2)]
        except queue.Empty:
            return []
        deadline = time.monotonic() + self.config.batch_ms / 1000.0
        while len(batch) < self.config.batch_size:
            try:
                batch.append(self._inbox.get(timeout=max(0.0, deadline - time.monotonic())))
            except queue.Empty:
                break
        return batch

    def _process(self, batch: list[Incoming]) -> None:
        records: list[Record] = []
        for m in batch:
            try:
                records.append(parse(m.topic, m.payload))
            except BadMessage as exc:
                self._bad(m, str(exc))
            except Exception as exc:  # outside data must never end the loop
                self._bad(m, f"unexpected {type(exc).__name__}")
        written = self._write(records) if records else Written(0, 0, 0)
        if written is None:  # stopping before the database came back: not acknowledged, so redelivered
            return
        self.counts.batches += 1
        self.counts.recorded += written.new
        self.counts.duplicates += written.duplicates
        self.counts.refused += written.refused
        self._ack(batch)

    def _write(self, records: list[Record]) -> Written | None:
        """Commit `records`, reconnecting to the database as long as it takes; None when stopped first."""
        attempt = 0
        while not self.stop.is_set():
            try:
                return self._store.write(records)
            except StoreDown as exc:
                attempt += 1
                self.counts.store_errors += 1
                log.warning("%s; retrying the batch of %d", escape(str(exc), 300), len(records))
                self.stop.wait(backoff_delay(attempt, 0.5, 30.0, 0.2, self._rng))
                try:
                    self._store.connect()
                except StoreDown:
                    continue
        return None

    def _ack(self, batch: list[Incoming]) -> None:
        client = self._client
        for m in batch:
            # a message from an earlier connection is redelivered on this one (and recorded once): no ack
            if client is not None and m.qos > 0 and m.generation == self._generation:
                client.ack(m.mid, m.qos)

    def _bad(self, m: Incoming, why: str) -> None:
        self.counts.bad += 1
        now = time.monotonic()
        start, logged = self._bad_window
        if now - start >= 60.0:
            start, logged = now, 0
        if logged < BAD_LOGGED_PER_MINUTE:
            log.warning("bad message on %s (%d bytes): %s", escape(m.topic), len(m.payload), escape(why, 200))
        self._bad_window = (start, logged + 1)
