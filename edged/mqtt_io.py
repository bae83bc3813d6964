"""One paho client's network I/O, driven by a thread of ours instead of paho's `loop_start()`.

Why: while paho's own thread runs, `publish()` only queues the packet and wakes that thread, which must then get
the GIL to write it: one more thread hand-off between a reject's commit and the broker (the MQTT leg was the
largest tail of the pipeline after the model, docs/performance.md). Without paho's thread, `publish()` writes to
the socket itself, on the caller's thread. This thread waits in `select()` outside any lock and does what is left
under `lock`: reading (acknowledgements, incoming messages: paho's callbacks run here), writing what a publish
could not finish, and the keepalive. Every other call into the client holds the same lock, because paho's loop
functions are not safe against each other (two writers would interleave packets).

The loop ends when paho reports the connection gone (it has then called `on_disconnect`), when `stop()` is
called (any thread; the socket is closed if paho has not), or when a callback raises what nothing catches (the
owner notices a dead thread with `alive()`). A select that fails (the socket closed under it) calls `on_broken`.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable

import paho.mqtt.client as mqtt

from edged.health import name_os_thread

IDLE_S = 1.0  # the longest select: the keepalive (loop_misc) needs a call at least this often


class ClientLoop:
    """The network thread of one client (a fresh one per connection). `lock` is the caller's: hold it for every
    call into `client` (publish, subscribe, disconnect); `wake()` after a publish that left bytes unwritten."""

    def __init__(self, client: mqtt.Client, lock: threading.RLock, on_broken: Callable[[], None],
                 name: str = "mqtt-io") -> None:
        self.client = client
        self.lock = lock
        self.on_broken = on_broken
        self._stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        """Start the thread (after `client.connect()`: the socket must exist)."""
        self.thread.start()

    def alive(self) -> bool:
        """False once the thread has ended, for whatever reason."""
        return self.thread.is_alive()

    def wake(self) -> None:
        """Have the thread look again now (a write to finish, or `stop`); from any thread, never blocks."""
        with contextlib.suppress(OSError):  # a full pair is a wake-up already pending; a closed one: ended
            self._wake_w.send(b"\0")

    def stop(self, join_s: float = 0.0) -> None:
        """End the thread (closing the socket if paho has not); wait up to `join_s` for it, never on itself."""
        self._stopping = True
        self.wake()
        if join_s > 0 and threading.current_thread() is not self.thread and self.thread.ident is not None:
            self.thread.join(join_s)

    def _run(self) -> None:
        name_os_thread(self.thread.name)
        try:
            while not self._stopping and self._once():
                pass
        finally:
            self._close()

    def _once(self) -> bool:
        """One wait and the I/O it found; False when the loop must end."""
        sock = self.client.socket()
        if sock is None:
            return False
        pending = sock.pending() if hasattr(sock, "pending") else 0  # TLS bytes already read off the socket
        try:
            readable, _, _ = select.select([sock, self._wake_r], [sock] if self.client.want_write() else [], [],
                                           0.0 if pending else IDLE_S)
        except (OSError, ValueError, TypeError):  # the socket was closed under the select
            if self.client.socket() is sock and not self._stopping:
                self.on_broken()
            return False
        if self._wake_r in readable:
            with contextlib.suppress(OSError):
                self._wake_r.recv(4096)
        with self.lock:
            if self.client.socket() is not sock:
                return False  # closed (disconnect) while we waited
            rc = mqtt.MQTT_ERR_SUCCESS
            if sock in readable or pending:
                rc = self.client.loop_read()
            if rc == mqtt.MQTT_ERR_SUCCESS and self.client.want_write():
                rc = self.client.loop_write()
            if rc == mqtt.MQTT_ERR_SUCCESS:
                rc = self.client.loop_misc()
        return rc == mqtt.MQTT_ERR_SUCCESS

    def _close(self) -> None:
        """The thread is ending: a socket paho still holds is closed (the client is abandoned), and the pair."""
        with self.lock:
            sock = self.client.socket()
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()
        for end in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                end.close()
