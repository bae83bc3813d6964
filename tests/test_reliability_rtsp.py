"""A real RTSP camera that goes away and comes back (issue 5, "Must show" 3).

The server is GStreamer's gst-rtsp-server (tests/rtsp_server.py, run by the system python). It is
stopped (SIGTERM), killed (SIGKILL) and frozen (SIGSTOP: the TCP connection stays open but nothing
arrives, the case that needs the read timeout) again and again. Each time the daemon must notice,
report `reconnecting`, reopen with backoff, and inspect again soon after the stream is back; threads,
OS tasks and file descriptors must not grow from cycle to cycle.

The other kind of stuck read(), one that never returns (FFmpeg's timeout cannot reach it), is shown with
a FIFO: the capture heartbeat stops and the service withholds the systemd watchdog ping.
"""

from __future__ import annotations

import gc
import os
import select
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import cv2
import pytest

from devkit.support import (
    Broker,
    ServiceRunner,
    Subscriber,
    free_port,
    open_descriptors,
    report_figures,
    spot_frame,
    wait_until,
    write_config,
)
from edged.config import HealthConfig, load_config
from edged.sdnotify import Notifier

pytestmark = pytest.mark.slow

SYSTEM_PYTHON = "/usr/bin/python3"
SERVER = Path(__file__).with_name("rtsp_server.py")


def gst_rtsp_available() -> bool:
    if not Path(SYSTEM_PYTHON).exists():
        return False
    probe = ("import gi; gi.require_version('Gst', '1.0'); gi.require_version('GstRtspServer', '1.0'); "
             "from gi.repository import GstRtspServer; import sys; from gi.repository import Gst; Gst.init(None); "
             "sys.exit(0 if Gst.ElementFactory.find('x264enc') else 1)")
    return subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, timeout=30).returncode == 0


class RtspServer:
    def __init__(self, port: int) -> None:
        self.port = port
        self.url = f"rtsp://127.0.0.1:{port}/cam"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> float:
        """Start and wait until it listens; returns the time.monotonic() it was ready."""
        self.proc = subprocess.Popen([SYSTEM_PYTHON, str(SERVER), "--port", str(self.port)], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        line = b""
        while time.monotonic() < deadline and b"\n" not in line:
            ready, _, _ = select.select([self.proc.stdout], [], [], 0.1)
            if ready:
                chunk = os.read(self.proc.stdout.fileno(), 256)
                if not chunk:
                    break
                line += chunk
        assert line.startswith(b"READY"), f"rtsp server did not start: {line!r}"
        return time.monotonic()

    def send(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None:
            return
        if sig != signal.SIGCONT:
            self.proc.send_signal(signal.SIGCONT)  # a frozen server cannot handle SIGTERM
        self.proc.send_signal(sig)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.proc = None


def census() -> dict[str, int]:
    """Python threads, OS tasks (FFmpeg's native threads too) and open file descriptors of this process."""
    gc.collect()  # descriptors of earlier tests' garbage would otherwise close mid-test and hide a leak
    return {"threads": threading.active_count(), "tasks": len(os.listdir("/proc/self/task")),
            "fds": open_descriptors()}


def test_rtsp_camera_lost_and_back_repeatedly(tmp_path: Path, tiny_bundle: Path, broker: Broker) -> None:
    if not gst_rtsp_available():
        pytest.skip("gst-rtsp-server for the system python (python3-gi, gir1.2-gst-rtsp-server-1.0) or x264enc "
                    "is not installed")
    server = RtspServer(free_port())
    server.start()
    cfg = load_config(write_config(
        tmp_path / "edged.yaml", tiny_bundle, server.url, tmp_path / "state", broker.port,
        extra_camera=("    open_timeout_s: 3\n    read_timeout_s: 1\n    stall_timeout_s: 3\n"
                      "    reconnect: {initial_s: 0.2, max_s: 1.0}")))
    sub = Subscriber(broker.port, ["edged/test/camera/cam1"])
    runner = ServiceRunner(cfg)
    stats = runner.service.stats["cam1"]
    runner.start()
    cycles: list[dict[str, object]] = []
    counts: list[dict[str, int]] = []  # each cycle's census()
    try:
        wait_until(lambda: runner.service.counters.inspected >= 10, 30, "the first inspections from the stream")
        for kind in ("SIGTERM", "SIGKILL", "SIGSTOP", "SIGKILL", "SIGTERM", "SIGSTOP"):
            sig = getattr(signal, kind)
            t_fault = time.monotonic()
            if sig == signal.SIGSTOP:
                server.send(sig)  # hung camera: the connection stays open, nothing arrives
            else:
                server.stop(sig)
            wait_until(lambda: stats.state == "reconnecting", 30, f"the daemon to notice {kind}")
            detected_s = time.monotonic() - t_fault
            time.sleep(1.0)  # the camera stays away a little longer: reopen attempts fail meanwhile
            frames_before = stats.frames
            inspected_before = runner.service.counters.inspected
            if sig == signal.SIGSTOP:
                server.send(signal.SIGCONT)
                t_back = time.monotonic()
            else:
                t_back = server.start()
            wait_until(lambda: stats.frames > frames_before, 30, f"frames again after {kind}")  # noqa: B023
            reconnect_s = time.monotonic() - t_back
            wait_until(lambda: runner.service.counters.inspected >= inspected_before + 10, 30,  # noqa: B023
                       f"inspections again after {kind}")
            assert stats.state == "streaming"
            counts.append(census())
            cycles.append({"fault": kind, "detected_s": round(detected_s, 2), "reconnect_s": round(reconnect_s, 2),
                           **counts[-1]})
    finally:
        runner.stop()
        server.stop()
        states = [p for p in sub.on("edged/test/camera/cam1")]
        sub.close()
    report_figures("rtsp_reconnect", {"cycles": cycles, "reconnects": stats.reconnects,
                                      "bad_frames": stats.bad_frames, "inspected": runner.service.counters.inspected})
    # every loss was reported and every return counted
    assert stats.reconnects >= len(cycles)
    assert states.count("reconnecting") >= len(cycles) and states[-1] in ("streaming", "finished", "reconnecting")
    assert states.count("streaming") >= len(cycles) + 1
    # nothing grows from cycle to cycle (the first cycle is the reference: the stream's own threads are up)
    first = counts[0]
    for c in counts[1:]:
        assert c["threads"] <= first["threads"], cycles
        assert c["tasks"] <= first["tasks"] + 2, cycles
        assert c["fds"] <= first["fds"] + 2, cycles


def test_a_read_that_never_returns_stops_the_watchdog_pings(tmp_path: Path, tiny_bundle: Path) -> None:
    """The other half of "a stuck read()": a stream whose read() blocks in the kernel, where FFmpeg's read
    timeout cannot reach (here a FIFO whose writer stops writing but keeps it open; on a device, a V4L2 or
    GStreamer read that hangs in the driver). The capture thread stops beating, the service withholds
    WATCHDOG=1 while STATUS= goes on, and systemd (WatchdogSec=) kills and restarts the process.
    """
    fifo = tmp_path / "cam.mjpeg"
    os.mkfifo(fifo)
    stall = threading.Event()
    release = threading.Event()

    def camera() -> None:  # MJPEG into the pipe: a burst for FFmpeg's probe, then live pace, then silence
        fd = os.open(fifo, os.O_WRONLY)
        try:
            for i in range(400):
                os.write(fd, cv2.imencode(".jpg", spot_frame(False, seed=i))[1].tobytes())
                if i >= 300:
                    time.sleep(0.05)
            stall.set()
            release.wait(120)
        finally:
            os.close(fd)

    notify_path = str(tmp_path / "notify.sock")
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(notify_path)
    receiver.settimeout(0.2)
    messages: list[tuple[float, str]] = []

    def receive() -> None:
        while not release.is_set():
            try:
                messages.append((time.monotonic(), receiver.recv(4096).decode()))
            except TimeoutError:
                continue
            except OSError:
                return

    writer = threading.Thread(target=camera, daemon=True)
    listener = threading.Thread(target=receive, daemon=True)
    writer.start()
    listener.start()
    cfg = load_config(write_config(tmp_path / "edged.yaml", tiny_bundle, f"file://{fifo}", tmp_path / "state",
                                   extra_camera="    read_timeout_s: 1\n    stall_timeout_s: 2"))
    cfg = cfg.model_copy(update={"health": HealthConfig(heartbeat_timeout_s=2.0, status_interval_s=0.5)})
    runner = ServiceRunner(cfg, notifier=Notifier({"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "1000000"}))
    runner.start()
    try:
        wait_until(lambda: stall.is_set(), 60, "the camera to go silent")
        t_stall = time.monotonic()

        def withheld() -> bool:
            after = [m for t, m in messages if t > t_stall + 3.0]  # past the 2 s heartbeat timeout
            return sum(m.startswith("STATUS=") for m in after) >= 4 and not any(m == "WATCHDOG=1" for m in after)

        wait_until(withheld, 30, "STATUS= going on without WATCHDOG=1")
        capture = runner.service.captures[0]
        assert capture.is_alive(), "the capture thread is stuck in read(), not ended"
        pings = [t for t, m in messages if m == "WATCHDOG=1"]
        assert pings and pings[0] < t_stall, "the watchdog was fed while frames flowed"
        last_ping_after_stall = pings[-1] - t_stall
    finally:
        runner.stop()  # the stuck capture thread is left behind after its join timeout, as designed
        release.set()  # the writer closes the pipe: read() returns, the capture thread sees the stop and ends
        writer.join(10)
        receiver.close()
    wait_until(lambda: not runner.service.captures[0].is_alive(), 10, "the capture thread to end")
    report_figures("stuck_read_watchdog", {"heartbeat_timeout_s": 2.0, "watchdog_usec": 1_000_000,
                                           "last_watchdog_ping_after_stall_s": round(last_ping_after_stall, 2)})
