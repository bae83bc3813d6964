"""sd_notify: tell systemd when the daemon is ready, what it is doing, and that it is still alive.

systemd-python's ``systemd.daemon.notify`` is used when it is importable (and the socket is the
process's own ``NOTIFY_SOCKET``); otherwise the protocol is spoken directly: one AF_UNIX datagram per
message to the path in ``NOTIFY_SOCKET`` ('@' at the start names an abstract socket). Outside systemd
(no ``NOTIFY_SOCKET``) every call is a no-op. Nothing here ever raises: a broken socket must not take the
inspection line down, so the first failure is logged as a warning and later ones at debug level.

The service loop decides WHEN to send (``WATCHDOG=1`` only while the worker heartbeats are fresh); this
module only sends.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)


def _load_systemd_notify() -> Callable[[str], bool] | None:
    try:
        from systemd import daemon
    except ImportError:
        return None
    notify = getattr(daemon, "notify", None)
    return notify if callable(notify) else None


def socket_address(value: str) -> str | bytes:
    """The address to send to: abstract names ('@name') become b'\\0name', as in sd_notify(3)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode("utf-8")
    return value


class Notifier:
    """Sends sd_notify messages to systemd; every method is a cheap no-op when not under systemd."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._socket_name = env.get("NOTIFY_SOCKET", "") or ""
        self._watchdog_interval_s = _watchdog_interval(env)
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self._failed_once = False
        # systemd-python reads os.environ itself, so it is only used for the process's own socket.
        self._systemd_notify = (_load_systemd_notify()
                                if self._socket_name and self._socket_name == os.environ.get("NOTIFY_SOCKET")
                                else None)

    @property
    def enabled(self) -> bool:
        """True when started by systemd with Type=notify (NOTIFY_SOCKET is set)."""
        return bool(self._socket_name)

    @property
    def watchdog_interval_s(self) -> float | None:
        """How often to send WATCHDOG=1: half of WatchdogSec=, or None when no watchdog is armed for us."""
        return self._watchdog_interval_s

    def ready(self) -> None:
        """Start-up is complete: the model is loaded and the first camera is open."""
        self.notify("READY=1")

    def status(self, text: str) -> None:
        """A one-line summary shown by `systemctl status edged`."""
        self.notify("STATUS=" + " ".join(text.split()))

    def watchdog(self) -> None:
        """Keep-alive; send only while the workers are known to be making progress."""
        self.notify("WATCHDOG=1")

    def stopping(self) -> None:
        """Shutdown has begun (systemd then shows 'deactivating')."""
        self.notify("STOPPING=1")

    def notify(self, state: str) -> None:
        """Send one raw message ("KEY=value" lines). Never raises."""
        if not self._socket_name or not state:
            return
        try:
            if self._systemd_notify is not None:
                if not self._systemd_notify(state):
                    raise OSError("systemd.daemon.notify returned False")
                return
            self._send(state.encode("utf-8"))
        except Exception as exc:  # a broken socket must never stop the daemon
            self._report(exc)

    def close(self) -> None:
        """Close the notify socket; a later message opens a new one."""
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def _send(self, payload: bytes) -> None:
        with self._lock:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            try:
                self._sock.sendto(payload, socket_address(self._socket_name))
            except OSError:
                # Reopen on the next message (the receiver may have been restarted).
                self._sock.close()
                self._sock = None
                raise

    def _report(self, exc: BaseException) -> None:
        if not self._failed_once:
            self._failed_once = True
            log.warning("sd_notify to %s failed (%s); systemd will not see status or watchdog pings",
                        self._socket_name, exc)
        else:
            log.debug("sd_notify to %s failed again: %s", self._socket_name, exc)


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of WATCHDOG_USEC (as sd_watchdog_enabled(3) recommends) when it is meant for this process."""
    raw = env.get("WATCHDOG_USEC", "")
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID", "")
    if pid:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000
