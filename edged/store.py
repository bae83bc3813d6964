"""The local SQLite database: every verdict, and the durable outbox of MQTT messages.

WAL mode with synchronous=NORMAL: a commit survives a process crash (SIGKILL) and the database is
never corrupt after power loss; at worst the last few hundred milliseconds are missing. A reject is
written to the outbox in the same transaction as its inspection row, before anything is published,
so a reject is either fully recorded and going to be sent, or did not happen.

Two connections exist: the recorder thread's (inspections + new outbox rows) and the MQTT sender's
(outbox state). SQLite serializes their short write transactions (busy_timeout).
"""

from __future__ import annotations

import logging
import sqlite3
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from edged import jsonout
from edged.frames import CameraStamp

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS inspections (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    uid          TEXT NOT NULL,              -- the message id on MQTT; unique
    seq          INTEGER NOT NULL,           -- frame number of the camera in this run
    camera       TEXT NOT NULL,
    part_id      TEXT,                       -- from a trigger, or the part event in free_run
    captured_at  REAL NOT NULL,              -- Unix seconds
    decided_at   REAL NOT NULL,
    score        REAL,
    threshold    REAL,
    is_defective INTEGER NOT NULL,
    confidence   REAL,                       -- score / threshold, capped at 2.0
    latency_ms   REAL,                       -- capture to verdict
    model        TEXT,                       -- bundle id
    regions      TEXT NOT NULL DEFAULT '[]', -- JSON list of {x, y, w, h, area, peak} in frame pixels
    image_path   TEXT,
    reason       TEXT NOT NULL DEFAULT 'ok', -- ok | defect | not_inspected
    input_ok     INTEGER,                    -- input health of the frame: 1 in range, 0 not, NULL unchecked
    recipe       TEXT,                       -- the recipe that judged it (edged.recipes); NULL: not inspected
    camera_frame_id     INTEGER,             -- the camera's own frame number (GenICam block id); NULL: none given
    camera_timestamp_ns INTEGER              -- the camera's clock at exposure (its own epoch); NULL: none given
);
CREATE INDEX IF NOT EXISTS inspections_time ON inspections(captured_at);
CREATE INDEX IF NOT EXISTS inspections_camera_time ON inspections(camera, captured_at);
CREATE TABLE IF NOT EXISTS outbox (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    inspection_id INTEGER,
    kind          TEXT NOT NULL,             -- reject | audit
    topic         TEXT NOT NULL,
    payload       TEXT NOT NULL,             -- JSON, exactly what is published
    created_at    REAL NOT NULL,
    expires_at    REAL,                      -- Unix seconds; never published to /reject after this
    state         TEXT NOT NULL DEFAULT 'pending', -- pending | delivered | expired | dropped
    attempts      INTEGER NOT NULL DEFAULT 0,
    delivered_at  REAL
);
CREATE INDEX IF NOT EXISTS outbox_state ON outbox(state, id);
CREATE INDEX IF NOT EXISTS outbox_kind ON outbox(state, kind, id);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class StoreError(Exception):
    """The database cannot be used at all (permissions, path); the message says why."""


class NotADatabase(StoreError):
    """The database path holds something that is not a SQLite file (a folder, another file): a config
    error (exit 2). Such a file is never moved aside or overwritten: it may be someone's data."""


SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file
# primary result codes (sqlite3 exposes them as constants only from Python 3.11)
_SQLITE_BUSY, _SQLITE_LOCKED, _SQLITE_CORRUPT, _SQLITE_FULL, _SQLITE_NOTADB = 5, 6, 11, 13, 26


def _code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else int(code) & 0xFF


def is_disk_full(exc: sqlite3.Error) -> bool:
    """SQLITE_FULL: the disk (or the database's size limit) is full."""
    return _code(exc) == _SQLITE_FULL or "database or disk is full" in str(exc)


def _is_corrupt(exc: sqlite3.Error) -> bool:
    code = _code(exc)
    if code is not None:
        return code in (_SQLITE_CORRUPT, _SQLITE_NOTADB)
    return "malformed" in str(exc) or "not a database" in str(exc)


def check_database_path(path: Path) -> str:
    """Why `path` cannot be the database ('' when it can: absent, empty, or a file with SQLite's header).

    Shared by `edged check-config` and the start: a folder, the state directory itself or any other
    file named as `storage.database` is refused, never mistaken for a corrupt database and moved aside.
    """
    if path.is_dir():
        return f"storage.database: {path} is a directory, not a SQLite database file"
    if not path.exists():
        return "" if not path.is_symlink() else f"storage.database: {path} is a dangling symlink"
    if not path.is_file():
        return f"storage.database: {path} is not a regular file"
    try:
        with path.open("rb") as fh:
            head = fh.read(len(SQLITE_HEADER))
    except OSError as exc:
        return f"storage.database: cannot read {path}: {exc.strerror or exc}"
    if head and head != SQLITE_HEADER:
        return (f"storage.database: {path} is not a SQLite database (it does not start with SQLite's header); "
                "it is left as it is: name another file")
    return ""


def connect(path: Path, readonly: bool = False) -> sqlite3.Connection:
    """A connection usable from any one thread at a time: autocommit (transactions are explicit), WAL and
    synchronous=NORMAL for writers, a 10 s busy timeout; `readonly` cannot write."""
    if readonly:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0, check_same_thread=False)
    else:
        conn = sqlite3.connect(str(path), timeout=10.0, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


def open_database(path: Path, timeout_s: float = 10.0) -> sqlite3.Connection:
    """Open (creating if needed) after `PRAGMA quick_check`; a corrupt file is moved aside, loudly.

    Corrupt means SQLite says so (quick_check findings, SQLITE_CORRUPT or SQLITE_NOTADB) about a file
    that has SQLite's header. Anything else (locked by another process, unreadable, not a SQLite file) is
    a StoreError that leaves the file as it is: moving it aside would lose its pending rejects.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(f"cannot create the folder of the database {path}: {exc}") from None
    not_sqlite = check_database_path(path)
    if not_sqlite:
        raise NotADatabase(not_sqlite)
    if path.exists() and path.stat().st_size > 0:
        problem = _check(path, timeout_s)
        if problem:
            aside = path.with_name(f"{path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
            log.error("DATABASE %s IS CORRUPT (%s): moved aside to %s, starting a fresh one", path, problem,
                      aside)
            path.rename(aside)
            for suffix in ("-wal", "-shm"):
                side = path.with_name(path.name + suffix)
                if side.exists():
                    side.rename(aside.with_name(aside.name + suffix))
    try:
        conn = connect(path)
        conn.executescript(SCHEMA)
        _add_columns(conn)
    except sqlite3.Error as exc:
        raise StoreError(f"cannot open the database {path}: {exc}") from None
    return conn


# columns added after the first release: (table, column, declaration); old databases get them at open, their old
# rows read NULL (an older edged writing to a migrated file ignores them)
ADDED_COLUMNS = (("inspections", "input_ok", "INTEGER"), ("inspections", "recipe", "TEXT"),
                 ("inspections", "camera_frame_id", "INTEGER"), ("inspections", "camera_timestamp_ns", "INTEGER"))


def _add_columns(conn: sqlite3.Connection) -> None:
    """Migrate a database made by an older edged: ALTER TABLE ADD COLUMN for each column it lacks."""
    for table, column, decl in ADDED_COLUMNS:
        have = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
        if column not in have:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {decl}")
            log.info("database: added column %s.%s", table, column)


def _check(path: Path, timeout_s: float = 10.0) -> str:
    """quick_check's findings ('' when ok); raises StoreError when SQLite cannot tell (e.g. locked)."""
    try:
        # mode=rw: checking must never create a file
        conn = sqlite3.connect(f"file:{urllib.parse.quote(str(path))}?mode=rw", uri=True, timeout=timeout_s)
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
        finally:
            conn.close()
    except sqlite3.Error as exc:
        if _is_corrupt(exc):
            return str(exc)
        if _code(exc) in (_SQLITE_BUSY, _SQLITE_LOCKED) or "locked" in str(exc):
            raise StoreError(f"the database {path} is locked by another process ({exc}) for over {timeout_s:g} s; "
                             "it is left as it is (a backup or a sqlite3 shell? the service retries)") from None
        raise StoreError(f"cannot check the database {path}: {exc}; it is left as it is") from None
    if rows and rows[0][0] == "ok":
        return ""
    # SQLite may put hundreds of findings in one row, one per line: the log line shows the first three
    lines = [line for r in rows for line in str(r[0]).splitlines() if line and not line.startswith("***")]
    return "; ".join(lines[:3]) + (f"; ... {len(lines) - 3} more" if len(lines) > 3 else "")


@dataclass(frozen=True, slots=True)
class InspectionRow:
    """One inspections row as the recorder writes it (columns: SCHEMA)."""

    uid: str
    seq: int
    camera: str
    part_id: str | None
    captured_at: float
    decided_at: float
    score: float | None
    threshold: float | None
    is_defective: bool
    confidence: float | None
    latency_ms: float | None
    model: str
    regions: list[dict[str, float | int]]
    image_path: str | None
    reason: str
    input_ok: bool | None = None  # the frame's input health; None: not checked (input_health off, not_inspected)
    recipe: str | None = None  # the recipe that judged it; None: no verdict (not_inspected by deadline)
    camera_stamp: CameraStamp | None = None  # the camera's own frame number and clock (GenICam), else None


def _camera_columns(stamp: CameraStamp | None) -> tuple[int | None, int | None]:
    """The camera's frame number and clock as SQLite integers (signed 64 bits: a USB3 Vision block id or a clock
    beyond that range, which no real camera reaches, is left NULL rather than failing the transaction)."""
    if stamp is None:
        return None, None

    def fits(v: int) -> int | None:
        return v if 0 <= v < 2**63 else None

    return fits(stamp.frame_id), fits(stamp.timestamp_ns) if stamp.timestamp_ns else None


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """A message to publish; `row_index` ties it to an InspectionRow of the same transaction."""

    kind: str
    topic: str
    payload: dict[str, object]
    expires_at: float | None
    row_index: int | None = None  # an InspectionRow of the same transaction
    inspection_id: int | None = None  # or an inspection committed earlier


@dataclass(frozen=True, slots=True)
class OutboxItem:
    """One pending outbox message, as the link publishes it."""

    id: int
    kind: str
    topic: str
    payload: str
    expires_at: float | None
    attempts: int


@dataclass(frozen=True, slots=True)
class Recorded:
    """What one `InspectionWriter.record` committed: the inspections' row ids (in the rows' order) and the outbox
    messages as the link publishes them (the recorder hands the rejects to the link at once: `MqttLink.offer`)."""

    ids: list[int]
    outbox: list[OutboxItem]


class InspectionWriter:
    """The recorder thread's side of the database: inspections and new outbox rows."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def record(self, rows: list[InspectionRow], messages: list[OutboxMessage]) -> Recorded:
        """Insert rows and their messages in ONE transaction; returns their ids and the messages as stored."""
        now = time.time()
        ids: list[int] = []
        outbox: list[OutboxItem] = []
        cur = self.conn.cursor()
        cur.execute("BEGIN IMMEDIATE")
        try:
            for r in rows:
                cur.execute(
                    "INSERT INTO inspections (uid, seq, camera, part_id, captured_at, decided_at, score, "
                    "threshold, is_defective, confidence, latency_ms, model, regions, image_path, reason, "
                    "input_ok, recipe, camera_frame_id, camera_timestamp_ns) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (r.uid, r.seq, r.camera, r.part_id, r.captured_at, r.decided_at, r.score, r.threshold,
                     int(r.is_defective), r.confidence, r.latency_ms, r.model,
                     jsonout.dumps(r.regions), r.image_path, r.reason,
                     None if r.input_ok is None else int(r.input_ok), r.recipe, *_camera_columns(r.camera_stamp)))
                ids.append(int(cur.lastrowid or 0))
            for m in messages:
                inspection_id = ids[m.row_index] if m.row_index is not None else m.inspection_id
                payload = m.payload
                if "inspection_id" in payload and inspection_id is not None:  # the handshake's id: this row's
                    payload = {**payload, "inspection_id": inspection_id}
                text = jsonout.dumps(payload)
                cur.execute(
                    "INSERT INTO outbox (inspection_id, kind, topic, payload, created_at, expires_at) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (inspection_id, m.kind, m.topic, text, now, m.expires_at))
                outbox.append(OutboxItem(int(cur.lastrowid or 0), m.kind, m.topic, text, m.expires_at, 0))
            cur.execute("COMMIT")
        except BaseException:
            # SQLite may have rolled back already (SQLITE_FULL, IOERR, BUSY): a ROLLBACK then fails with
            # "no transaction is active", which used to replace the real error in the log
            if self.conn.in_transaction:
                try:
                    cur.execute("ROLLBACK")
                except sqlite3.Error as rollback:
                    log.warning("ROLLBACK after a failed write failed too: %s", rollback)
            raise
        return Recorded(ids, outbox)

    def forget_images(self, ids: list[int]) -> None:
        """Rows whose planned image could not be written: no path to a file that does not exist."""
        self.conn.executemany("UPDATE inspections SET image_path = NULL WHERE id = ?", [(i,) for i in ids])

    def retention(self, max_age_days: float, max_rows: int) -> int:
        """Delete old inspections (by age, then by count) and settled outbox rows; returns rows deleted."""
        cutoff = time.time() - max_age_days * 86400.0
        deleted = self.conn.execute("DELETE FROM inspections WHERE captured_at < ?", (cutoff,)).rowcount
        row = self.conn.execute("SELECT MAX(id) FROM inspections").fetchone()
        if row and row[0] is not None:
            deleted += self.conn.execute("DELETE FROM inspections WHERE id <= ?",
                                         (int(row[0]) - max_rows,)).rowcount
        self.conn.execute("DELETE FROM outbox WHERE state != 'pending' AND created_at < ?", (cutoff,))
        return int(deleted)


class Outbox:
    """The MQTT sender's side: pending messages in order, and their fate."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def pending(self, limit: int, after_id: int = 0) -> list[OutboxItem]:
        """Pending messages in id order after `after_id`, at most `limit` (tests and checks)."""
        rows = self.conn.execute(
            "SELECT id, kind, topic, payload, expires_at, attempts FROM outbox "
            "WHERE state = 'pending' AND id > ? ORDER BY id LIMIT ?", (after_id, limit)).fetchall()
        return [OutboxItem(*row) for row in rows]

    def next_to_send(self, limit: int, skip: set[int]) -> list[OutboxItem]:
        """Up to `limit` pending messages to publish, rejects first, each kind oldest first; rows in `skip`
        (in flight) left out. A flood of results (triggers) must never hold a reject back until it expires."""
        out: list[OutboxItem] = []
        for clause in ("kind = 'reject'", "kind != 'reject'"):
            if len(out) >= limit:
                break
            rows = self.conn.execute(
                "SELECT id, kind, topic, payload, expires_at, attempts FROM outbox "
                f"WHERE state = 'pending' AND {clause} ORDER BY id LIMIT ?", (limit - len(out) + len(skip),))
            out.extend(item for item in (OutboxItem(*row) for row in rows) if item.id not in skip)
        return out[:limit]

    def mark(self, ids: list[int], state: str) -> None:
        """Move pending messages to `state` (delivered, expired, dropped) in one transaction; rows no longer pending
        stay as they are."""
        if not ids:
            return
        now = time.time()
        with self.conn:  # one transaction for the whole batch
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany(
                "UPDATE outbox SET state = ?, delivered_at = ? WHERE id = ? AND state = 'pending'",
                [(state, now, i) for i in ids])

    def expire(self, ids: list[int], audit: list[tuple[str, str]]) -> None:
        """Mark rejects expired and queue their (topic, payload) audit messages in ONE transaction, so an
        expired reject is never left without its audit message."""
        now = time.time()
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany(
                "UPDATE outbox SET state = 'expired', delivered_at = ? WHERE id = ? AND state = 'pending'",
                [(now, i) for i in ids])
            self.conn.executemany(
                "INSERT INTO outbox (kind, topic, payload, created_at, expires_at) VALUES ('audit', ?, ?, ?, NULL)",
                [(topic, payload, now) for topic, payload in audit])

    def attempted(self, ids: list[int]) -> None:
        """One more publish attempt for each message."""
        with self.conn:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.executemany("UPDATE outbox SET attempts = attempts + 1 WHERE id = ?", [(i,) for i in ids])

    def add(self, kind: str, topic: str, payload: str, expires_at: float | None) -> None:
        """A pending message, committed at once (tests; the recorder adds its messages in its own transaction)."""
        self.conn.execute("INSERT INTO outbox (kind, topic, payload, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
                          (kind, topic, payload, time.time(), expires_at))

    def backlog(self) -> int:
        """Messages still pending (health file, the outbox cap)."""
        return int(self.conn.execute("SELECT COUNT(*) FROM outbox WHERE state = 'pending'").fetchone()[0])

    def count(self, state: str) -> int:
        """Messages in `state` (tests and checks)."""
        return int(self.conn.execute("SELECT COUNT(*) FROM outbox WHERE state = ?", (state,)).fetchone()[0])

    def enforce_cap(self, max_rows: int, max_results: int | None = None) -> int:
        """Keep at most max_results results and max_rows messages pending; beyond, the oldest are dropped:
        results over their own bound first, then audit-only rows, results, and last the oldest rejects.
        Logged; returns how many were dropped."""
        dropped = 0
        if max_results is not None:
            results = self._pending_count("kind = 'result'")
            if results > max_results:
                n = self._drop_oldest("kind = 'result'", results - max_results)
                dropped += n
                log.error("outbox: %d results pending > their cap %d: dropped the %d oldest (rejects are kept)",
                          results, max_results, n)
        excess = self.backlog() - max_rows
        if excess <= 0:
            return dropped
        total = 0
        for kind_clause in ("kind = 'audit'", "kind = 'result'", "1 = 1"):
            if total >= excess:
                break
            total += self._drop_oldest(kind_clause, excess - total)
        log.error("outbox full (%d pending > cap %d): dropped the %d oldest messages (audit, then results first)",
                  max_rows + excess, max_rows, total)
        return dropped + total

    def _pending_count(self, kind_clause: str) -> int:
        return int(self.conn.execute(
            f"SELECT COUNT(*) FROM outbox WHERE state = 'pending' AND {kind_clause}").fetchone()[0])

    def _drop_oldest(self, kind_clause: str, n: int) -> int:
        ids = [r[0] for r in self.conn.execute(
            f"SELECT id FROM outbox WHERE state = 'pending' AND {kind_clause} ORDER BY id LIMIT ?", (n,)).fetchall()]
        self.mark(ids, "dropped")
        return len(ids)
