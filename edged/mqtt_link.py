"""The MQTT link: durable rejects from the outbox, plus status, camera states, results and stats.

One thread of ours owns the connection and the outbox's database connection; a network thread of ours
(`edged.mqtt_io`, in place of paho's `loop_start()`) only reads, finishes writes and keeps the connection
alive, and reports acknowledgements back through a queue. A publish writes its packet to the socket on the
thread that calls it, under the I/O lock every call into paho holds. The one shortcut: the recorder hands
each commit's rejects to `offer`, which publishes them from the recorder's thread when the link is caught
up (connected, not stalled, room in the window and the rate, nothing older waiting), under the same lock as
the link's own steps; that spares a reject the wake-up of the link's thread and its query of the outbox, and
paho's thread's wake-up to write it (GIL hand-offs and a SELECT, the larger part of the commit-to-broker
time). Otherwise it only wakes the link, which reads the outbox as ever. Each connection uses a FRESH
paho client: paho re-sends its unacknowledged messages on reconnect, and a reject re-sent after its
deadline could move an actuator for a part that has already gone. Instead, unacknowledged rows simply
stay `pending` in the outbox, are checked against their deadline again and re-published (same `id`:
consumers de-duplicate; delivery is at least once).

Topics (`edged.topics`) under <prefix>/<station>/: reject (QoS 1), status (retained: online / offline
as last will / stopped), camera/<name> (retained state), result (QoS 0, optional), stats (QoS 0), audit
(QoS 1: rejects that expired before delivery); payloads are `edged.payloads`. Incoming topics come
from a dispatch table, topic -> Route (a handler and how its messages may arrive), given by the
service: the subscriptions are the table's keys, so a new incoming topic is one handler and one entry.

Everything paho calls back runs on the network thread, fed by whatever the broker sends: each
callback is guarded (an exception is counted in `callback_errors` and logged, rate-limited, and never
ends the thread), incoming messages are checked by `edged.incoming` (refusals counted in `refused`),
and a network thread that ends anyway is noticed and replaced by a fresh connection.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import random
import socket
import sqlite3
import ssl
import struct
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edged import jsonout
from edged.backoff import backoff_delay
from edged.config import Config, ConfigError
from edged.health import Heartbeats, SupervisedThread
from edged.incoming import MAX_PAYLOAD_BYTES, MessageRefused
from edged.logsetup import LogThrottle
from edged.mqtt_io import ClientLoop
from edged.payloads import Audit, CameraState, Payload, Result, Stats, Status
from edged.safetext import escape
from edged.store import Outbox, OutboxItem, connect
from edged.topics import Topics

log = logging.getLogger(__name__)

WINDOW = 64  # rejects in flight (published, not yet acknowledged)
RECONNECT_FIRST_S = 0.2
RECONNECT_JITTER = 0.2
ACK_GRACE_S = 1.0  # a reject unacknowledged past its deadline (and at least this long) resets the connection
ACK_STALL_S = 0.5  # nothing more is published while the oldest message in flight waits longer than this
MAX_INCOMING_PACKET = 64 * 1024  # MQTT 5: the broker drops bigger messages instead of sending them to us
REFUSED_BACKOFF_MAX_S = 60.0  # a broker that refuses us (password, certificate) is retried at most this often
TAKEOVER_BACKOFF_S = 5.0  # after another client took our session over (a second edged with our client id)
SHORT_SESSION_S = 10.0  # a session the broker ends sooner than this, SHORT_SESSIONS times in a row: a takeover
SHORT_SESSIONS = 3
TAKEOVER = ("another MQTT client keeps taking our session over (client id {id!r}): is a second edged running "
            "with this station or mqtt.client_id, on another box or as edged replay with that id?")
CONNECT_PROBLEM_LOG_EVERY_S = 300.0  # a refusal that persists is said once, then this often
# CONNACK reasons that retrying will not cure (MQTT 5 codes; paho maps MQTT 3.1.1 codes onto them)
REFUSALS = {133: "it refuses our client id (mqtt.client_id)",
            134: "wrong user name or password (mqtt.username, mqtt.password_file)",
            135: "wrong user name or password (mqtt.username, mqtt.password_file), or the broker's ACL refuses "
                 "this user", 138: "this client is banned", 140: "it does not accept this authentication method"}
SESSION_TAKEN_OVER = 142


def reconnect_delay(attempt: int, reject_ttl_ms: float, rng: random.Random) -> float:
    """Backoff before connection attempt `attempt` (1, 2, ...): `edged.backoff`, +-20% jitter, capped.

    The cap follows the reject TTL (half of it, within 0.5..5 s): after a broker restart the link must
    be back while the rejects made during the outage can still move the actuator. A long cap (30 s)
    would let every reject of the first half minute after the broker's return expire.
    """
    cap = min(5.0, max(0.5, reject_ttl_ms / 2000.0))
    return backoff_delay(attempt, RECONNECT_FIRST_S, cap, RECONNECT_JITTER, rng)


def _past_deadline(item: OutboxItem, now: float) -> bool:
    """A reject whose deadline has passed: never published to /reject (the part has gone), only expired."""
    return item.kind == "reject" and item.expires_at is not None and now >= item.expires_at


Handler = Callable[[bytes, float], None]
"""An incoming message's handler: (raw payload, arrival in Unix seconds), called on the network thread after
the link's own checks (topic, retain, size). It raises MessageRefused for a message it cannot use: the
link counts and logs that; anything else it raises is a callback error (counted, logged, survived)."""


@dataclass(frozen=True, slots=True)
class Route:
    """One entry of the incoming dispatch table: the handler of a subscribed topic and how it arrives."""

    handler: Handler
    what: str  # names the message in log lines: "trigger"
    retained: bool = False  # False for events: a retained one would fire again on every reconnect (stale)
    qos: int = 1


class MqttLink(SupervisedThread):
    """`routes` is the incoming dispatch table (topic -> Route; empty: nothing is subscribed). `announce`
    False (edged replay --mqtt): no status, last will or camera states, so a replay beside the service never
    overwrites the service's retained state.
    """

    def __init__(self, config: Config, database: Path, heartbeats: Heartbeats, stop: threading.Event,
                 routes: Mapping[str, Route] | None = None, client_id: str | None = None,
                 announce: bool = True) -> None:
        super().__init__("mqtt", heartbeats)
        self.heartbeats: Heartbeats = heartbeats
        self.what = "MQTT link"
        self.config = config
        self.cfg = config.mqtt
        self.topics = Topics.of(config)
        self.client_id = client_id or self.cfg.client_id or f"edged-{config.station}"
        self.announce = announce
        self.database = database
        self.heartbeats = heartbeats
        self.stop_event = stop
        self.routes: dict[str, Route] = dict(routes or {})
        self._subscribed: list[str] = []  # the topics of the last SUBSCRIBE, in order (its reason codes follow it)
        self.wake_event = threading.Event()
        self.connected = False
        self.delivered = 0
        self.expired = 0
        self.backlog = 0
        self._client: mqtt.Client | None = None
        self._io: ClientLoop | None = None  # the current client's network thread
        self._io_lock = threading.RLock()  # held by every call into a paho client (ClientLoop's docstring)
        self._lost = threading.Event()
        self._acks: queue.Queue[tuple[int, bool]] = queue.Queue()
        self._volatile: queue.Queue[tuple[str, str, int, bool]] = queue.Queue(maxsize=10000)
        self._retained: dict[str, str] = {}  # topic -> last retained payload, re-sent on each connection
        self._inflight: dict[int, int] = {}  # paho mid -> outbox row id
        self._inflight_deadline: dict[int, float] = {}  # paho mid -> when a reject in flight is overdue
        self._inflight_since: dict[int, float] = {}  # paho mid -> time.monotonic() it was published
        self._inflight_rows: set[int] = set()
        self._acked: list[int] = []  # acknowledged, not yet marked delivered in the database
        # the fast path (`offer`), all under _step_lock but _missed (the recorder's thread's own)
        self._step_lock = threading.Lock()  # held by each step of the link's thread, and by `offer`
        self._fast_ok = False  # the last fetch got every pending message and nothing went back to pending since
        self._handled_upto = 0  # highest reject row id fetched or published (every older one is in flight or done)
        self._missed = 0  # highest reject row id `offer` could not publish: the link's thread must fetch it first
        self._unmarked: list[int] = []  # published by `offer`, their attempt not yet counted in the database
        self.offered = 0  # rejects published by `offer` (the rest went through the link's thread)
        self.db_errors = 0
        self._last_db_error_log = 0.0
        self._draining_since: float | None = None
        self._tokens = float(self.cfg.outbox.rate_per_s)
        self._last_refill = time.monotonic()
        self._next_attempt = 0.0
        self._attempt = 0
        self._last_cap_check = 0.0
        self._rng = random.Random()
        self.drained = threading.Event()  # set when shutting down and the outbox is empty or given up
        self.done = threading.Event()
        # written on the network thread (one client at a time), read by the service for health and /stats
        self.refused = 0  # incoming messages refused (malformed, out of range, unexpected)
        self.callback_errors = 0  # exceptions caught in a paho callback (a bug, or input we did not foresee)
        self.paho_restarts = 0  # network threads found dead and replaced by a fresh connection
        self.connect_refusals = 0  # connection attempts the broker refused or closed before CONNACK
        self.takeovers = 0  # sessions another client with our client id took from us
        self._short_sessions = 0  # sessions in a row the broker ended within SHORT_SESSION_S
        self._connected_at = 0.0
        self._throttle = LogThrottle(log, every_s=30.0)
        self._connack = False  # the current client got a successful CONNACK
        self._problem: tuple[str, str] | None = None  # (kind, text) why the current client's connection ended
        self._problem_streak = 0  # consecutive connections that ended that way
        self._problem_logged = 0.0

    # --- called from other threads -----------------------------------------------------------------
    def wake(self) -> None:
        """Have the link's thread look at the outbox now (a commit added rejects); from any thread."""
        self.wake_event.set()

    def offer(self, items: list[OutboxItem]) -> None:
        """Messages the recorder has just committed, from its thread: the rejects among them go out at once when
        the link is caught up; whatever is left, the link's thread is woken for (it reads them from the outbox)."""
        rejects = [i for i in items if i.kind == "reject"]
        published = bool(rejects) and self._publish_now(rejects)
        if rejects and not published:
            self._missed = max(self._missed, rejects[-1].id)
        if not published or len(rejects) < len(items):
            self.wake_event.set()
        # else no wake-up: the broker's acknowledgement wakes the link's thread, which counts their attempt then;
        # waking it now would only compete for the GIL with the network thread reading that acknowledgement

    def send(self, topic: str, payload: Payload | str, qos: int = 0, retain: bool = False) -> None:
        """Publish a non-durable message (results, stats, states) on a topic of `self.topics`; dropped while
        disconnected."""
        text = payload if isinstance(payload, str) else payload.to_json()  # never NaN/Infinity
        if retain:
            self._retained[topic] = text  # a single dict store
        with contextlib.suppress(queue.Full):
            self._volatile.put_nowait((topic, text, qos, retain))
        self.wake_event.set()

    def send_result(self, result: Result) -> None:
        """Publish a verdict's result, QoS 0, not durable (`mqtt.publish_results`); from any thread."""
        self.send(self.topics.result, result, qos=0)

    def send_stats(self, stats: Stats) -> None:
        """Publish the periodic stats, QoS 0, not durable; from any thread."""
        self.send(self.topics.stats, stats, qos=0)

    def publish_direct(self, topic: str, payload: dict[str, Any]) -> None:
        """A reject that could not be stored (database failing): published once, QoS 1, not durable."""
        try:
            self._volatile.put_nowait((topic, jsonout.dumps(payload), 1, False))
        except queue.Full:
            log.error("reject %s lost: database failing and send queue full", payload.get("id"))
        self.wake_event.set()

    def camera_state(self, camera: str, state: CameraState) -> None:
        """Publish a camera's state, retained (sent again on each connection); nothing when not announcing (replay)."""
        if self.announce:
            self.send(self.topics.camera(camera), state.value, qos=1, retain=True)

    # --- the thread --------------------------------------------------------------------------------
    def work(self) -> None:
        """Connect, publish the outbox, handle acks and incoming messages until stopped (supervised:
        `SupervisedThread`)."""
        self.outbox = Outbox(connect(self.database))
        self._loop()

    def finish(self) -> None:
        """Say `stopped` and disconnect (when connected); the service waits on `done`."""
        with self._step_lock:
            self._close(clean=True)
        self.done.set()

    def _loop(self) -> None:
        while True:
            try:
                if self._step():
                    return
            except sqlite3.Error as exc:
                # a locked or full database must not end the link for the rest of the process: rejects
                # that cannot be stored are published directly meanwhile (recorder), and this retries
                self._db_error(exc)
                if self.stop_event.is_set():
                    self.drained.set()
                    return
                self.stop_event.wait(0.5)

    def _db_error(self, exc: sqlite3.Error) -> None:
        """Count an outbox database failure; said once per 30 s (a full disk fails every step)."""
        self.db_errors += 1
        now = time.monotonic()
        if now - self._last_db_error_log > 30.0:
            self._last_db_error_log = now
            log.error("outbox database error: %s (%d so far); retrying", exc, self.db_errors)

    def _step(self) -> bool:
        """One pass of the link's work, then a wait for the next; True when it is time to end (stopped, and
        drained or given up). Cleared before the work: a wake-up that comes during it is not lost."""
        self.wake_event.clear()
        with self._step_lock:
            if self._work():
                return True
        self.wake_event.wait(0.02 if self._inflight else 0.2)
        return False

    def _work(self) -> bool:
        """The step's work, under the step lock (`offer` changes the same state)."""
        self.heartbeats.beat(self.name)
        now = time.monotonic()
        if self._client is None and now >= self._next_attempt:
            self._connect()
        self._check_paho_thread()
        if self._lost.is_set():
            self._on_lost()
        self._flush_volatile()  # first: rejects published directly (database failing) wait for no bookkeeping
        self._handle_acks()
        if self._unmarked:
            self.outbox.attempted(self._unmarked)
            self._unmarked = []
        if self.connected and self._inflight_deadline and min(self._inflight_deadline.values()) <= time.time():
            self._abort()
        if self.connected:
            self._pump()
        if now - self._last_cap_check > 5.0:
            self._last_cap_check = now
            self.outbox.enforce_cap(self.cfg.outbox.max_rows, self.cfg.outbox.max_results)
            self.backlog = self.outbox.backlog()
        if self.stop_event.is_set():
            if self._draining_since is None:
                self._draining_since = now
            # on shutdown, give pending rejects a short chance to go out (bounded)
            self.backlog = self.outbox.backlog()
            if (self.backlog == 0 and not self._inflight) or not self.connected or now - self._draining_since > 2.0:
                self.drained.set()
                return True
        return False

    # --- connection --------------------------------------------------------------------------------
    def _new_client(self) -> mqtt.Client:
        v5 = self.cfg.protocol == "5"
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=self.client_id,
                             protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311)
        client.suppress_exceptions = True  # second line of defence: our callbacks catch everything first
        if self.announce:
            client.will_set(self.topics.status, Status.OFFLINE.value, qos=1, retain=True)
        if self.cfg.username:
            client.username_pw_set(self.cfg.username, self.cfg.read_password())
        tls = self.cfg.tls
        if tls.enabled:
            client.tls_set(ca_certs=str(tls.ca_file) if tls.ca_file else None,
                           certfile=str(tls.cert_file) if tls.cert_file else None,
                           keyfile=str(tls.key_file) if tls.key_file else None,
                           cert_reqs=ssl.CERT_REQUIRED)
            client.tls_insecure_set(tls.insecure)
        client.max_inflight_messages_set(WINDOW + 16)
        client.on_connect = self._guarded("on_connect", self._on_connect)
        client.on_disconnect = self._guarded("on_disconnect", self._on_disconnect)
        client.on_publish = self._guarded("on_publish", self._on_publish)
        client.on_message = self._guarded("on_message", self._on_message)
        client.on_subscribe = self._guarded("on_subscribe", self._on_subscribe)
        return client

    def _guarded(self, name: str, callback: Callable[..., None]) -> Callable[..., None]:
        """`callback` for paho: whatever it raises is counted and logged (rate-limited), never re-raised,
        so the network thread lives on whatever the broker or another client sends."""
        def guarded(*args: Any) -> None:
            try:
                callback(*args)
            except Exception as exc:
                self.callback_errors += 1
                self._throttle.log(logging.ERROR, f"callback:{name}", "MQTT %s callback failed (%d so far): %s",
                                   name, self.callback_errors, escape(repr(exc), 200), exc_info=True)
        return guarded

    def _check_paho_thread(self) -> None:
        """A network thread that ended without telling us (a bug in paho on odd input, or in a callback): the
        link would look connected while nothing moves. Count it and start over with a fresh client."""
        client, io = self._client, self._io
        if client is None or self._lost.is_set():
            return
        if io is not None and io.alive():
            return
        self.paho_restarts += 1
        log.error("MQTT network thread ended unexpectedly (%d so far): reconnecting with a fresh client",
                  self.paho_restarts)
        self._lost.set()

    def _connect(self) -> None:
        try:
            client = self._new_client()
        except ConfigError as exc:  # the password file became unreadable since start: say so, keep the outbox
            self._next_attempt = time.monotonic() + self._problem_delay("refused", str(exc))
            return
        self._lost.clear()
        self._connack = False
        self._problem = None
        props = None
        if self.cfg.protocol == "5":
            props = Properties(PacketTypes.CONNECT)
            props.MaximumPacketSize = MAX_INCOMING_PACKET
        # ours before connect: paho writes CONNECT within it and, should that fail (a broker that refuses our TLS
        # certificate after the handshake), calls _on_disconnect there, which must not take it for a stale client
        self._client = client
        try:
            if self.cfg.protocol == "5":
                client.connect(self.cfg.host, self.cfg.port, self.cfg.keepalive_s, clean_start=True,
                               properties=props)
            else:
                client.connect(self.cfg.host, self.cfg.port, self.cfg.keepalive_s)
        except ssl.SSLError as exc:  # (an OSError) the broker is there; retrying at once will not help
            self._client = None
            self._next_attempt = time.monotonic() + self._problem_delay(
                "refused", f"TLS handshake failed ({exc}): check mqtt.tls (ca_file, cert_file, key_file) against "
                           "the broker's certificate, CA and host name")
            return
        except (OSError, ValueError) as exc:
            self._client = None
            self._attempt += 1
            delay = reconnect_delay(self._attempt, self.cfg.reject_ttl_ms, self._rng)
            if self._attempt == 1 or self._attempt % 50 == 0:
                log.warning("MQTT broker %s:%d unreachable (%s); retrying in %.1f s",
                            self.cfg.host, self.cfg.port, exc, delay)
            self._next_attempt = time.monotonic() + delay
            return
        if self._lost.is_set():  # CONNECT already failed within connect(): nothing to read; _on_lost says why
            return
        self._io = ClientLoop(client, self._io_lock, self._on_broken, name="mqtt-io")
        self._io.start()

    def _on_broken(self) -> None:
        """The network thread's select failed on the current socket (closed under it): the connection is gone."""
        self._lost.set()
        self.wake_event.set()

    def _published(self, client: mqtt.Client, topic: str, payload: str, qos: int, retain: bool = False,
                   properties: Properties | None = None) -> mqtt.MQTTMessageInfo:
        """`client.publish` under the I/O lock: paho writes the packet to the socket here and now; what did not
        fit (a full socket buffer) the network thread is woken to finish."""
        with self._io_lock:
            info = client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
            unwritten = client.want_write()
        if unwritten and self._io is not None:
            self._io.wake()
        return info

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if client is not self._client:
            return
        if reason.is_failure:
            code = getattr(reason, "value", 0)
            self._problem = ("refused", f"the broker refused the connection ({reason})"
                             + (f": {REFUSALS[code]}" if code in REFUSALS else ""))
            self._lost.set()
            self.wake_event.set()
            return
        self._connack = True
        self._connected_at = time.monotonic()
        self.connected = True
        self._attempt = 0
        if self.announce:
            client.publish(self.topics.status, Status.ONLINE.value, qos=1, retain=True)
            for topic, text in list(self._retained.items()):
                client.publish(topic, text, qos=1, retain=True)
        if self.routes:
            self._subscribed = list(self.routes)
            client.subscribe([(topic, route.qos) for topic, route in self.routes.items()])
        if self._problem_streak:
            log.warning("MQTT connected to %s:%d as %s after %d failed attempt(s)", self.cfg.host, self.cfg.port,
                        self.client_id, self._problem_streak)
            self._problem_streak = 0
        else:
            log.info("MQTT connected to %s:%d as %s", self.cfg.host, self.cfg.port, self.client_id)
        self.wake_event.set()

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if client is not self._client:
            return  # an old client (already given up by _on_lost)
        if self._io is not None:  # called by paho on our network thread, or on the link's (disconnect)
            self._io.stop()
        if getattr(reason, "value", 0) == SESSION_TAKEN_OVER:  # an MQTT 5 broker that says so
            self._problem = ("takeover", TAKEOVER.format(id=self.client_id))
        elif not self._connack and self._problem is None:
            self._problem = ("closed", f"the broker closed the connection before acknowledging it ({reason}): it "
                             "does not accept our client certificate or our client id, or this is not an MQTT broker")
        self._lost.set()
        self.wake_event.set()

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reasons: Any, props: Any) -> None:
        for topic, reason in zip(self._subscribed, reasons, strict=False):
            if getattr(reason, "is_failure", False):
                route = self.routes.get(topic)
                self._throttle.log(logging.ERROR, f"subscribe:{topic}", "MQTT broker refused the subscription to "
                                   "%s (%s): %ss will not arrive", topic, reason, route.what if route else "message")

    def _on_lost(self, ours: bool = False) -> None:
        """The connection is gone (`ours`: we reset it): forget the client, plan the next attempt."""
        self._client = None  # from now on its callbacks are stale and ignored
        io, self._io = self._io, None
        if io is not None:
            io.stop(join_s=2.0)  # it reads what is left (an abort's reset) and closes the socket
        self._lost.clear()
        was_connected = self.connected
        if was_connected:
            log.warning("MQTT connection lost; %d reject(s) in flight stay pending", len(self._inflight))
        self.connected = False
        problem, self._problem = self._problem, None
        if problem is None and was_connected and not ours:
            problem = self._session_problem(time.monotonic() - self._connected_at)
        self._fast_ok = False  # what was in flight is pending again
        self._inflight.clear()
        self._inflight_deadline.clear()
        self._inflight_since.clear()
        self._inflight_rows = set(self._acked)
        while not self._acks.empty():
            self._acks.get_nowait()
        self._attempt += 1
        delay = reconnect_delay(self._attempt, self.cfg.reject_ttl_ms, self._rng)
        if problem is not None:
            delay = max(delay, self._problem_delay(*problem))
        self._next_attempt = time.monotonic() + delay

    def _session_problem(self, lived_s: float) -> tuple[str, str] | None:
        """The broker ended a session it had accepted. Once is a restart or a network fault; within seconds
        of accepting it, SHORT_SESSIONS times in a row, is another client taking our client id's session
        (mosquitto just closes the socket, it does not say why)."""
        if lived_s >= SHORT_SESSION_S:
            self._short_sessions = 0
            return None
        self._short_sessions += 1
        return ("takeover", TAKEOVER.format(id=self.client_id)) if self._short_sessions >= SHORT_SESSIONS else None

    def _problem_delay(self, kind: str, text: str) -> float:
        """A connection the broker refused, closed before CONNACK or took over: said once, then every
        CONNECT_PROBLEM_LOG_EVERY_S; retried with a backoff that grows (retrying at once will not cure a
        wrong password, and two daemons with one client id would take the session from each other
        dozens of times a second)."""
        if kind == "takeover":  # each round connects fine: the streak ends only with a session that lasts
            self.takeovers += 1
            self._short_sessions = max(self._short_sessions, SHORT_SESSIONS)
            streak = self._short_sessions - SHORT_SESSIONS + 1
            delay = min(REFUSED_BACKOFF_MAX_S, TAKEOVER_BACKOFF_S * 2 ** min(streak - 1, 4))
        else:
            self.connect_refusals += 1
            self._problem_streak += 1
            streak = self._problem_streak
            delay = min(REFUSED_BACKOFF_MAX_S, 2.0 ** min(streak, 6))
        if streak == 1:
            self._problem_logged = time.monotonic()
            log.error("MQTT %s:%d: %s; retrying in %.0f s", self.cfg.host, self.cfg.port, text, delay)
        elif time.monotonic() - self._problem_logged >= CONNECT_PROBLEM_LOG_EVERY_S:
            self._problem_logged = time.monotonic()
            log.error("MQTT %s:%d: still failing (%d attempts): %s; retrying every %.0f s", self.cfg.host,
                      self.cfg.port, streak, text, delay)
        return delay

    def _abort(self) -> None:
        """A reject in flight reached its deadline unacknowledged: the broker or the path to it is stuck
        (frozen broker, silent network partition; keepalive would take 1.5 x keepalive_s to notice).
        Reset the connection (RST, so data still queued in our socket is discarded rather than delivered
        late); the rows stay pending, are found expired on the next connection and go to /audit."""
        client = self._client
        log.warning("MQTT broker did not acknowledge a reject before its deadline: resetting the connection "
                    "(%d message(s) in flight stay pending)", len(self._inflight))
        sock = client.socket() if client is not None else None
        if isinstance(sock, socket.socket):  # plain TCP or TLS (ssl.SSLSocket is one); edged opens no websockets
            with contextlib.suppress(OSError):
                # linger 0: paho's close (on the read error that shutdown causes) sends RST
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                sock.shutdown(socket.SHUT_RD)
        # the network thread sees the read fail, and paho closes the socket (a reset) and calls _on_disconnect;
        # _on_lost forgets this client and waits for that thread
        self._lost.set()
        self._on_lost(ours=True)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self._acks.put((mid, not getattr(reason, "is_failure", False)))
        self.wake_event.set()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        """Dispatch by topic (the routes table); what it cannot use is refused, counted, logged rate-limited."""
        arrived = time.time()
        try:
            route = self.routes.get(msg.topic)
            if route is None:
                raise MessageRefused("not a topic edged subscribes to")
            if msg.retain and not route.retained:  # an event: a retained one would fire again on every reconnect
                raise MessageRefused(f"a retained {route.what} (stale); publish {route.what}s with retain false")
            if len(msg.payload) > MAX_PAYLOAD_BYTES:
                raise MessageRefused(f"payload of {len(msg.payload)} bytes is over the limit of {MAX_PAYLOAD_BYTES}")
            route.handler(bytes(msg.payload), arrived)  # bytes(b) is b itself; paho may type it bytearray
        except MessageRefused as exc:
            self.refused += 1
            self._throttle.log(logging.WARNING, "refused", "refused a message on %s: %s (%d refused so far)",
                               escape(msg.topic, 100), exc, self.refused)

    # --- outbox ------------------------------------------------------------------------------------
    def _handle_acks(self) -> None:
        while True:
            try:
                mid, success = self._acks.get_nowait()
            except queue.Empty:
                break
            row = self._inflight.pop(mid, None)
            self._inflight_deadline.pop(mid, None)
            self._inflight_since.pop(mid, None)
            if row is None:
                continue
            if success:
                self._acked.append(row)  # stays in _inflight_rows (not re-sent) until marked
            else:
                self._inflight_rows.discard(row)
                self._fast_ok = False  # pending again: the link's thread re-sends it before anything newer
        if self._acked:
            rows = self._acked
            try:
                self.outbox.mark(rows, "delivered")
            except sqlite3.Error as exc:
                # kept for the next try; raising instead would end every step here, before the rest of
                # the link's work, for as long as the disk stays full
                self._db_error(exc)
                return
            self._acked = []
            self._inflight_rows.difference_update(rows)
            self.delivered += len(rows)

    def _refill(self) -> None:
        now = time.monotonic()
        rate = self.cfg.outbox.rate_per_s
        self._tokens = min(rate, self._tokens + (now - self._last_refill) * rate)
        self._last_refill = now

    def _stalled(self) -> bool:
        """The broker stopped acknowledging: hold the rest back rather than queue them behind."""
        return bool(self._inflight_since) and time.monotonic() - min(self._inflight_since.values()) > ACK_STALL_S

    def _room(self) -> int:
        """How many more may be published now: the window's room, the rate's tokens."""
        if self._client is None or self._stalled():
            return 0
        self._refill()
        return max(0, min(WINDOW - len(self._inflight), int(self._tokens)))

    def _pump(self) -> None:
        """Publish what the outbox holds (rejects first), as far as the window and the rate allow."""
        room = self._room()
        if room <= 0:
            return
        items = self.outbox.next_to_send(room, self._inflight_rows)  # rejects first
        now = time.time()
        expired = [i for i in items if _past_deadline(i, now)]
        if expired:
            self._expire(expired)
        fresh = [i for i in items if i not in expired]
        sent = self._publish(fresh, now)
        if sent:
            self.outbox.attempted(sent)
        fetched = [i.id for i in items if i.kind == "reject"]
        self._handled_upto = max([self._handled_upto, *fetched])
        # fewer than asked for: nothing pending was left behind, so `offer` may publish what comes next
        self._fast_ok = len(items) < room and len(sent) == len(fresh)

    def _publish_now(self, rejects: list[OutboxItem]) -> bool:
        """`offer`'s publish, from the recorder's thread: only when the link's thread is not in a step and
        nothing older than these rejects waits (else they would overtake it); True when all went out."""
        if not self._step_lock.acquire(blocking=False):
            return False
        try:
            caught_up = (self._fast_ok and self.connected and not self._lost.is_set()
                         and self._missed <= self._handled_upto < rejects[0].id)
            now = time.time()
            if not caught_up or any(_past_deadline(i, now) for i in rejects):  # left to `_pump`: expired, audited
                return False
            if self._room() < len(rejects):
                return False
            sent = self._publish(rejects, now)
            self._unmarked.extend(sent)
            self.offered += len(sent)
            if len(sent) < len(rejects):
                self._fast_ok = False  # the connection is going down; the rest stay pending
                return False
            self._handled_upto = rejects[-1].id
            return True
        finally:
            self._step_lock.release()

    def _publish(self, items: list[OutboxItem], now: float) -> list[int]:
        """Publish outbox messages QoS 1 and track them in flight; the ids that went out (all, unless the
        connection is going down: the rest stay pending)."""
        sent: list[int] = []
        client = self._client
        if client is None:
            return sent
        for item in items:
            props = None
            if self.cfg.protocol == "5" and item.expires_at is not None:
                props = Properties(PacketTypes.PUBLISH)
                props.MessageExpiryInterval = max(1, math.ceil(item.expires_at - now))
            info = self._published(client, item.topic, item.payload, qos=1, properties=props)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                break
            self._inflight[info.mid] = item.id
            self._inflight_since[info.mid] = time.monotonic()
            if item.kind == "reject" and item.expires_at is not None:
                # not before ACK_GRACE_S: one slow acknowledgement of a reject sent just before its
                # deadline must not reset a healthy connection
                self._inflight_deadline[info.mid] = max(item.expires_at, now + ACK_GRACE_S)
            self._inflight_rows.add(item.id)
            self._tokens -= 1
            sent.append(item.id)
        return sent

    def _expire(self, items: list[OutboxItem]) -> None:
        """Past its deadline: never actuate. Counted, logged, and told to the MES on /audit."""
        audit: list[tuple[str, str]] = []
        if self.cfg.outbox.audit_expired:
            audit = [(self.topics.audit, Audit.of_stored(i.payload).to_json()) for i in items]
        self.outbox.expire([i.id for i in items], audit)
        self.expired += len(items)
        log.warning("%d reject(s) expired before delivery (broker down or slow); not published to /reject",
                    len(items))

    def _flush_volatile(self) -> None:
        while True:
            try:
                topic, text, qos, retain = self._volatile.get_nowait()
            except queue.Empty:
                return
            if self.connected and self._client is not None:
                self._published(self._client, topic, text, qos=qos, retain=retain)

    def _close(self, clean: bool) -> None:
        client = self._client
        if client is None:
            return
        if clean and self.connected:
            if self.announce:
                info = self._published(client, self.topics.status, Status.STOPPED.value, qos=1, retain=True)
                with contextlib.suppress(RuntimeError, ValueError):
                    info.wait_for_publish(timeout=1.0)  # outside the I/O lock: the network thread reads the ack
            with self._io_lock:
                client.disconnect()
        io, self._io = self._io, None
        if io is not None:
            io.stop(join_s=2.0)
        self._client = None
        self.connected = False
