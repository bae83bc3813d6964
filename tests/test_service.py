"""The pipeline in one process: drops under a slow worker, no drops on replay, broker down is harmless."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import numpy as np
from support import free_port, write_config, write_spot_video

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
