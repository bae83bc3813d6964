"""The web view's reads of the database, through its own read-only connection (never the recorder's).

Every filter is a bound parameter; page sizes are capped; a reject's MQTT fate comes from its outbox row
(delivered when, or expired to /audit).
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edged.store import connect

MAX_PAGE = 200
NEIGHBOURS = 10  # frames either side on the part page

# part_id: the row's (a trigger's, or the free-run part's), else its reject's (rows of an edged before 2026-12-03)
_COLUMNS = ("i.id, i.uid, i.seq, i.camera, COALESCE(i.part_id, json_extract(o.payload, '$.part_id')), "
            "i.captured_at, i.decided_at, i.score, i.threshold, "
            "i.is_defective, i.confidence, i.latency_ms, i.model, i.regions, i.image_path, i.reason, "
            "o.state, o.delivered_at")
_FROM = "inspections i LEFT JOIN outbox o ON o.inspection_id = i.id AND o.kind = 'reject'"


class BadQuery(ValueError):
    """A filter the view cannot use (not a number, not a known camera); the message names it."""


@dataclass(frozen=True, slots=True)
class RejectFilter:
    """What the rejects list shows: camera, time span (Unix seconds), reason, page."""

    camera: str | None = None
    since: float | None = None
    until: float | None = None
    reason: str | None = None
    page: int = 0
    per_page: int = 50

    @classmethod
    def parse(cls, query: dict[str, str], cameras: list[str]) -> RejectFilter:
        """From a query string (already one value per key); BadQuery naming the parameter."""
        camera = query.get("camera") or None
        if camera is not None and camera not in cameras:
            raise BadQuery(f"camera: no camera named {camera[:64]!r}")
        reason = query.get("reason") or None
        if reason is not None and reason not in ("defect", "not_inspected"):
            raise BadQuery("reason: one of defect, not_inspected")
        since = _number(query, "since")
        hours = _number(query, "hours", None, 0.0, 24.0 * 3650)
        if since is None and hours:  # "the last N hours", as the page's select asks
            since = time.time() - hours * 3600.0
        return cls(camera, since, _number(query, "until"), reason,
                   int(_number(query, "page", 0, 0, 1e6) or 0), int(_number(query, "per_page", 50, 1, MAX_PAGE) or 50))


def _number(query: dict[str, str], key: str, default: float | None = None, lo: float = 0.0,
            hi: float = 1e12) -> float | None:
    text = query.get(key)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        raise BadQuery(f"{key}: not a number") from None
    if not math.isfinite(value) or not lo <= value <= hi:
        raise BadQuery(f"{key}: must be between {lo:g} and {hi:g}")
    return value


def open_readonly(path: Path) -> sqlite3.Connection:
    """A connection that cannot write (one per request: cheap, and no thread shares it)."""
    return connect(path, readonly=True)


def _row(r: tuple[Any, ...]) -> dict[str, Any]:
    keys = ("id", "uid", "seq", "camera", "part_id", "captured_at", "decided_at", "score", "threshold",
            "is_defective", "confidence", "latency_ms", "model", "regions", "image_path", "reason", "mqtt",
            "delivered_at")
    out = dict(zip(keys, r, strict=True))
    out["is_defective"] = bool(out["is_defective"])
    try:
        out["regions"] = json.loads(out["regions"] or "[]")
    except ValueError:
        out["regions"] = []
    # mqtt: the reject message's outbox state (pending, delivered, expired, dropped); None for a frame with no
    # reject of its own (a good frame, or a later frame of a part whose reject names its first frame)
    out["has_image"] = bool(out.pop("image_path"))
    return out


def rejects(conn: sqlite3.Connection, f: RejectFilter) -> tuple[list[dict[str, Any]], int]:
    """One page of rejected frames, newest first, and how many match in all."""
    where: list[str] = ["i.is_defective = 1"]
    args: list[object] = []
    tests: tuple[tuple[str, object], ...] = (("i.camera = ?", f.camera), ("i.captured_at >= ?", f.since),
                                             ("i.captured_at < ?", f.until), ("i.reason = ?", f.reason))
    for test, value in tests:  # only the filters that are set, each with its one parameter
        if value is not None:
            where.append(test)
            args.append(value)
    clause = " AND ".join(where)
    total = int(conn.execute(f"SELECT COUNT(*) FROM {_FROM} WHERE {clause}", args).fetchone()[0])
    rows = conn.execute(f"SELECT {_COLUMNS} FROM {_FROM} WHERE {clause} ORDER BY i.id DESC LIMIT ? OFFSET ?",
                        [*args, f.per_page, f.page * f.per_page]).fetchall()
    return [_row(r) for r in rows], total


def inspection(conn: sqlite3.Connection, inspection_id: int) -> dict[str, Any] | None:
    """One inspected frame (any verdict), or None."""
    r = conn.execute(f"SELECT {_COLUMNS} FROM {_FROM} WHERE i.id = ?", (inspection_id,)).fetchone()
    return None if r is None else _row(r)


def image_path(conn: sqlite3.Connection, inspection_id: int) -> tuple[str | None, list[dict[str, Any]]]:
    """A row's stored image path and regions (for serving the file; the path never leaves the process)."""
    r = conn.execute("SELECT image_path, regions FROM inspections WHERE id = ?", (inspection_id,)).fetchone()
    if r is None:
        return None, []
    try:
        regions = json.loads(r[1] or "[]")
    except ValueError:
        regions = []
    return r[0], regions if isinstance(regions, list) else []


def neighbours(conn: sqlite3.Connection, inspection_id: int, camera: str) -> list[dict[str, Any]]:
    """The same camera's frames around one: id, seq, score, threshold, verdict (for the part page's chart)."""
    rows = conn.execute(
        "SELECT id, seq, score, threshold, is_defective FROM ("
        " SELECT * FROM (SELECT id, seq, score, threshold, is_defective FROM inspections WHERE camera = ? AND id < ?"
        "  ORDER BY id DESC LIMIT ?)"
        " UNION ALL SELECT id, seq, score, threshold, is_defective FROM inspections WHERE id = ?"
        " UNION ALL SELECT * FROM (SELECT id, seq, score, threshold, is_defective FROM inspections"
        "  WHERE camera = ? AND id > ? ORDER BY id LIMIT ?)) ORDER BY id",
        (camera, inspection_id, NEIGHBOURS, inspection_id, camera, inspection_id, NEIGHBOURS)).fetchall()
    return [{"id": r[0], "seq": r[1], "score": r[2], "threshold": r[3], "is_defective": bool(r[4])} for r in rows]


def recent(conn: sqlite3.Connection, camera: str | None, limit: int = 20) -> list[dict[str, Any]]:
    """The newest inspected frames (any verdict): where a missed defect is marked."""
    where, args = ("WHERE i.camera = ?", [camera]) if camera else ("", [])
    rows = conn.execute(f"SELECT {_COLUMNS} FROM {_FROM} {where} ORDER BY i.id DESC LIMIT ?",
                        [*args, min(limit, MAX_PAGE)]).fetchall()
    return [_row(r) for r in rows]
