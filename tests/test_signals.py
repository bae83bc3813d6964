"""SIGTERM / SIGINT on a real `edged run` (issue 5, "Process faults"): capture stops, queued frames are
finished or dropped and counted, the database and outbox are flushed, `stopped` is published (retained),
and the process exits 0 within a few seconds, even when inference is stuck.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devkit.support import (
    FROZEN_DAEMON,
    Broker,
    JsonObject,
    Subscriber,
    report_figures,
    wait_until,
    write_config,
    write_spot_video,
)

pytestmark = pytest.mark.slow

STOP_BOUND_S = 20.0  # generous on a loaded 2-core box; the design target is WORKER_DRAIN_S + ~2 s


def db_count(db_path: Path, sql: str) -> int:
    if not db_path.exists():
        return 0
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        return int(db.execute(sql).fetchone()[0])
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


def read_health(path: Path) -> JsonObject:
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, ValueError):
        return {}


@pytest.mark.parametrize("signame, stuck_inference", [("SIGTERM", True), ("SIGINT", False)])
def test_signal_stops_cleanly(tmp_path: Path, tiny_bundle: Path, broker: Broker, signame: str,
                              stuck_inference: bool) -> None:
    video = tmp_path / "line.avi"
    write_spot_video(video, 40, set(range(3, 40, 7)))
    state = tmp_path / "state"
    db_path = state / "edged.db"
    cfg = write_config(tmp_path / "edged.yaml", tiny_bundle, video, state, broker.port,
                       extra_camera="    loop: true\n    realtime: true\n    fps: 20\n    queue_size: 4",
                       mqtt_extra="reject_ttl_ms: 60000")
    freeze = tmp_path / "freeze"
    log = tmp_path / "edged.log"
    env = {**os.environ, "EDGED_TEST_FREEZE_FILE": str(freeze), "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as fh:
        proc = subprocess.Popen([sys.executable, str(FROZEN_DAEMON), "run", "-c", str(cfg)], stdout=fh, stderr=fh,
                                env=env)
    try:
        wait_until(lambda: db_count(db_path, "SELECT COUNT(*) FROM inspections") >= 20 or proc.poll() is not None,
                   60, "inspections")
        assert proc.poll() is None, log.read_text()[-3000:]
        if stuck_inference:
            freeze.touch()  # the worker hangs mid-batch: the queue fills up behind it
            wait_until(lambda: read_health(state / "health.json").get("cameras", {}).get("cam1", {})
                       .get("queue_depth") == 4, 30, "the frame queue to fill")
        t0 = time.monotonic()
        proc.send_signal(getattr(signal, signame))
        code = proc.wait(STOP_BOUND_S)
        stop_s = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "Traceback" not in text
    assert f"received {signame}: stopping" in text
    # every captured frame is inspected (a row), dropped in the queue (live source), or dropped at shutdown
    m = re.search(r"(\d+) queued frame\(s\) dropped at shutdown", text)
    dropped_at_shutdown = int(m.group(1)) if m else 0
    health = read_health(state / "health.json")
    cam = health["cameras"]["cam1"]
    rows = db_count(db_path, "SELECT COUNT(*) FROM inspections")
    assert cam["frames"] == rows + cam["drops"] + dropped_at_shutdown, (cam, rows, dropped_at_shutdown)
    assert health["inspected"] == rows
    if stuck_inference:
        assert dropped_at_shutdown > 0, "a stuck worker cannot finish the queue: what is left is counted"
    # the database is consistent and the outbox state flushed: nothing left in flight
    db = sqlite3.connect(db_path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT COUNT(*) FROM outbox WHERE state = 'pending'").fetchone()[0] == 0
    db.close()
    # `stopped` is the retained status a newcomer sees
    sub = Subscriber(broker.port, ["edged/test/status"])
    try:
        assert sub.wait_for("edged/test/status", 1, 10) == ["stopped"]
    finally:
        sub.close()
    report_figures(f"stop_on_{signame}", {"stop_s": round(stop_s, 2), "stuck_inference": stuck_inference,
                                          "frames": cam["frames"], "inspected": rows, "queue_drops": cam["drops"],
                                          "dropped_at_shutdown": dropped_at_shutdown})
