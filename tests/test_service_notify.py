"""`edged run` under a fake systemd: READY/STATUS/WATCHDOG arrive on NOTIFY_SOCKET, a hung inference
worker stops the watchdog pings (while STATUS goes on), they resume when it recovers, STOPPING on SIGTERM.

The worker is hung by devkit/frozen_daemon.py: inference blocks while $EDGED_TEST_FREEZE_FILE exists.
No assertion depends on the machine's speed: every wait is for an event, bounded by a generous deadline.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devkit.support import FROZEN_DAEMON, write_spot_video
from edged import status
from edged.config import load_config

pytestmark = pytest.mark.slow

HEARTBEAT_TIMEOUT_S = 1.0
DEADLINE_S = 60.0
QUIET_STATUSES = 6  # consecutive STATUS= messages (0.5 s apart) with no WATCHDOG=1 between them


class FakeSystemd:
    """The receiving end of NOTIFY_SOCKET: a datagram socket on a short path."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="sdn-", dir="/tmp"))  # AF_UNIX paths: at most 107 bytes
        self.path = str(self.dir / "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.5)
        self.messages: list[str] = []

    def wait_for(self, done: Callable[[list[str]], bool], what: str, proc: subprocess.Popen[bytes],
                 log: Path) -> list[str]:
        """Receive until done(messages received by this call) is true."""
        got: list[str] = []
        deadline = time.monotonic() + DEADLINE_S
        while not done(got):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; got {got[-20:]}\n{log.read_text()[-3000:]}")
            try:
                data = self.sock.recv(4096)
            except TimeoutError:  # nothing queued: only now does an exit end the wait (messages sent last count)
                if proc.poll() is not None:
                    raise AssertionError(f"edged exited ({proc.returncode}) waiting for {what}; got {got[-20:]}\n"
                                         f"{log.read_text()[-3000:]}") from None
                continue
            for line in data.decode().splitlines():
                got.append(line)
                self.messages.append(line)
        return got

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def systemd() -> Iterator[FakeSystemd]:
    fake = FakeSystemd()
    yield fake
    fake.close()


def quiet_watchdog(messages: list[str]) -> bool:
    """True once QUIET_STATUSES STATUS= messages arrived in a row without a WATCHDOG=1 among them."""
    run = 0
    for m in messages:
        if m == "WATCHDOG=1":
            run = 0
        elif m.startswith("STATUS="):
            run += 1
            if run >= QUIET_STATUSES:
                return True
    return False


def test_ready_status_watchdog_and_hung_worker(tmp_path: Path, tiny_bundle: Path, systemd: FakeSystemd) -> None:
    video = tmp_path / "line.avi"
    write_spot_video(video, 30, {7})
    state = tmp_path / "state"
    cfg_path = tmp_path / "edged.yaml"
    cfg_path.write_text(f"""
station: test
model: {{bundle: {tiny_bundle}}}
cameras:
  - name: cam1
    source: "{video}"
    loop: true          # a live line: frames keep coming
    realtime: true
    fps: 20
storage: {{state_dir: {state}}}
health: {{status_interval_s: 0.5, heartbeat_timeout_s: {HEARTBEAT_TIMEOUT_S}}}
mqtt: {{enabled: false}}
""")
    freeze = tmp_path / "freeze"
    env = {k: v for k, v in os.environ.items() if k not in ("INVOCATION_ID", "JOURNAL_STREAM", "WATCHDOG_PID")}
    env.update(NOTIFY_SOCKET=systemd.path, WATCHDOG_USEC="2000000", EDGED_TEST_FREEZE_FILE=str(freeze))
    log = tmp_path / "edged.log"
    with log.open("wb") as log_fh:
        proc = subprocess.Popen([sys.executable, str(FROZEN_DAEMON), "run", "-c", str(cfg_path)], env=env,
                                stdout=log_fh, stderr=subprocess.STDOUT)
    try:
        # 1. start-up: READY=1, then STATUS= and WATCHDOG=1 pings.
        def started(got: list[str]) -> bool:
            if "READY=1" not in got:
                return False
            after = got[got.index("READY=1"):]
            return any(m.startswith("STATUS=") for m in after) and after.count("WATCHDOG=1") >= 3

        got = systemd.wait_for(started, "READY=1, STATUS= and WATCHDOG=1", proc, log)
        status_line = next(m for m in got if m.startswith("STATUS="))
        assert "fps" in status_line and "inspected" in status_line and "broker" in status_line, status_line
        # A healthy daemon reads as healthy to the technician.
        config = load_config(cfg_path)
        systemd.wait_for(lambda g: sum(m.startswith("STATUS=") for m in g) >= 2, "a health file", proc, log)
        out = io.StringIO()
        assert status.main(config, out=out) == 0, out.getvalue()

        # 2. hang the inference worker: the pings stop while the supervisor keeps reporting STATUS=.
        freeze.touch()
        systemd.wait_for(quiet_watchdog, f"{QUIET_STATUSES} STATUS= without WATCHDOG=1", proc, log)
        out = io.StringIO()
        assert status.main(config, out=out) == 1, out.getvalue()
        assert "thread inference:0 silent" in out.getvalue()

        # 3. the worker recovers: the pings come back.
        freeze.unlink()
        systemd.wait_for(lambda g: "WATCHDOG=1" in g, "WATCHDOG=1 after the worker recovered", proc, log)

        # 4. systemctl stop: STOPPING=1 and a clean exit.
        proc.send_signal(signal.SIGTERM)
        systemd.wait_for(lambda g: "STOPPING=1" in g, "STOPPING=1", proc, log)
        assert proc.wait(timeout=30) == 0, log.read_text()[-3000:]
        assert "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
