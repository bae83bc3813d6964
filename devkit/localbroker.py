"""A throwaway mosquitto on a free loopback port, for the demo, the benchmark and the tests.

Not for production (the line's broker is configured in edged.yaml): this only starts the
`mosquitto` binary that scripts/setup.sh installs, waits until it accepts connections, and stops it.
"""

from __future__ import annotations

import os
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
        self.port = free_port()
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        # persistence: sessions and queued QoS 1 messages survive a stop/start (saved on SIGTERM), so a
        # durable subscriber misses nothing across a broker outage
        store = f"persistence true\npersistence_location {workdir}/\n" if persistence else "persistence false\n"
        # Started as root, mosquitto drops to the `mosquitto` user, which may not enter `workdir` (pytest's
        # tmp_path is 0700): it then saves nothing on a stop and a restart forgets every session.
        as_root = "user root\n" if os.geteuid() == 0 else ""
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n{store}"
                             f"max_queued_messages {max_queued}\n{as_root}")
        self.proc: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        return Path(MOSQUITTO).exists()

    def start(self, timeout: float = 10.0) -> None:
        if not self.available():
            raise BrokerUnavailable("mosquitto is not installed (scripts/setup.sh installs it)")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("mosquitto did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
