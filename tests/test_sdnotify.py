"""sd_notify: real AF_UNIX datagram sockets receive what systemd would; nothing ever raises."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import tempfile
import types
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edged.sdnotify import Notifier, socket_address


def _receiver(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


@pytest.fixture
def notify_socket() -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket on a short path (AF_UNIX paths are limited to 107 bytes)."""
    folder = Path(tempfile.mkdtemp(prefix="sdn-", dir="/tmp"))
    path = str(folder / "notify")
    sock = _receiver(path)
    yield path, sock
    sock.close()
    shutil.rmtree(folder, ignore_errors=True)


def test_messages_arrive_on_a_path_socket(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    n.ready()
    n.status("cam1 29.8 fps\nrejects 3")  # a newline would end the STATUS= value: flattened
    n.watchdog()
    n.stopping()
    n.notify("RELOADING=1\nMONOTONIC_USEC=1")
    got = [sock.recv(4096).decode() for _ in range(5)]
    assert got == ["READY=1", "STATUS=cam1 29.8 fps rejects 3", "WATCHDOG=1", "STOPPING=1",
                   "RELOADING=1\nMONOTONIC_USEC=1"]
    n.close()


def test_abstract_socket_name() -> None:
    name = f"edged-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    assert socket_address("@" + name) == b"\0" + name.encode()
    sock = _receiver(b"\0" + name.encode())
    try:
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        n.ready()
        n.watchdog()
        assert sock.recv(100) == b"READY=1"
        assert sock.recv(100) == b"WATCHDOG=1"
    finally:
        sock.close()


def test_no_op_outside_systemd() -> None:
    n = Notifier({})
    assert not n.enabled
    assert n.watchdog_interval_s is None
    n.ready()
    n.status("x")
    n.watchdog()
    n.stopping()
    assert n._sock is None  # no socket was even created


def test_default_environment_is_os_environ(monkeypatch: pytest.MonkeyPatch,
                                           notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    n = Notifier()
    assert n.enabled and n.watchdog_interval_s == 2.0
    n.ready()
    assert sock.recv(100) == b"READY=1"


def test_broken_socket_never_raises_and_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    n = Notifier({"NOTIFY_SOCKET": "/nonexistent/dir/notify"})
    with caplog.at_level(logging.DEBUG, logger="edged.sdnotify"):
        for _ in range(3):
            n.ready()
            n.watchdog()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "/nonexistent/dir/notify" in warnings[0].getMessage()
    assert len([r for r in caplog.records if r.levelno == logging.DEBUG]) == 5


def test_receiver_restart_is_survived(notify_socket: tuple[str, socket.socket]) -> None:
    path, sock = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    n.ready()
    assert sock.recv(100) == b"READY=1"
    sock.close()
    os.unlink(path)
    n.watchdog()  # nobody listening: swallowed
    again = _receiver(path)
    try:
        n.watchdog()
        assert again.recv(100) == b"WATCHDOG=1"
    finally:
        again.close()


@pytest.mark.parametrize(("env", "expected"), [
    ({"WATCHDOG_USEC": "30000000"}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),  # meant for another process
    ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "x"}, None),
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "-5"}, None),
    ({"WATCHDOG_USEC": "abc"}, None),
    ({"WATCHDOG_USEC": ""}, None),
    ({}, None),
    ({"WATCHDOG_USEC": "500000"}, 0.25),
])
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert Notifier({"NOTIFY_SOCKET": "/run/x", **env}).watchdog_interval_s == expected


def test_systemd_python_is_used_when_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    sent: list[str] = []
    results = [True, False]

    def fake_notify(state: str) -> bool:
        sent.append(state)
        return results.pop(0) if results else True

    pkg = types.ModuleType("systemd")
    daemon = types.ModuleType("systemd.daemon")
    monkeypatch.setattr(daemon, "notify", fake_notify, raising=False)
    monkeypatch.setattr(pkg, "daemon", daemon, raising=False)
    monkeypatch.setitem(sys.modules, "systemd", pkg)
    monkeypatch.setitem(sys.modules, "systemd.daemon", daemon)
    monkeypatch.setenv("NOTIFY_SOCKET", "/nonexistent/notify")
    n = Notifier()
    n.ready()
    n.watchdog()  # fake returns False: logged, not raised
    n.status("ok")
    assert sent == ["READY=1", "WATCHDOG=1", "STATUS=ok"]
    assert n._sock is None
    # An explicit environment naming another socket bypasses systemd-python (it reads os.environ).
    other = Notifier({"NOTIFY_SOCKET": "/nonexistent/other"})
    other.ready()
    assert sent == ["READY=1", "WATCHDOG=1", "STATUS=ok"]
