"""The collector's tables and views in PostgreSQL, created or migrated when a collector starts.

One table per message kind with a `line` and `station` column and indexes on (line, station, time),
rather than a partition per station: a plant adds stations without DDL, and the primary key on the
daemon's message id is what makes a redelivered message a no-op (INSERT ... ON CONFLICT DO NOTHING).
Migrations are numbered and applied in order under an advisory lock, so two collectors starting
together do not race; the views are replaced on every start (they hold no data).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

LOCK_ID = 0x6564676564  # "edged": pg_advisory_xact_lock key of the migrations

MIGRATIONS: tuple[str, ...] = (
    # 1: the four tables
    """
    CREATE TABLE results (
        id text PRIMARY KEY, line text NOT NULL, station text NOT NULL, camera text NOT NULL, seq bigint,
        part_id text, reason text NOT NULL, is_defective boolean, decided_at timestamptz NOT NULL,
        score double precision, model text, payload jsonb NOT NULL, received_at timestamptz NOT NULL DEFAULT now());
    CREATE INDEX results_line_time ON results (line, decided_at);
    CREATE INDEX results_station_time ON results (station, decided_at);
    CREATE TABLE rejects (
        id text PRIMARY KEY, line text NOT NULL, station text NOT NULL, camera text NOT NULL, part_id text,
        reason text NOT NULL, decided_at timestamptz NOT NULL, expires_at timestamptz NOT NULL,
        score double precision, payload jsonb NOT NULL, received_at timestamptz NOT NULL DEFAULT now());
    CREATE INDEX rejects_line_time ON rejects (line, decided_at);
    CREATE INDEX rejects_station_time ON rejects (station, decided_at);
    CREATE TABLE audits (
        id text PRIMARY KEY, line text NOT NULL, station text NOT NULL, camera text NOT NULL, part_id text,
        reason text NOT NULL, decided_at timestamptz NOT NULL, expires_at timestamptz NOT NULL,
        score double precision, payload jsonb NOT NULL, received_at timestamptz NOT NULL DEFAULT now());
    CREATE INDEX audits_line_time ON audits (line, decided_at);
    CREATE TABLE stats (
        line text NOT NULL, station text NOT NULL, at timestamptz NOT NULL, payload jsonb NOT NULL,
        received_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (line, station, at));
    """,
    # 2: each collector's own counts, so bad messages and a silent collector are seen from SQL
    """
    CREATE TABLE collectors (
        client_id text PRIMARY KEY, started_at timestamptz NOT NULL, seen_at timestamptz NOT NULL,
        received bigint NOT NULL, recorded bigint NOT NULL, duplicates bigint NOT NULL, bad bigint NOT NULL,
        refused bigint NOT NULL, store_errors bigint NOT NULL);
    """,
)

VIEWS = """
CREATE OR REPLACE VIEW reject_rate_hourly AS
WITH r AS (SELECT line, date_trunc('hour', decided_at) AS hour, count(*) AS results,
                  count(*) FILTER (WHERE is_defective) AS defective,
                  count(*) FILTER (WHERE reason = 'not_inspected') AS not_inspected
           FROM results GROUP BY 1, 2),
     j AS (SELECT line, date_trunc('hour', decided_at) AS hour, count(*) AS rejects FROM rejects GROUP BY 1, 2)
SELECT line, hour, coalesce(r.results, 0) AS results, coalesce(r.defective, 0) AS defective,
       coalesce(r.not_inspected, 0) AS not_inspected, coalesce(j.rejects, 0) AS rejects,
       CASE WHEN r.results > 0 THEN coalesce(j.rejects, 0)::double precision / r.results END AS reject_rate
FROM r FULL JOIN j USING (line, hour);

CREATE OR REPLACE VIEW station_health AS
WITH s AS (SELECT line, station, at, payload,
                  at - lag(at) OVER w AS gap, row_number() OVER (PARTITION BY line, station ORDER BY at DESC) AS n
           FROM stats WHERE at > now() - interval '1 day'
           WINDOW w AS (PARTITION BY line, station ORDER BY at))
SELECT line, station, at AS last_stats_at, gap AS stats_interval,
       (payload->>'outbox_backlog')::bigint AS outbox_backlog, (payload->>'expired')::bigint AS expired,
       payload->'cameras' AS cameras, payload->>'broker' AS broker,
       now() - at > 3 * coalesce(gap, interval '10 seconds') AS offline
FROM s WHERE n = 1;
"""


def migrate(conn: psycopg.Connection[tuple[Any, ...]], schema: str) -> int:
    """Bring `schema` to the newest version (creating it); returns the version it is at. Commits."""
    from psycopg import sql

    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_ID,))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema)))
        conn.execute("CREATE TABLE IF NOT EXISTS edged_schema (version integer NOT NULL)")
        row = conn.execute("SELECT max(version) FROM edged_schema").fetchone()
        version = int(row[0]) if row and row[0] is not None else 0
        for number, ddl in enumerate(MIGRATIONS[version:], start=version + 1):
            conn.execute(ddl.encode())  # several statements: sent as one simple query
            conn.execute("INSERT INTO edged_schema (version) VALUES (%s)", (number,))
        conn.execute(VIEWS.encode())
    return len(MIGRATIONS)
