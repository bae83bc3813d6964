"""`edged run` killed with SIGKILL at random moments while rejects flow (issue 5, "Must show" 2).

After every kill: `PRAGMA integrity_check` is ok, every inspection row seen committed before the kill is
still there, and once the daemon is started again the outbox rows left pending by the kill go out
(the reject TTL is long here, so they are delivered, not expired).
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devkit.support import Broker, DurableSubscriber, report_figures, wait_until, write_config, write_spot_video

pytestmark = pytest.mark.slow

KILLS = 6
TOPIC = "edged/test"


def snapshot(db_path: Path) -> tuple[set[str], dict[str, str]]:
    """Committed inspection uids and {reject id: outbox state}, read in one transaction."""
    if not db_path.exists():
        return set(), {}
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
    try:
        db.execute("BEGIN")
        uids = {u for u, in db.execute("SELECT uid FROM inspections")}
        box = {json.loads(p)["id"]: s for p, s in db.execute("SELECT payload, state FROM outbox WHERE kind = 'reject'")}
        db.execute("COMMIT")
        return uids, box
    except sqlite3.OperationalError:  # the schema is not created yet (killed during start-up)
        return set(), {}
    finally:
        db.close()


def integrity(db_path: Path) -> str:
    db = sqlite3.connect(str(db_path), timeout=10)  # a writable connection: it also recovers the WAL
    try:
        return "; ".join(r[0] for r in db.execute("PRAGMA integrity_check"))
    finally:
        db.close()


def resumed(db_path: Path, sub: DurableSubscriber, ids: set[str]) -> bool:
    """Every one of `ids` is marked delivered in the outbox and arrived at the subscriber."""
    box = snapshot(db_path)[1]
    return all(box.get(u) == "delivered" for u in ids) and ids <= set(sub.ids(f"{TOPIC}/reject"))


def start(cfg: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    fh = log.open("ab")
    return subprocess.Popen([sys.executable, "-m", "edged", "run", "-c", str(cfg)], stdout=fh, stderr=fh, env=env)


def test_sigkill_in_a_loop_loses_no_committed_row_and_the_outbox_resumes(tmp_path: Path, tiny_bundle: Path,
                                                                         broker: Broker) -> None:
    rng = random.Random(20261127)
    video = tmp_path / "line.avi"
    # a burst of 10 isolated defective frames, then 3 s of good parts (a 4 s loop at 20 fps): with the
    # outbox sending at most 3 rejects/s, a backlog builds in each burst, so kills catch pending rows
    write_spot_video(video, 80, set(range(1, 20, 2)))
    state = tmp_path / "state"
    db_path = state / "edged.db"
    cfg = write_config(tmp_path / "edged.yaml", tiny_bundle, video, state, broker.port,
                       extra_camera="    loop: true\n    realtime: true\n    fps: 20",
                       mqtt_extra="reject_ttl_ms: 600000, outbox: {rate_per_s: 3}")
    log = tmp_path / "edged.log"
    sub = DurableSubscriber(broker.port, [f"{TOPIC}/reject", f"{TOPIC}/status"])

    def status_count(word: str) -> int:
        return sum(1 for _, p, _ in sub.on(f"{TOPIC}/status") if p == word)

    kills: list[dict[str, object]] = []
    pending_at_kill: set[str] = set()
    resumed_after: list[int] = []  # pending rejects delivered after each restart
    proc: subprocess.Popen[bytes] | None = None
    try:
        for i in range(KILLS):
            onlines = status_count("online")
            proc = running = start(cfg, log)
            t_start = time.monotonic()
            before, box = snapshot(db_path)
            if i == 1:
                time.sleep(rng.uniform(0.05, 0.6))  # one kill during start-up (imports, model, database)
            else:
                # the rejects left pending by the previous kill(s) go out after this restart
                waiting = set(pending_at_kill)
                wait_until(lambda: resumed(db_path, sub, waiting), 60,  # noqa: B023
                           f"the {len(waiting)} rejects left pending before restart {i} to be delivered")
                resumed_after.append(len(waiting))
                want = len(before) + rng.randint(5, 40)
                wait_until(lambda: len(snapshot(db_path)[0]) >= want or running.poll() is not None, 60,  # noqa: B023
                           "inspections to flow")
                assert proc.poll() is None, log.read_text()[-3000:]
                time.sleep(rng.uniform(0.0, 0.5))
                wait_until(lambda: "pending" in snapshot(db_path)[1].values(), 60, "a reject in the outbox")
                wait_until(lambda: status_count("online") > onlines, 30, "the daemon online on MQTT")  # noqa: B023
            seen, box = snapshot(db_path)  # committed just before the kill
            offlines = status_count("offline")
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            if i != 1:  # the broker tells the line the daemon is gone (MQTT last will)
                wait_until(lambda: status_count("offline") > offlines, 30, "the last will 'offline'")  # noqa: B023
            alive_s = time.monotonic() - t_start
            assert integrity(db_path) == "ok" if db_path.exists() else True
            after, box_after = snapshot(db_path)
            lost = seen - after
            assert not lost, f"kill {i + 1}: {len(lost)} committed inspection rows lost"
            assert all(box_after.get(u) in (s, "delivered") for u, s in box.items())
            pending_at_kill = {u for u, s in box_after.items() if s == "pending"}
            kills.append({"alive_s": round(alive_s, 2), "rows": len(after), "pending_rejects": len(pending_at_kill)})
        # a last start, then a clean stop: everything is delivered
        proc = start(cfg, log)
        wait_until(lambda: resumed(db_path, sub, pending_at_kill), 60, "the last kill's pending rejects")
        resumed_after.append(len(pending_at_kill))
        n = len(snapshot(db_path)[0])
        wait_until(lambda: len(snapshot(db_path)[0]) > n + 10, 60, "inspections after the last restart")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        proc = None
        uids, box = snapshot(db_path)
        wait_until(lambda: {u for u, s in box.items() if s == "delivered"} <= set(sub.ids(f"{TOPIC}/reject")), 20,
                   "the subscriber to have every delivered reject")
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        sub.close()
    text = log.read_text()
    assert "CORRUPT" not in text and "Traceback" not in text, text[-3000:]
    assert integrity(db_path) == "ok"
    states = [s for s in box.values()]
    received = sub.ids(f"{TOPIC}/reject")
    assert set(received) <= set(box), "no reject the database does not know"
    assert sum(resumed_after) > 0, "kills left pending rejects, and they were delivered after the restart"
    report_figures("sigkill_loop", {
        "kills_survived": len(kills), "kills": kills,
        "pending_rejects_resumed_per_restart": resumed_after, "inspection_rows": len(uids), "rejects": len(box),
        "delivered": states.count("delivered"), "expired": states.count("expired"),
        "pending_at_clean_stop (kept for the next start)": states.count("pending"),
        "received_raw": len(received), "received_unique": len(set(received)),
        "raw_duplicates": len(received) - len(set(received))})


def test_corrupt_database_is_moved_aside_at_start_and_the_daemon_runs(tmp_path: Path, tiny_bundle: Path) -> None:
    """A database damaged in the middle (as by a failing SD card): one loud log line, a fresh file, inspecting."""
    video = tmp_path / "line.avi"
    write_spot_video(video, 300, {10, 200})
    state = tmp_path / "state"
    db_path = state / "edged.db"
    cfg = write_config(tmp_path / "edged.yaml", tiny_bundle, video, state)
    run = [sys.executable, "-m", "edged", "run", "-c", str(cfg)]
    assert subprocess.run(run, capture_output=True, timeout=120).returncode == 0
    db = sqlite3.connect(db_path)
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    pages = db.execute("PRAGMA page_count").fetchone()[0]
    page_size = db.execute("PRAGMA page_size").fetchone()[0]
    db.close()
    assert pages > 6
    data = bytearray(db_path.read_bytes())
    for page in range(2, pages - 1, 2):  # damage every other b-tree page past the schema page
        data[page * page_size + 16: page * page_size + 400] = b"\xab" * 384
    db_path.write_bytes(bytes(data))
    proc = subprocess.run(run, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loud = [line for line in proc.stderr.splitlines() if "IS CORRUPT" in line]
    assert len(loud) == 1 and len(loud[0]) < 1000, loud  # one line, readable, even with hundreds of findings
    stray = [line for line in proc.stderr.splitlines() if not re.match(r"\d{4}-\d\d-\d\d ", line)]
    assert not stray, stray[:5]  # every line is a log record: no multi-line dump of SQLite's findings
    assert list(state.glob("edged.db.corrupt-*")), "the damaged file is kept for inspection"
    assert integrity(db_path) == "ok"
    db = sqlite3.connect(db_path)
    assert db.execute("SELECT COUNT(*) FROM inspections").fetchone()[0] == 300, "a fresh database, this run's rows"
    db.close()
