"""The SQLite log and outbox: one transaction per group, corrupt files moved aside, the outbox cap."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import replace
from pathlib import Path

import pytest

from edged.frames import CameraStamp
from edged.store import InspectionRow, InspectionWriter, Outbox, OutboxMessage, connect, open_database


def row(seq: int, defective: bool = False, t: float | None = None) -> InspectionRow:
    t = time.time() if t is None else t
    return InspectionRow(f"u{seq}", seq, "cam1", None, t, t + 0.01, 1.0, 0.5, defective, 2.0, 10.0, "m", [],
                         None, "defect" if defective else "ok")


def test_rows_and_their_rejects_are_written_together(tmp_path: Path) -> None:
    conn = open_database(tmp_path / "e.db")
    w = InspectionWriter(conn)
    done = w.record([row(0), row(1, True)], [OutboxMessage("reject", "t/reject", {"id": "u1"}, time.time() + 2,
                                                           row_index=1)])
    ids = done.ids
    assert len(ids) == 2
    (outbox_id, inspection_id, state) = conn.execute("SELECT id, inspection_id, state FROM outbox").fetchone()
    assert inspection_id == ids[1] and state == "pending"
    # the message as stored, for the link's fast path: its row id, and the payload text the row holds
    assert done.outbox == Outbox(conn).pending(10)
    assert done.outbox[0].id == outbox_id and done.outbox[0].kind == "reject"
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    conn = open_database(tmp_path / "e.db")
    w = InspectionWriter(conn)
    bad = OutboxMessage("reject", "t", {"x": object()}, None, row_index=0)  # not JSON-serializable
    with pytest.raises(TypeError):
        w.record([row(0)], [bad])
    assert conn.execute("SELECT COUNT(*) FROM inspections").fetchone()[0] == 0


def test_corrupt_database_is_moved_aside(tmp_path: Path, caplog: object) -> None:
    path = tmp_path / "e.db"
    path.write_bytes(b"SQLite format 3\x00" + b"\x13" * 4096)
    conn = open_database(path)
    assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert list(tmp_path.glob("e.db.corrupt-*"))


def test_outbox_order_marks_and_cap(tmp_path: Path) -> None:
    conn = open_database(tmp_path / "e.db")
    w = InspectionWriter(conn)
    msgs = [OutboxMessage("audit" if i % 2 else "reject", "t", {"i": i}, None) for i in range(10)]
    w.record([], msgs)
    ob = Outbox(connect(tmp_path / "e.db"))
    items = ob.pending(100)
    assert [i.id for i in items] == sorted(i.id for i in items)
    ob.mark([items[0].id], "delivered")
    assert ob.backlog() == 9
    assert ob.enforce_cap(5) == 4
    kinds = [r[0] for r in conn.execute("SELECT kind FROM outbox WHERE state = 'dropped'")]
    assert kinds == ["audit"] * 4  # audit-only rows go first


def test_retention_by_age_and_count(tmp_path: Path) -> None:
    conn = open_database(tmp_path / "e.db")
    w = InspectionWriter(conn)
    old = time.time() - 10 * 86400
    w.record([row(i, t=old) for i in range(5)] + [row(i) for i in range(5, 2005)], [])
    assert w.retention(max_age_days=5, max_rows=1000) == 5 + 1000
    assert conn.execute("SELECT COUNT(*) FROM inspections").fetchone()[0] == 1000


def test_readonly_connection_cannot_write(tmp_path: Path) -> None:
    open_database(tmp_path / "e.db").close()
    ro = connect(tmp_path / "e.db", readonly=True)
    try:
        ro.execute("DELETE FROM inspections")
        raise AssertionError("read-only connection wrote")
    except sqlite3.OperationalError:
        pass


# --- "corrupt" means SQLite says so; anything else keeps the file -----------------------------------

HOLD_LOCK = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("PRAGMA locking_mode=EXCLUSIVE")
conn.execute("BEGIN EXCLUSIVE")
conn.execute("INSERT INTO meta VALUES ('held', 'by another process')")
print("locked", flush=True)
time.sleep(60)
"""


def test_a_locked_database_is_an_error_and_is_never_moved_aside(tmp_path: Path) -> None:
    """Another process holds the write lock (a backup, a sqlite3 shell): the start fails with a clear
    error and exit 1 (systemd retries later); the file, with its pending rejects, stays where it is."""
    import subprocess
    import sys

    from edged.store import StoreError

    path = tmp_path / "e.db"
    conn = open_database(path)
    InspectionWriter(conn).record([], [OutboxMessage("reject", "t", {"id": "pending-1"}, None)])
    conn.execute("PRAGMA journal_mode=DELETE")  # a rollback journal: a writer's lock keeps readers out too
    conn.close()
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreError, match="locked by another process") as exc:
            open_database(path, timeout_s=0.5)
        assert "left as it is" in str(exc.value)
    finally:
        holder.kill()
        holder.wait()
    assert not list(tmp_path.glob("e.db.corrupt-*")), "a locked database is not corrupt"
    conn = open_database(path)
    assert conn.execute("SELECT payload FROM outbox").fetchall() == [('{"id":"pending-1"}',)]


@pytest.mark.parametrize("kind", ["directory", "state_dir", "text file", "png"])
def test_a_path_that_is_not_a_sqlite_file_is_refused_and_kept(tmp_path: Path, kind: str) -> None:
    from edged.store import NotADatabase, check_database_path

    path = tmp_path / "e.db"
    if kind == "directory":
        path.mkdir()
        (path / "keep.txt").write_text("x")
    elif kind == "state_dir":
        path = tmp_path  # database: "." (the state directory itself)
    elif kind == "text file":
        path.write_text("station notes: do not delete\n")
    else:
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert check_database_path(path)
    with pytest.raises(NotADatabase, match=r"storage\.database"):
        open_database(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == before, "nothing moved, nothing created"


def test_an_empty_file_is_a_new_database(tmp_path: Path) -> None:
    path = tmp_path / "e.db"
    path.touch()
    assert open_database(path).execute("PRAGMA quick_check").fetchone()[0] == "ok"


def test_a_full_database_reports_the_real_error_not_the_failed_rollback(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    """SQLite rolls back by itself on SQLITE_FULL; the ROLLBACK after it failed with 'no transaction is
    active' and that was what the log showed."""
    from edged.store import is_disk_full

    conn = open_database(tmp_path / "e.db")
    conn.execute("PRAGMA max_page_count=40")  # a database that cannot grow: as a full disk
    w = InspectionWriter(conn)
    with pytest.raises(sqlite3.OperationalError) as exc:
        for i in range(1000):
            w.record([row(i)], [OutboxMessage("reject", "t", {"pad": "x" * 3000}, None, row_index=0)])
    assert "database or disk is full" in str(exc.value) and is_disk_full(exc.value)
    assert "rollback" not in str(exc.value).lower()
    assert not conn.in_transaction
    w.record([], [])  # the connection is usable afterwards


def test_check_config_refuses_a_database_path_that_is_a_directory(tmp_path: Path, tiny_bundle: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "state" / "edged.db").mkdir(parents=True)
    cfg = tmp_path / "edged.yaml"
    for database in ("edged.db", "."):
        cfg.write_text(f"model: {{bundle: {tiny_bundle}}}\ncameras: [{{name: c, source: '0'}}]\n"
                       f"storage: {{state_dir: {tmp_path / 'state'}, database: '{database}'}}\n")
        for command in ("check-config", "run"):
            proc = subprocess.run([sys.executable, "-m", "edged", command, "-c", str(cfg)], capture_output=True,
                                  text=True, timeout=60)
            assert proc.returncode == 2, (command, database, proc.stderr)
            assert "storage.database" in proc.stderr and "is a directory" in proc.stderr
            assert "Traceback" not in proc.stderr
    assert (tmp_path / "state" / "edged.db").is_dir() and not list((tmp_path / "state").glob("*.corrupt-*"))


def test_outbox_sends_rejects_before_results_and_bounds_results(tmp_path: Path) -> None:
    """A trigger flood of results must not delay a reject behind them until it expires (issue 12)."""
    conn = open_database(tmp_path / "e.db")
    w = InspectionWriter(conn)
    w.record([], [OutboxMessage("result", "r", {"i": i}, None) for i in range(300)])
    w.record([], [OutboxMessage("reject", "j", {"i": i}, time.time() + 2) for i in range(3)])
    w.record([], [OutboxMessage("audit", "a", {"i": 0}, None)])
    ob = Outbox(connect(tmp_path / "e.db"))
    first = ob.next_to_send(5, skip=set())
    assert [i.kind for i in first] == ["reject"] * 3 + ["result"] * 2  # the rejects came last, go first
    assert [i.id for i in first[3:]] == sorted(i.id for i in first[3:])  # the rest oldest first
    in_flight = {first[0].id, first[3].id}
    again = ob.next_to_send(3, skip=in_flight)
    assert [i.kind for i in again] == ["reject", "reject", "result"] and not in_flight & {i.id for i in again}
    # results have their own bound; rejects and audit rows are untouched by it
    assert ob.enforce_cap(max_rows=10_000, max_results=100) == 200
    counts = dict(conn.execute("SELECT kind || ':' || state, COUNT(*) FROM outbox GROUP BY 1").fetchall())
    assert counts == {"result:dropped": 200, "result:pending": 100, "reject:pending": 3, "audit:pending": 1}
    kept = [r[0] for r in conn.execute("SELECT json_extract(payload, '$.i') FROM outbox WHERE kind = 'result' "
                                       "AND state = 'pending' ORDER BY id")]
    assert kept == list(range(200, 300))  # the oldest results went
    # over the total cap: audit, then results, before any reject
    assert ob.enforce_cap(max_rows=102) == 2
    assert ob.count("pending") == 102 and conn.execute(
        "SELECT COUNT(*) FROM outbox WHERE kind = 'reject' AND state = 'pending'").fetchone()[0] == 3


def test_an_older_database_gets_the_newer_columns_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite3.connect(path)  # the inspections table as the first release made it (no input_ok)
    old.execute("CREATE TABLE inspections (id INTEGER PRIMARY KEY AUTOINCREMENT, uid TEXT NOT NULL, seq INTEGER NOT "
                "NULL, camera TEXT NOT NULL, part_id TEXT, captured_at REAL NOT NULL, decided_at REAL NOT NULL, score "
                "REAL, threshold REAL, is_defective INTEGER NOT NULL, confidence REAL, latency_ms REAL, model TEXT, "
                "regions TEXT NOT NULL DEFAULT '[]', image_path TEXT, reason TEXT NOT NULL DEFAULT 'ok')")
    old.execute("INSERT INTO inspections (uid, seq, camera, captured_at, decided_at, is_defective) "
                "VALUES ('old', 0, 'cam1', 1.0, 1.1, 0)")
    old.commit()
    old.close()
    conn = open_database(path)
    stamped = replace(row(3), input_ok=True, camera_stamp=CameraStamp(frame_id=65534, timestamp_ns=2**62))
    InspectionWriter(conn).record([row(1), replace(row(2), input_ok=False), stamped], [])
    got = conn.execute("SELECT uid, input_ok, camera_frame_id, camera_timestamp_ns FROM inspections ORDER BY id")
    assert got.fetchall() == [("old", None, None, None), ("u1", None, None, None), ("u2", 0, None, None),
                              ("u3", 1, 65534, 2**62)]
    conn.close()
    assert open_database(path).execute("SELECT COUNT(*) FROM inspections").fetchone()[0] == 4  # migrated once


def test_a_camera_number_beyond_sqlites_integers_is_null_not_a_lost_transaction(tmp_path: Path) -> None:
    """A 64-bit USB3 Vision block id past 2^63 does not fit SQLite's signed integer: the row keeps NULL there
    and the transaction (with its reject) still commits."""
    conn = open_database(tmp_path / "e.db")
    InspectionWriter(conn).record([replace(row(1), camera_stamp=CameraStamp(frame_id=2**64 - 1, timestamp_ns=5))], [])
    assert conn.execute("SELECT camera_frame_id, camera_timestamp_ns FROM inspections").fetchall() == [(None, 5)]
