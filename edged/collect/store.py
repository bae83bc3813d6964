"""The PostgreSQL side of the collector: one transaction per batch, idempotent by message id.

`write` commits a batch and returns only then; the collector acknowledges the batch's messages to the
broker after that, so a collector killed mid-batch has its messages redelivered, and the primary keys
make a redelivered message a no-op. A row the database refuses (a value it cannot hold: DataError,
IntegrityError) is found by retrying the batch one row at a time and counted as refused; any other error
(a lost connection, a full disk, a missing table or right) raises `StoreDown`, nothing is acknowledged,
and the batch is retried on a new connection.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from edged.collect.config import PostgresSection
from edged.collect.messages import Record
from edged.collect.schema import migrate
from edged.safetext import escape

if TYPE_CHECKING:
    import psycopg

log = logging.getLogger("edged.collect")

_INSERT: dict[str, bytes] = {
    "result": b"""INSERT INTO results (id, line, station, camera, seq, part_id, reason, is_defective, decided_at,
                  score, model, payload) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, to_timestamp(%s), %s, %s, %s)
                  ON CONFLICT DO NOTHING""",
    "reject": b"""INSERT INTO rejects (id, line, station, camera, part_id, reason, decided_at, expires_at, score,
                  payload) VALUES (%s, %s, %s, %s, %s, %s, to_timestamp(%s), to_timestamp(%s), %s, %s)
                  ON CONFLICT DO NOTHING""",
    "audit": b"""INSERT INTO audits (id, line, station, camera, part_id, reason, decided_at, expires_at, score,
                 payload) VALUES (%s, %s, %s, %s, %s, %s, to_timestamp(%s), to_timestamp(%s), %s, %s)
                 ON CONFLICT DO NOTHING""",
    "stats": b"""INSERT INTO stats (line, station, at, payload) VALUES (%s, %s, to_timestamp(%s), %s)
                 ON CONFLICT DO NOTHING""",
}


def _params(r: Record) -> tuple[Any, ...]:
    if r.kind == "result":
        return (r.key, r.line, r.station, r.camera, r.seq, r.part_id, r.reason, r.is_defective, r.at, r.score,
                r.model, r.payload)
    if r.kind == "stats":
        return (r.line, r.station, r.at, r.payload)
    return (r.key, r.line, r.station, r.camera, r.part_id, r.reason, r.at, r.expires_at, r.score, r.payload)


class StoreDown(RuntimeError):
    """The database cannot be reached or the connection broke; the batch was not committed."""


@dataclass(frozen=True, slots=True)
class Written:
    """What one committed batch did: new rows, messages already recorded, rows the database refused."""

    new: int
    duplicates: int
    refused: int


class PgStore:
    """A connection to the central database, (re)opened by `connect` and migrated there."""

    def __init__(self, config: PostgresSection) -> None:
        self.config = config
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None

    def connect(self) -> None:
        """Open the connection and bring the schema up to date; StoreDown when that fails."""
        import psycopg
        from psycopg import sql

        self.close()
        extra: dict[str, Any] = {"connect_timeout": self.config.connect_timeout_s, "application_name": "edged-collect"}
        password = self.config.read_password()
        if password is not None:
            extra["password"] = password
        try:
            conn = psycopg.connect(self.config.dsn, **extra)
            migrate(conn, self.config.schema_name)
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.config.schema_name)))
            conn.execute("SET statement_timeout = '60s'")  # a hung database is a failed batch, retried
            conn.commit()
        except psycopg.Error as exc:  # the message names host and database, never the password
            raise StoreDown(f"cannot open the database: {str(exc).strip().splitlines()[0]}") from None
        self._conn = conn

    def write(self, records: Sequence[Record]) -> Written:
        """Insert `records` in one transaction and commit; a refused row is skipped (counted)."""
        import psycopg

        if self._conn is None:
            raise StoreDown("not connected")
        conn = self._conn
        try:
            try:
                new = self._insert(conn, records)
                conn.commit()
                return Written(new=new, duplicates=len(records) - new, refused=0)
            except (psycopg.DataError, psycopg.IntegrityError):  # a value of some row: find it
                conn.rollback()
            return self._one_by_one(conn, records)
        except psycopg.Error as exc:  # the connection is gone, the disk is full, a table or a right is missing:
            self.close()  # nothing is acknowledged; the batch is retried on a new connection
            raise StoreDown(f"database write failed: {str(exc).strip().splitlines()[0]}") from None

    @staticmethod
    def _insert(conn: psycopg.Connection[tuple[Any, ...]], records: Sequence[Record]) -> int:
        new = 0
        with conn.cursor() as cur:
            for kind, sql_text in _INSERT.items():
                rows = [_params(r) for r in records if r.kind == kind]
                if rows:
                    cur.executemany(sql_text, rows)
                    new += max(cur.rowcount, 0)
        return new

    def _one_by_one(self, conn: psycopg.Connection[tuple[Any, ...]], records: Sequence[Record]) -> Written:
        """The batch again, one transaction per row: only the rows the database refuses are lost."""
        import psycopg

        new = refused = 0
        for r in records:
            try:
                new += self._insert(conn, [r])
                conn.commit()
            except (psycopg.DataError, psycopg.IntegrityError) as exc:
                conn.rollback()
                refused += 1
                log.warning("the database refused a %s of %s: %s", r.kind, escape(r.station), escape(str(exc)))
        return Written(new=new, duplicates=len(records) - new - refused, refused=refused)

    def report(self, client_id: str, started_at: float, counts: dict[str, int]) -> None:
        """Upsert this collector's row of `collectors` (its counts since `started_at`); StoreDown on failure."""
        import psycopg

        if self._conn is None:
            raise StoreDown("not connected")
        try:
            self._conn.execute(
                b"""INSERT INTO collectors (client_id, started_at, seen_at, received, recorded, duplicates, bad,
                    refused, store_errors) VALUES (%s, to_timestamp(%s), now(), %s, %s, %s, %s, %s, %s)
                    ON CONFLICT (client_id) DO UPDATE SET started_at = EXCLUDED.started_at, seen_at = now(),
                    received = EXCLUDED.received, recorded = EXCLUDED.recorded, duplicates = EXCLUDED.duplicates,
                    bad = EXCLUDED.bad, refused = EXCLUDED.refused, store_errors = EXCLUDED.store_errors""",
                (client_id, started_at, counts["received"], counts["recorded"], counts["duplicates"], counts["bad"],
                 counts["refused"], counts["store_errors"]))
            self._conn.commit()
        except psycopg.Error as exc:
            self.close()
            raise StoreDown(f"database write failed: {str(exc).strip().splitlines()[0]}") from None

    def close(self) -> None:
        """Close the connection (safe when there is none)."""
        if self._conn is not None:
            self._conn.close()  # never raises, even on a broken connection
            self._conn = None
