"""`edged status`: health files and databases written here -> exit codes and the lines a technician reads."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from edged import status
from edged.config import Config, parse_config

NOW = 1_790_000_100.0

SCHEMA = """
CREATE TABLE inspections (id INTEGER PRIMARY KEY AUTOINCREMENT, uid TEXT NOT NULL, seq INTEGER NOT NULL,
  camera TEXT NOT NULL, part_id TEXT, captured_at REAL NOT NULL, decided_at REAL NOT NULL, score REAL,
  threshold REAL, is_defective INTEGER NOT NULL, confidence REAL, latency_ms REAL, model TEXT,
  regions TEXT NOT NULL DEFAULT '[]', image_path TEXT, reason TEXT NOT NULL DEFAULT 'ok');
CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, inspection_id INTEGER, kind TEXT NOT NULL,
  topic TEXT NOT NULL, payload TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL,
  state TEXT NOT NULL DEFAULT 'pending', attempts INTEGER NOT NULL DEFAULT 0, delivered_at REAL);
"""


def make_config(state_dir: Path, cameras: tuple[str, ...] = ("cam1",)) -> Config:
    return parse_config({
        "model": {"bundle": str(state_dir / "models" / "current")},
        "cameras": [{"name": c, "source": f"rtsp://op:s3cret@10.0.0.{i + 5}/stream1"} for i, c in enumerate(cameras)],
        "storage": {"state_dir": str(state_dir)},
        "health": {"status_interval_s": 5, "heartbeat_timeout_s": 20},
    })


def make_health(**overrides: Any) -> dict[str, Any]:
    health: dict[str, Any] = {
        "version": "0.1.0", "pid": os.getpid(), "station": "station1", "started_at": NOW - 3 * 3600,
        "updated_at": NOW - 2.0, "model": "cae-20261127T065000", "method": "cae", "precision": "int8",
        "runtime": "onnxruntime", "provider": "CPUExecutionProvider", "threshold": 0.123,
        "broker": "connected", "outbox_backlog": 0, "expired": 0, "delivered": 12,
        "inspected": 5000, "rejects": 12, "last_reject_at": NOW - 10.0,
        "latency_ms": {"p50": 4.1, "p99": 9.0},
        "threads": {"capture:cam1": 0.03, "inference:0": 0.02},
        "cameras": {"cam1": {"state": "streaming", "source": "rtsp://op:s3cret@10.0.0.5/stream1",
                             "last_frame_at": NOW - 2.1, "fps": 29.8, "frames": 5000, "drops": 2,
                             "bad_frames": 1, "reconnects": 3, "queue_depth": 1}},
        "disk": {"images_paused": False},
    }
    health.update(overrides)
    return health


def write_health(state_dir: Path, health: dict[str, Any]) -> None:
    (state_dir / "health.json").write_text(json.dumps(health), encoding="utf-8")


def make_db(path: Path, rows: list[tuple[str, float, int, float]]) -> sqlite3.Connection:
    """rows: (camera, decided_at, is_defective, latency_ms). Returns the open writer connection."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(SCHEMA)
    conn.executemany(
        "INSERT INTO inspections (uid, seq, camera, captured_at, decided_at, is_defective, latency_ms, reason) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(f"u{i}", i, cam, t - 0.01, t, d, lat, "defect" if d else "ok") for i, (cam, t, d, lat) in enumerate(rows)])
    conn.commit()
    return conn


def run_status(config: Config) -> tuple[int, str]:
    out = io.StringIO()
    rc = status.main(config, out=out, now=NOW)
    return rc, out.getvalue()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_healthy(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    write_health(tmp_path, make_health())
    rows = [("cam1", NOW - 299 + i, 1 if i % 100 == 0 else 0, 3.0 + i % 10) for i in range(299)]  # last 5 min
    rows += [("cam1", NOW - 3000 + i, 1, 50.0) for i in range(10)]  # 60 min window only
    rows += [("cam1", NOW - 7000, 1, 50.0)]  # older than both windows
    rows += [("cam2", NOW - 10, 1, 50.0)]  # another camera
    make_db(tmp_path / "edged.db", rows).close()
    rc, text = run_status(config)
    assert rc == 0, text
    lines = text.splitlines()
    assert all(len(line) <= 80 for line in lines), [line for line in lines if len(line) > 80]
    assert "s3cret" not in text and "rtsp://op:***@10.0.0.5/stream1" in text
    assert re.search(r"^camera +cam1: streaming ", text, re.M)
    assert re.search(r"^  last frame +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \(2\.1 s ago\)$", text, re.M)
    assert re.search(r"^  capture +fps 29\.8 +frames 5000 +queue 1 +drops 2$", text, re.M)
    assert re.search(r"^  faults +bad frames 1 +reconnects 3$", text, re.M)
    assert re.search(r"^  rejects +5 min: 3 of 299 \(1\.00 %\) +60 min: 13 of 309 \(4\.21 %\)$", text, re.M)
    assert re.search(r"^  latency +p50 7\.0 ms +p99 12\.0 ms +\(last 5 min, 299 frames\)$", text, re.M)
    assert re.search(r"^broker +connected +outbox backlog 0 +expired 0 +delivered 12$", text, re.M)
    assert re.search(r"^model +cae-20261127T065000 \(cae, int8\)$", text, re.M)
    assert re.search(r"^runtime +onnxruntime / CPUExecutionProvider +threshold 0\.123$", text, re.M)
    assert re.search(r"^uptime +3 h 00 min ", text, re.M)
    assert re.search(r"^health +OK$", text, re.M)


def test_missing_health_file(tmp_path: Path) -> None:
    rc, text = run_status(make_config(tmp_path))
    assert rc == 1
    assert "UNHEALTHY" in text and "no health file at" in text and "database" in text


def test_stale_health_file(tmp_path: Path) -> None:
    write_health(tmp_path, make_health(updated_at=NOW - 16.0))  # 3 x 5 s = 15 s
    rc, text = run_status(make_config(tmp_path))
    assert rc == 1 and "health file is 16 s old" in text and "hung or stopped" in text
    write_health(tmp_path, make_health(updated_at=NOW - 14.0))
    assert run_status(make_config(tmp_path))[0] == 0


@pytest.mark.parametrize("state", ["reconnecting", "starting", "failed", "finished"])
def test_camera_not_streaming(tmp_path: Path, state: str) -> None:
    health = make_health()
    health["cameras"]["cam1"]["state"] = state
    write_health(tmp_path, health)
    rc, text = run_status(make_config(tmp_path))
    assert rc == 1
    assert f"camera cam1 is {state}, not streaming" in text
    assert re.search(rf"^camera +cam1: {state} ", text, re.M)


def test_camera_missing_from_health_file(tmp_path: Path) -> None:
    write_health(tmp_path, make_health())
    rc, text = run_status(make_config(tmp_path, cameras=("cam1", "cam2")))
    assert rc == 1 and "camera cam2 is not in the health file" in text


def test_stale_thread_heartbeat(tmp_path: Path) -> None:
    write_health(tmp_path, make_health(threads={"capture:cam1": 0.1, "inference:0": 25.0}))
    rc, text = run_status(make_config(tmp_path))
    assert rc == 1 and "thread inference:0 silent for 25 s" in text


def test_dead_pid(tmp_path: Path) -> None:
    write_health(tmp_path, make_health(pid=dead_pid()))
    rc, text = run_status(make_config(tmp_path))
    assert rc == 1 and "is not running" in text


def test_garbage_health_file(tmp_path: Path) -> None:
    (tmp_path / "health.json").write_text("{not json", encoding="utf-8")
    rc, text = run_status(make_config(tmp_path))
    assert rc == 1 and "not valid JSON" in text
    write_health(tmp_path, {"pid": "x", "cameras": [], "threads": {"a": "?"}})  # wrong types: no crash
    rc, text = run_status(make_config(tmp_path))
    assert rc == 1 and "UNHEALTHY" in text


def test_warnings_do_not_change_exit_code(tmp_path: Path) -> None:
    write_health(tmp_path, make_health(broker="disconnected", outbox_backlog=42,
                                       disk={"images_paused": True}))
    rc, text = run_status(make_config(tmp_path))
    assert rc == 0
    assert "MQTT broker disconnected" in text and "image saving paused" in text
    assert re.search(r"^broker +disconnected +outbox backlog 42 ", text, re.M)


def test_database_missing_is_reported_not_fatal(tmp_path: Path) -> None:
    write_health(tmp_path, make_health())
    rc, text = run_status(make_config(tmp_path))
    assert rc == 0 and "does not exist yet" in text
    assert not (tmp_path / "edged.db").exists()  # read-only: status never creates the database


def test_database_read_while_the_daemon_writes(tmp_path: Path) -> None:
    """A live writer holds the WAL; the read-only reader sees committed rows and changes nothing."""
    write_health(tmp_path, make_health())
    writer = make_db(tmp_path / "edged.db", [("cam1", NOW - 30, 1, 5.0)])
    try:
        writer.execute("INSERT INTO inspections (uid, seq, camera, captured_at, decided_at, is_defective) "
                       "VALUES ('u', 1, 'cam1', ?, ?, 0)", (NOW - 20, NOW - 20))
        writer.commit()
        writer.execute("BEGIN")
        writer.execute("INSERT INTO inspections (uid, seq, camera, captured_at, decided_at, is_defective) "
                       "VALUES ('v', 2, 'cam1', ?, ?, 1)", (NOW - 10, NOW - 10))  # not committed
        before = (tmp_path / "edged.db").stat().st_mtime_ns
        rc, text = run_status(make_config(tmp_path))
        assert rc == 0, text
        assert "5 min: 1 of 2 (50.00 %)" in text
        assert (tmp_path / "edged.db").stat().st_mtime_ns == before
        writer.rollback()
    finally:
        writer.close()


def test_windows_match_a_full_scan(tmp_path: Path) -> None:
    """The rowid bisection finds the same rows as scanning everything, with commit-order jitter."""
    rows = [("cam1" if i % 3 else "cam2", NOW - 5000 + i + (7 if i % 11 == 0 else 0), int(i % 13 == 0), 1.0)
            for i in range(5000)]
    make_db(tmp_path / "edged.db", rows).close()
    got, note = status.read_database(tmp_path / "edged.db", NOW)
    assert note is None
    for window in status.WINDOWS_S:
        for cam in ("cam1", "cam2"):
            inside = [r for r in rows if r[0] == cam and r[1] >= NOW - window]
            assert got[window][cam].inspected == len(inside)
            assert got[window][cam].rejects == sum(r[2] for r in inside)


def test_not_inspected_rows_are_not_counted(tmp_path: Path) -> None:
    conn = make_db(tmp_path / "edged.db", [("cam1", NOW - 5, 0, 1.0)])
    conn.execute("INSERT INTO inspections (uid, seq, camera, captured_at, decided_at, is_defective, reason) "
                 "VALUES ('n', 9, 'cam1', ?, ?, 1, 'not_inspected')", (NOW - 4, NOW - 4))
    conn.commit()
    conn.close()
    got, _ = status.read_database(tmp_path / "edged.db", NOW)
    assert got[300.0]["cam1"].inspected == 1 and got[300.0]["cam1"].rejects == 0


def test_helpers() -> None:
    assert status.fmt_duration(0.42) == "0.4 s"
    assert status.fmt_duration(59) == "59 s"
    assert status.fmt_duration(303) == "5 min 03 s"
    assert status.fmt_duration(7260) == "2 h 01 min"
    assert status.fmt_duration(3 * 86400 + 4 * 3600) == "3 d 04 h"
    assert status.fmt_duration(None) == "?"
    assert status.pid_alive(os.getpid()) and not status.pid_alive(dead_pid()) and not status.pid_alive(0)


def test_stopped_daemon_database_is_readable_without_write_access() -> None:
    """After the daemon stops, a WAL database has no -shm file; a technician who may read but not write
    the state directory must still get the figures (the reader falls back to an immutable open)."""
    folder = Path(tempfile.mkdtemp(prefix="edged-ro-", dir="/tmp"))
    try:
        make_db(folder / "edged.db", [("cam1", NOW - 30, 1, 5.0), ("cam1", NOW - 20, 0, 5.0)]).close()
        assert not (folder / "edged.db-shm").exists()
        code = ("import sys; from pathlib import Path; from edged.status import read_database; "
                f"got, note = read_database(Path('{folder}/edged.db'), {NOW}); "
                "print(note or got[300.0]['cam1'].inspected)")
        if os.geteuid() == 0:  # root ignores file modes: read as 'nobody' instead
            if shutil.which("setpriv") is None:
                pytest.skip("running as root without setpriv: cannot read as an unprivileged user")
            folder.chmod(0o755)
            (folder / "edged.db").chmod(0o644)
            cmd = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code]
        else:
            folder.chmod(0o555)
            cmd = [sys.executable, "-c", code]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip() == "2", proc.stdout
        assert not (folder / "edged.db-shm").exists()
    finally:
        folder.chmod(0o755)
        shutil.rmtree(folder, ignore_errors=True)


def test_parts_rejects_by_reason_and_triggers(tmp_path: Path) -> None:
    config = make_config(tmp_path)
    write_health(tmp_path, make_health(parts=40, rejects_by_reason={"defect": 9, "not_inspected": 3},
                                       triggers={"received": 40, "not_inspected": 3, "late_verdicts": 1}))
    rc, text = run_status(config)
    assert rc == 0, text
    assert re.search(r"^inspected +5000 +parts 40 +rejects 12 ", text, re.M)
    assert re.search(r"^rejects by +defect 9 +not_inspected 3$", text, re.M)
    assert re.search(r"^triggers +40 +not inspected in time 3 +late 1$", text, re.M)


def test_dead_thread_db_full_and_invalid_outputs(tmp_path: Path) -> None:
    write_health(tmp_path, make_health(dead_threads={"recorder": "RuntimeError: boom"}, invalid_outputs=7,
                                       disk={"images_paused": False, "db_full": True, "db_errors": 42}))
    rc, text = run_status(make_config(tmp_path))
    assert rc == 1
    flat = " ".join(text.split())
    assert "thread recorder DIED (RuntimeError: boom)" in flat
    assert "database disk FULL (42 failed commits)" in flat
    assert "7 frame(s) not inspected: the model's output was NaN or infinite" in flat


def test_a_stale_health_file_on_a_full_disk_says_disk_full_not_hung(tmp_path: Path) -> None:
    """When even the in-place rewrite fails, the file goes stale: status then looks at the disk itself."""
    state = tmp_path / "state"
    state.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(state)], capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)")
    try:
        write_health(state, make_health(updated_at=NOW - 60.0))
        with (state / "filler").open("wb") as fh, pytest.raises(OSError):
            fh.write(b"\0" * 1_000_000)
        rc, text = run_status(make_config(state))
        flat = " ".join(text.split())
        assert rc == 1 and f"the disk of {state} is FULL" in flat, flat
        (state / "filler").unlink()
        rc, text = run_status(make_config(state))
        assert rc == 1 and "hung or stopped" in " ".join(text.split()) and "FULL" not in text
    finally:
        subprocess.run(["umount", "-l", str(state)], capture_output=True)


def test_mqtt_input_and_connection_counts_are_shown(tmp_path: Path) -> None:
    quiet = {"refused": 7, "callback_errors": 0, "paho_restarts": 0, "connect_refusals": 0, "session_takeovers": 0,
             "triggers_outstanding": 2}
    write_health(tmp_path, make_health(mqtt=quiet))
    rc, text = run_status(make_config(tmp_path))
    assert rc == 0 and re.search(r"^mqtt in +refused 7 +triggers outstanding 2 +callback errors 0$", text, re.M)
    assert "warning" not in text
    write_health(tmp_path, make_health(mqtt={**quiet, "callback_errors": 3, "connect_refusals": 4}))
    rc, text = run_status(make_config(tmp_path))
    assert rc == 0  # the daemon carried on: warnings, not unhealthy
    assert "3 callback error(s)" in text and "refused or dropped 4 connection(s)" in text


def test_degraded_input_is_a_problem_with_its_reason(tmp_path: Path) -> None:
    health = make_health()
    health["cameras"]["cam1"]["input"] = {"state": "degraded", "reason": "out_of_focus", "since": NOW - 60.0,
                                          "alarms": 2, "frames_not_ok": 1800, "reference": True,
                                          "reject_rate": 0.0, "last": None}
    write_health(tmp_path, health)
    rc, text = run_status(make_config(tmp_path))
    assert rc == 1 and "camera cam1 input DEGRADED: out_of_focus" in text
    assert re.search(r"^  input +DEGRADED: out_of_focus for 1 min", text, re.M)
    assert re.search(r"^  alarms +2 +frames out of range 1800 +reject rate 0.000", text, re.M)
    health["cameras"]["cam1"]["input"].update(state="ok", reason=None, since=None)
    write_health(tmp_path, health)
    rc, text = run_status(make_config(tmp_path))
    assert rc == 0 and re.search(r"^  input +ok$", text, re.M)
