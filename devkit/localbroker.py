"""A throwaway mosquitto on a free loopback port, for the demo, the benchmark and the tests.

Not for production (the line's broker is configured in edged.yaml): this only starts the
`mosquitto` binary that scripts/setup.sh installs, waits until it accepts connections, and stops it.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


class BrokerUnavailable(RuntimeError):
    """mosquitto is not installed here."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the OS picks it; another process could take it before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocalBroker:
    """mosquitto on 127.0.0.1:<port>; can be stopped and started again on the same port."""

    def __init__(self, workdir: Path, persistence: bool = False, max_queued: int = 10000) -> None:
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = False  # once it has run, a restart keeps the port its clients know
        self.port = free_port()
        # persistence: sessions and queued QoS 1 messages survive a stop/start (saved on SIGTERM), so a
        # durable subscriber misses nothing across a broker outage
        store = f"persistence true\npersistence_location {workdir}/\n" if persistence else "persistence false\n"
        # Started as root, mosquitto drops to the `mosquitto` user, which may not enter `workdir` (pytest's
        # tmp_path is 0700): it then saves nothing on a stop and a restart forgets every session.
        as_root = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{store}"
                             f"max_queued_messages {max_queued}\n{as_root}")

    def use_port(self, port: int) -> None:
        """Listen on `port` from the next start: the config's listener line is changed, the rest a test added
        (passwords, TLS, bridges) is kept."""
        text, n = re.subn(rf"^listener {self.port} ", f"listener {port} ", self.conf.read_text(), count=1,
                          flags=re.MULTILINE)
        if n != 1:
            raise RuntimeError(f"{self.conf} has no 'listener {self.port}' line to move")
        self.conf.write_text(text)
        self.port = port

    @staticmethod
    def available() -> bool:
        return Path(MOSQUITTO).exists()

    def start(self, timeout: float = 10.0) -> None:
        """Start mosquitto and return once it runs and accepts connections. The port came from `free_port`, so
        another process may have bound it since: on a first start mosquitto then moves to a fresh port (3 tries)."""
        if not self.available():
            raise BrokerUnavailable("mosquitto is not installed (scripts/setup.sh installs it)")
        for attempt in range(3):
            if self._run(timeout):
                self.started = True
                return
            if self.started or attempt == 2 or "Address already in use" not in self.log_tail(1):
                break
            self.use_port(free_port())
        raise RuntimeError(f"mosquitto did not start on port {self.port}: {self.log_tail()}")

    def _run(self, timeout: float) -> bool:
        """One mosquitto process: True once its log says it runs; False when it exited or never got there
        (then stopped)."""
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as log:  # its own lines (connections, errors) are kept for a failed test
            self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc = None
                return False
            if self._says_running(offset):
                return True
            time.sleep(0.05)
        self.stop()
        return False

    def _says_running(self, offset: int) -> bool:
        """Whether this run's log has mosquitto's "running" line, written once every listener is open. A TCP
        accept alone is not proof: another process that bound the port first accepts too (and mosquitto exits,
        unable to bind). The line, not an MQTT CONNECT, because a test's broker may want TLS or a password."""
        with self.log.open("rb") as fh:
            fh.seek(offset)
            return re.search(rb"mosquitto version \S+ running", fh.read()) is not None

    def log_tail(self, lines: int = 5) -> str:
        """The last lines mosquitto wrote (why it stopped or refused), for an error message."""
        try:
            text = self.log.read_text(errors="replace").strip().splitlines()
        except OSError:
            return "(no log)"
        return " | ".join(text[-lines:]) or "(empty log)"

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
