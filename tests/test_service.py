"""The pipeline in one process: drops under a slow worker, no drops on replay, broker down is harmless,
and a thread that dies is never a healthy daemon."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from devkit.support import Broker, free_port, write_config, write_spot_video
from edged.config import load_config
from edged.detector import Detector, Output
from edged.sdnotify import Notifier
from edged.service import Service


class SlowDetector(Detector):
    """The real detector, made slow: as a big model on a small CPU would be."""

    delay_s = 0.05

    def infer_tensor(self, batch: np.ndarray) -> list[Output]:
        time.sleep(self.delay_s * len(batch))
        return super().infer_tensor(batch)


def test_live_like_source_drops_oldest_under_a_slow_worker(tmp_path: Path, tiny_bundle: Path) -> None:
    video = tmp_path / "v.avi"
    write_spot_video(video, 60, set())
    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_bundle, video, tmp_path / "s",
                                   extra_camera="    realtime: true\n    fps: 100\n    queue_size: 2"))
    service = Service(cfg, detector=SlowDetector(tiny_bundle), notifier=Notifier({}), handle_signals=False)
    service.run()
    s = service.summary()
    assert s.frames == 60
    assert s.drops > 0
    # every frame is either inspected, dropped in the queue, or dropped at shutdown: none vanishes
    assert s.inspected + s.drops + s.dropped_at_shutdown == 60
    db = sqlite3.connect(tmp_path / "s" / "edged.db")
    assert db.execute("SELECT COUNT(*) FROM inspections").fetchone()[0] == s.inspected


def test_replay_of_a_file_drops_nothing_even_when_slow(tmp_path: Path, tiny_bundle: Path) -> None:
    video = tmp_path / "v.avi"
    write_spot_video(video, 30, {4})
    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_bundle, video, tmp_path / "s",
                                   extra_camera="    queue_size: 1"))
    SlowDetector.delay_s = 0.01
    service = Service(cfg, detector=SlowDetector(tiny_bundle), notifier=Notifier({}), handle_signals=False)
    service.run()
    s = service.summary()
    assert (s.frames, s.inspected, s.drops, s.dropped_at_shutdown, s.rejects) == (30, 30, 0, 0, 1)


def test_broker_down_never_stops_inspection(tmp_path: Path, tiny_bundle: Path) -> None:
    video = tmp_path / "v.avi"
    write_spot_video(video, 40, {1, 20})
    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_bundle, video, tmp_path / "s",
                                   broker_port=free_port()))  # nobody listens there
    service = Service(cfg, notifier=Notifier({}), handle_signals=False)
    t0 = time.monotonic()
    service.run()
    assert time.monotonic() - t0 < 15
    s = service.summary()
    assert (s.inspected, s.rejects) == (40, 2)
    db = sqlite3.connect(tmp_path / "s" / "edged.db")
    assert db.execute("SELECT COUNT(*) FROM outbox WHERE state = 'pending'").fetchone()[0] == 2  # kept for later
    assert service.link is not None and service.link.delivered == 0
    health = (tmp_path / "s" / "health.json").read_text()
    assert '"broker": "stopped"' in health  # the final health file, after a clean stop


def test_cameras_that_give_up_make_the_daemon_exit_nonzero(tmp_path: Path, tiny_bundle: Path) -> None:
    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_bundle, tmp_path / "no-such-video.avi", tmp_path / "s",
                                   extra_camera="    reconnect: {initial_s: 0.05, max_s: 0.1, give_up_after: 2}"))
    service = Service(cfg, notifier=Notifier({}), handle_signals=False)
    assert service.run() == 1
    assert service.stats["cam1"].state == "failed"


# --- supervision: a thread that dies makes the daemon unhealthy, for good -----------------------------

HEARTBEAT_TIMEOUT_S = 3.0


class NotifySocket:
    """The receiving end of NOTIFY_SOCKET (what systemd reads), collecting (arrival time, message)."""

    def __init__(self, folder: Path) -> None:
        import socket
        import threading

        self.path = str(folder / "n")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.got: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except (TimeoutError, OSError):
                continue
            self.got += [(time.monotonic(), line) for line in data.decode().splitlines()]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def _boom_after(n: int, fired: list[float]) -> Callable[[type, str, pytest.MonkeyPatch], None]:
    """A replacement method that works n times (through the original), then raises: a bug deep inside."""
    def install(cls: type, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
        original = getattr(cls, name)
        calls = [0]

        def method(self: object, *args: object, **kwargs: object) -> object:
            calls[0] += 1
            if calls[0] > n:
                if not fired:
                    fired.append(time.monotonic())
                raise RuntimeError(f"injected fault in {cls.__name__}.{name}")
            return original(self, *args, **kwargs)

        monkeypatch.setattr(cls, name, method)
    return install


def _component(which: str) -> tuple[type, str, str]:
    """(class, method to break, name of the thread that must be reported dead)"""
    from edged.archive import ImageWriter
    from edged.capture import CaptureThread
    from edged.mqtt_link import MqttLink
    from edged.recorder import RecorderThread
    from edged.worker import InferenceWorker

    return {
        "capture": (CaptureThread, "_validate", "capture:cam1"),
        "inference": (InferenceWorker, "decide", "inference:"),
        "recorder": (RecorderThread, "_maintain", "recorder"),
        "mqtt": (MqttLink, "_step", "mqtt"),
        "images": (ImageWriter, "_save", "images"),
        "stats": (Service, "stats_message", "stats"),
    }[which]


@pytest.mark.slow
@pytest.mark.parametrize("which", ["capture", "inference", "recorder", "mqtt", "images", "stats"])
def test_a_thread_that_dies_makes_the_daemon_unhealthy(tmp_path: Path, tiny_bundle: Path, broker: Broker,
                                                       which: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kill one long-lived component with an exception deep inside it: the daemon must not look healthy.
    STATUS= names the dead thread and why, WATCHDOG=1 stops at once (well within the heartbeat timeout),
    the health file and `edged status` say so, and edged exits with code 1 for systemd to restart it."""
    import io
    import json

    from devkit.support import ServiceRunner, wait_until
    from edged import status

    video = tmp_path / "v.avi"
    write_spot_video(video, 40, set(range(3, 40, 5)))
    cfg_path = write_config(tmp_path / "edged.yaml", tiny_bundle, video, tmp_path / "state",
                            broker.port,
                            extra_camera="    loop: true\n    realtime: true\n    fps: 20")
    cfg_path.write_text(cfg_path.read_text().replace(
        "health: {status_interval_s: 0.5}",
        f"health: {{status_interval_s: 0.5, heartbeat_timeout_s: {HEARTBEAT_TIMEOUT_S}}}"))
    cfg = load_config(cfg_path)
    cfg = cfg.model_copy(update={"storage": cfg.storage.model_copy(update={
        "images": cfg.storage.images.model_copy(update={"save": "all"})})})
    cls, method, thread = _component(which)
    fired: list[float] = []
    _boom_after(15 if which != "stats" else 1, fired)(cls, method, monkeypatch)
    systemd = NotifySocket(tmp_path)
    notifier = Notifier({"NOTIFY_SOCKET": systemd.path, "WATCHDOG_USEC": "500000"})
    runner = ServiceRunner(cfg, notifier=notifier).start()
    try:
        wait_until(lambda: bool(fired), 60, f"the fault in {which}")
        unhealthy = f"UNHEALTHY: thread {thread}"
        wait_until(lambda: any(m.startswith(f"STATUS={unhealthy}") for _, m in systemd.got), 30,
                   "a STATUS= line naming the dead thread")
        runner.thread.join(60)
        assert not runner.thread.is_alive(), "edged exits by itself after a death"
    finally:
        runner.stop()
        systemd.close()
    assert runner.exit_code == 1
    got = systemd.got
    first_bad = next(i for i, (_, m) in enumerate(got) if m.startswith(f"STATUS={unhealthy}"))
    assert "injected fault" in got[first_bad][1]
    assert got[first_bad][0] - fired[0] < HEARTBEAT_TIMEOUT_S, "reported within the heartbeat timeout"
    assert "WATCHDOG=1" in [m for _, m in got[:first_bad]], "pings flowed while healthy"
    assert "WATCHDOG=1" not in [m for _, m in got[first_bad:]], "no watchdog ping once a thread is dead"
    health = json.loads((tmp_path / "state" / "health.json").read_text())
    assert any(name.startswith(thread) for name in health["dead_threads"])
    out = io.StringIO()
    assert status.main(cfg, out=out) == 1
    assert f"thread {thread}" in out.getvalue() and "DIED" in out.getvalue()


@pytest.mark.skipif(not hasattr(__import__("threading").Thread, "_set_native_id"),
                    reason="needs Thread._set_native_id")
def test_a_thread_still_starting_is_not_reported_dead(tmp_path: Path, tiny_bundle: Path) -> None:
    """CI once saw a healthy daemon's image writer reported "ended unexpectedly" 0.3 s after start: the recorder
    starts it, and the supervisor looked while it had an ident but is_alive() was not yet True."""
    from tests.test_health import release_and_join, start_held_from_another_thread

    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_bundle, tmp_path / "v.avi", tmp_path / "s"))
    service = Service(cfg, notifier=Notifier({}), handle_signals=False)
    held = start_held_from_another_thread()
    service.workers.append(held)  # type: ignore[arg-type]  # any thread the supervisor must keep alive
    try:
        assert held.ident is not None and not held.is_alive()
        assert "held" not in service.dead_threads()
    finally:
        release_and_join(held)
    assert service.dead_threads().get("held") == "ended unexpectedly"  # and once it really has ended, it is
