"""Feedback labels from people at the line: false reject, confirmed defect, missed defect.

Their own table beside `inspections` (one row per label, newest wins for a frame), written by the web view
through its own short connection: one INSERT per click, so the recorder waits at most microseconds for it
(SQLite serializes writers; busy_timeout covers it). A false reject's frame is also copied into the
feedback folder's `good/`, which `edged-train calibrate` (and fit) read as good images as they are.
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

LabelKind = Literal["false_reject", "confirmed_defect", "missed_defect"]
LABEL_KINDS: tuple[str, ...] = get_args(LabelKind)

SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    inspection_id INTEGER NOT NULL,          -- inspections.id
    uid           TEXT NOT NULL,             -- inspections.uid (survives retention of the row)
    camera        TEXT NOT NULL,
    label         TEXT NOT NULL,             -- false_reject | confirmed_defect | missed_defect
    created_by    TEXT NOT NULL,             -- who, as logged in (or typed on an open view)
    created_at    REAL NOT NULL,             -- Unix seconds
    image_copy    TEXT                       -- the frame's copy in the feedback folder (false rejects)
);
CREATE INDEX IF NOT EXISTS labels_inspection ON labels(inspection_id);
"""


class LabelRefused(ValueError):
    """A label that cannot be stored as asked (which frame, which label); the message is for the person."""


@dataclass(frozen=True, slots=True)
class Label:
    """One stored label."""

    id: int
    inspection_id: int
    uid: str
    camera: str
    label: str
    created_by: str
    created_at: float
    image_copy: str | None

    def to_dict(self) -> dict[str, object]:
        """As the API returns it."""
        return {"id": self.id, "inspection_id": self.inspection_id, "uid": self.uid, "camera": self.camera,
                "label": self.label, "by": self.created_by, "at": self.created_at, "image_copy": self.image_copy}


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the labels table when missing (idempotent)."""
    conn.executescript(SCHEMA)


def _check(label: str, reason: str, is_defective: bool) -> None:
    """Which labels fit which frame: false reject / confirmed defect on a reject, missed defect on a good one."""
    if label not in LABEL_KINDS:
        raise LabelRefused(f"unknown label {label!r}: one of {', '.join(LABEL_KINDS)}")
    if label in ("false_reject", "confirmed_defect") and not is_defective:
        raise LabelRefused(f"{label} applies to a rejected frame; this one passed (use missed_defect)")
    if label == "missed_defect" and (is_defective or reason == "not_inspected"):
        raise LabelRefused("missed_defect applies to an inspected frame that passed")


def add_label(conn: sqlite3.Connection, inspection_id: int, label: str, by: str, feedback_dir: Path,
              images_dir: Path) -> Label:
    """Store a label for an inspection (LabelRefused when it does not fit); a false reject's stored frame is
    copied into `feedback_dir/good/` first (the label then names the copy)."""
    row = conn.execute("SELECT uid, camera, is_defective, reason, image_path FROM inspections WHERE id = ?",
                       (inspection_id,)).fetchone()
    if row is None:
        raise LabelRefused(f"no inspection {inspection_id} (deleted by retention?)")
    uid, camera, defective, reason, image_path = row
    _check(label, reason, bool(defective))
    copy = _copy_good(Path(image_path), images_dir, feedback_dir, uid) if label == "false_reject" and image_path \
        else None
    now = time.time()
    cur = conn.execute("INSERT INTO labels (inspection_id, uid, camera, label, created_by, created_at, image_copy) "
                       "VALUES (?, ?, ?, ?, ?, ?, ?)", (inspection_id, uid, camera, label, by, now, copy))
    return Label(int(cur.lastrowid or 0), inspection_id, uid, camera, label, by, now, copy)


def _copy_good(image: Path, images_dir: Path, feedback_dir: Path, uid: str) -> str | None:
    """Copy a stored frame (inside the image folder only) to the feedback folder's good/; None when it is gone."""
    try:
        source = image.resolve()
        if not source.is_relative_to(images_dir.resolve()) or not source.is_file():
            return None
        good = feedback_dir / "good"
        good.mkdir(parents=True, exist_ok=True)
        target = good / f"{uid}{source.suffix}"
        shutil.copyfile(source, target)
    except OSError as exc:
        raise LabelRefused(f"cannot copy the frame to the feedback folder: {exc.strerror or exc}") from None
    return str(target)


def labels_of(conn: sqlite3.Connection, inspection_id: int) -> list[Label]:
    """The labels of one inspection, newest first."""
    rows = conn.execute("SELECT id, inspection_id, uid, camera, label, created_by, created_at, image_copy FROM "
                        "labels WHERE inspection_id = ? ORDER BY id DESC", (inspection_id,)).fetchall()
    return [Label(*r) for r in rows]


def recent_labels(conn: sqlite3.Connection, limit: int = 50) -> list[Label]:
    """The newest labels, newest first."""
    rows = conn.execute("SELECT id, inspection_id, uid, camera, label, created_by, created_at, image_copy FROM "
                        "labels ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    return [Label(*r) for r in rows]


def label_counts(conn: sqlite3.Connection) -> dict[str, int]:
    """How many labels of each kind exist (every kind listed, 0 when none)."""
    counts = dict.fromkeys(LABEL_KINDS, 0)
    try:
        for label, n in conn.execute("SELECT label, COUNT(*) FROM labels GROUP BY label"):
            counts[str(label)] = int(n)
    except sqlite3.OperationalError:  # no table yet (a read-only connection before the first start)
        pass
    return counts
