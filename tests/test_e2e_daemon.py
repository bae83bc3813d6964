"""End to end: a generated video -> `edged run` (a real process) -> real mosquitto -> a real subscriber."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devkit.support import Broker, Subscriber, write_config, write_spot_video

pytestmark = pytest.mark.slow

DEFECTIVE = {5, 17, 18, 40, 77}


def run_edged(args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edged", *args], capture_output=True, text=True, timeout=timeout)


def test_video_rejects_match_defective_frames(tmp_path: Path, tiny_bundle: Path, broker: Broker) -> None:
    video = tmp_path / "line.avi"
    labels = write_spot_video(video, 90, DEFECTIVE)
    cfg = write_config(tmp_path / "edged.yaml", tiny_bundle, video, tmp_path / "state", broker.port)
    sub = Subscriber(broker.port, ["edged/test/#"])
    try:
        proc = run_edged(["run", "-c", str(cfg)])
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        rejects = sub.wait_for_objects("edged/test/reject", len(DEFECTIVE))
        status = sub.wait_for("edged/test/status", 2)
    finally:
        sub.close()
    # one reject per defective frame, none for good ones
    assert sorted(r["seq"] for r in rejects) == sorted(DEFECTIVE)
    assert len({r["id"] for r in rejects}) == len(rejects)
    for r in rejects:
        assert r["camera"] == "cam1" and r["reason"] == "defect"
        assert r["expires_at"] > r["captured_at"]
        assert r["score"] > r["threshold"] and r["regions"], r
        box = r["regions"][0]
        assert box["x"] <= 40 <= box["x"] + box["w"] and box["y"] <= 30 <= box["y"] + box["h"]
    assert status[0] == "online" and status[-1] == "stopped"
    # the database matches frame for frame
    db = sqlite3.connect(tmp_path / "state" / "edged.db")
    rows = db.execute("SELECT seq, is_defective, score, threshold, confidence, latency_ms, model, reason "
                      "FROM inspections ORDER BY seq").fetchall()
    assert [r[0] for r in rows] == list(range(len(labels)))
    assert [bool(r[1]) for r in rows] == labels
    assert all(r[6] == "test-max" and r[5] >= 0 for r in rows)
    assert all(abs(r[4] - min(r[2] / r[3], 2.0)) < 1e-6 for r in rows)
    outbox = db.execute("SELECT state, payload FROM outbox WHERE kind = 'reject'").fetchall()
    assert len(outbox) == len(DEFECTIVE) and {s for s, _ in outbox} == {"delivered"}
    assert {json.loads(p)["id"] for _, p in outbox} == {r["id"] for r in rejects}
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # the reject images were saved
    images = list((tmp_path / "state" / "images").rglob("*.jpg"))
    maps = list((tmp_path / "state" / "images").rglob("*_map.png"))
    assert len(images) == len(maps) == len(DEFECTIVE)  # the frame and its anomaly map each


def test_replay_prints_summary_and_json(tmp_path: Path, tiny_bundle: Path) -> None:
    video = tmp_path / "line.avi"
    write_spot_video(video, 40, {3, 30})
    cfg = write_config(tmp_path / "edged.yaml", tiny_bundle, video, tmp_path / "state")
    out = tmp_path / "frames.jsonl"
    proc = run_edged(["replay", str(video), "-c", str(cfg), "--json", str(out)])
    assert proc.returncode == 0, proc.stderr
    assert "40 frames, 40 inspected, 2 rejects" in proc.stdout
    assert "0 dropped" in proc.stdout
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [x["seq"] for x in lines] == list(range(40))
    assert [x["seq"] for x in lines if x["is_defective"]] == [3, 30]


def test_free_run_one_reject_per_defective_part(tmp_path: Path, tiny_bundle: Path, broker: Broker) -> None:
    video = tmp_path / "parts.avi"
    part_a, part_b = set(range(10, 15)), set(range(40, 44))  # two parts, each seen in several frames
    write_spot_video(video, 60, part_a | part_b)
    cfg = write_config(tmp_path / "edged.yaml", tiny_bundle, video, tmp_path / "state", broker.port,
                       extra_camera="    realtime: true\n    fps: 30")
    cfg.write_text(cfg.read_text().replace("trigger: {gap_ms: 0}", "trigger: {gap_ms: 300}"))
    sub = Subscriber(broker.port, ["edged/test/reject"])
    try:
        proc = run_edged(["run", "-c", str(cfg)])
        assert proc.returncode == 0, proc.stderr
        sub.wait_for("edged/test/reject", 2)
        time.sleep(0.5)
        rejects = sub.objects("edged/test/reject")
    finally:
        sub.close()
    assert len(rejects) == 2, rejects
    a, b = sorted(rejects, key=lambda r: r["seq"])
    assert a["part_id"] == "cam1-10" and a["frames"] == 5 and a["seq"] in part_a
    assert b["part_id"] == "cam1-40" and b["frames"] == 4 and b["seq"] in part_b
    db = sqlite3.connect(tmp_path / "state" / "edged.db")
    assert db.execute("SELECT COUNT(*) FROM inspections WHERE is_defective = 1").fetchone()[0] == 9
    # every defective row names its part, as the reject does (good frames belong to no part)
    parts = dict(db.execute("SELECT seq, part_id FROM inspections WHERE is_defective = 1").fetchall())
    assert parts == {**{s: "cam1-10" for s in part_a}, **{s: "cam1-40" for s in part_b}}
    assert db.execute("SELECT COUNT(*) FROM inspections WHERE is_defective = 0 AND part_id IS NOT NULL"
                      ).fetchone()[0] == 0
    rejected = db.execute("SELECT i.part_id FROM outbox o JOIN inspections i ON i.id = o.inspection_id "
                          "WHERE o.kind = 'reject' ORDER BY i.seq").fetchall()
    assert rejected == [("cam1-10",), ("cam1-40",)]
