"""Feedback labels on a real SQLite database: which label fits which frame, who and when, the good-image copy."""

from __future__ import annotations

from pathlib import Path

import pytest

from edged.labels import LabelRefused, add_label, ensure_schema, label_counts, labels_of
from edged.store import InspectionRow, InspectionWriter, open_database


def _row(seq: int, defective: bool, image: str | None) -> InspectionRow:
    return InspectionRow(uid=f"uid{seq}", seq=seq, camera="cam1", part_id=None, captured_at=1.0e9 + seq,
                         decided_at=1.0e9 + seq, score=0.9 if defective else 0.1, threshold=0.5,
                         is_defective=defective, confidence=1.8 if defective else 0.2, latency_ms=3.0, model="m",
                         regions=[], image_path=image, reason="defect" if defective else "ok")


@pytest.fixture
def db(tmp_path: Path) -> tuple[object, list[int], Path]:
    images = tmp_path / "images"
    images.mkdir()
    frame = images / "f.jpg"
    frame.write_bytes(b"\xff\xd8jpeg")
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes(b"\xff\xd8other")
    conn = open_database(tmp_path / "edged.db")
    ensure_schema(conn)
    ids = InspectionWriter(conn).record([_row(1, True, str(frame)), _row(2, False, None),
                                         _row(3, True, str(outside))], []).ids
    return conn, ids, tmp_path


def test_a_false_reject_is_stored_and_its_frame_copied_to_good(db: tuple) -> None:
    conn, ids, root = db
    label = add_label(conn, ids[0], "false_reject", "anna", root / "feedback", root / "images")
    assert label.created_by == "anna" and label.label == "false_reject" and label.uid == "uid1"
    copy = Path(label.image_copy or "")
    assert copy == root / "feedback" / "good" / "uid1.jpg" and copy.read_bytes() == b"\xff\xd8jpeg"
    assert [lb.id for lb in labels_of(conn, ids[0])] == [label.id]
    assert label_counts(conn) == {"false_reject": 1, "confirmed_defect": 0, "missed_defect": 0}


def test_labels_must_fit_the_verdict(db: tuple) -> None:
    conn, ids, root = db
    with pytest.raises(LabelRefused, match="applies to a rejected frame"):
        add_label(conn, ids[1], "false_reject", "anna", root / "feedback", root / "images")
    with pytest.raises(LabelRefused, match="missed_defect applies"):
        add_label(conn, ids[0], "missed_defect", "anna", root / "feedback", root / "images")
    with pytest.raises(LabelRefused, match="unknown label"):
        add_label(conn, ids[0], "maybe", "anna", root / "feedback", root / "images")
    with pytest.raises(LabelRefused, match="no inspection"):
        add_label(conn, 999, "confirmed_defect", "anna", root / "feedback", root / "images")
    assert add_label(conn, ids[1], "missed_defect", "bob", root / "feedback", root / "images").image_copy is None
    assert add_label(conn, ids[0], "confirmed_defect", "bob", root / "feedback", root / "images").image_copy is None


def test_a_frame_outside_the_image_folder_is_never_copied(db: tuple) -> None:
    conn, ids, root = db
    label = add_label(conn, ids[2], "false_reject", "anna", root / "feedback", root / "images")
    assert label.image_copy is None and not (root / "feedback" / "good").exists()
