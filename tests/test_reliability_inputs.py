"""Bad input and a bad disk never stop the inspection (issue 5: "Camera faults" bad frames, "Must show" 4,
and "Disk full or read-only: keep inspecting and publishing rejects, stop saving images first").

Bad frames are counted and skipped with a log line. The image folder on a tiny real tmpfs is filled up
and then remounted read-only: saving pauses (reported), inspection and rejects go on, saving resumes
when space returns.
"""

from __future__ import annotations

import io
import json
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from devkit.support import (
    Broker,
    DurableSubscriber,
    JsonObject,
    ServiceRunner,
    report_figures,
    spot_frame,
    wait_until,
    write_config,
    write_spot_video,
)
from edged import status
from edged.capture import SHAPE_SETTLE_FRAMES
from edged.config import load_config
from edged.sdnotify import Notifier
from edged.service import Service


def run_to_end(cfg_path: Path, bundle: Path) -> Service:
    service = Service(load_config(cfg_path), notifier=Notifier({}), handle_signals=False)
    service.run()
    return service


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", image)[1].tobytes()


def test_folder_with_corrupt_and_non_image_files(tmp_path: Path, tiny_bundle: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    folder = tmp_path / "frames"
    folder.mkdir()
    good = {f"{i:02d}_good.png": spot_frame(i == 3, seed=i) for i in range(6)}
    for name, img in good.items():
        (folder / name).write_bytes(png(img))
    valid = png(spot_frame(False, seed=99))
    corrupt = {
        "01a_truncated.png": valid[: len(valid) // 3],
        "02a_random.jpg": np.random.default_rng(1).integers(0, 256, 4000, dtype=np.uint8).tobytes(),
        "03a_empty.png": b"",
        "04a_text.bmp": b"this is not a bitmap\n",
        "04b_header_only.jpg": b"\xff\xd8\xff\xe0" + b"\x00" * 16,
    }
    for name, data in corrupt.items():
        (folder / name).write_bytes(data)
    (folder / "05a_dir.png").mkdir()  # a folder with an image name
    odd_shapes = {"02b_gray.png": spot_frame(False, seed=5)[:, :, 0],  # one channel in a colour stream
                  "02c_bgra.png": np.dstack([spot_frame(False, seed=6), np.full((60, 80), 255, np.uint8)])}
    for name, img in odd_shapes.items():
        (folder / name).write_bytes(png(img))
    (folder / "notes.txt").write_text("not an image, not even by name")  # ignored: not an image extension
    (folder / ".hidden.png").write_bytes(b"junk")  # ignored: hidden (a file being copied in)

    cfg = write_config(tmp_path / "edged.yaml", tiny_bundle, folder, tmp_path / "state")
    with caplog.at_level("WARNING"):
        service = run_to_end(cfg, tiny_bundle)
    s = service.summary()
    expected_bad = len(corrupt) + 1 + len(odd_shapes)  # + the folder named like an image
    assert (s.frames, s.inspected, s.rejects) == (len(good), len(good), 1)
    assert s.bad_frames == expected_bad
    assert service.stats["cam1"].state == "finished"
    assert "bad frame skipped" in caplog.text
    assert "capture thread failed" not in caplog.text and "Traceback" not in caplog.text
    db = sqlite3.connect(tmp_path / "state" / "edged.db")
    assert db.execute("SELECT COUNT(*) FROM inspections").fetchone()[0] == len(good)

    # the same folder through the command line: exit 0 and the counts in the summary
    proc = subprocess.run([sys.executable, "-m", "edged", "replay", str(folder), "-c", str(cfg)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert f"{len(good)} inspected, 1 rejects, {expected_bad} bad frames" in proc.stdout
    assert "Traceback" not in proc.stderr


def test_folder_whose_frame_size_changes(tmp_path: Path, tiny_bundle: Path) -> None:
    """A new size is skipped (counted) until it persists SHAPE_SETTLE_FRAMES frames, then accepted."""
    folder = tmp_path / "frames"
    folder.mkdir()
    small, large = 10, 40
    for i in range(small):
        (folder / f"{i:03d}.png").write_bytes(png(spot_frame(False, size=(80, 60), seed=i)))
    for i in range(small, small + large):
        (folder / f"{i:03d}.png").write_bytes(png(spot_frame(i == small + large - 2, size=(120, 90), seed=i)))
    service = run_to_end(write_config(tmp_path / "edged.yaml", tiny_bundle, folder, tmp_path / "state"), tiny_bundle)
    s = service.summary()
    skipped = SHAPE_SETTLE_FRAMES - 1
    assert s.bad_frames == skipped
    assert s.inspected == small + large - skipped
    assert s.rejects == 1, "the defect in the new size is found once the size is accepted"


def test_video_whose_resolution_changes_midway(tmp_path: Path, tiny_bundle: Path) -> None:
    """Two MJPG segments of different sizes joined by ffmpeg: never a crash, the defects in both found.

    OpenCV's FFmpeg reader rescales every frame to the stream's FIRST size (it does not report the
    change), so here no frame is skipped: the daemon inspects the second segment rescaled.
    """
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        pytest.skip("ffmpeg is not installed")
    a, b = tmp_path / "a.avi", tmp_path / "b.avi"
    write_spot_video(a, 20, {5}, size=(80, 60))
    write_spot_video(b, 30, {10, 25}, size=(160, 120))
    (tmp_path / "list.txt").write_text(f"file '{a}'\nfile '{b}'\n")
    joined = tmp_path / "joined.mkv"
    subprocess.run([ffmpeg, "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(tmp_path / "list.txt"),
                    "-c", "copy", str(joined)], check=True, timeout=60)
    service = run_to_end(write_config(tmp_path / "edged.yaml", tiny_bundle, joined, tmp_path / "state"), tiny_bundle)
    s = service.summary()
    assert s.frames + s.bad_frames == 50
    assert s.inspected == s.frames
    assert s.rejects == 3
    report_figures("resolution_change_video", {"frames": s.frames, "bad_frames": s.bad_frames,
                                               "inspected": s.inspected, "rejects": s.rejects})


# --- disk full / read-only image folder ------------------------------------------------------------

def mount_tmpfs(where: Path, size_kb: int) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(where)],
                           capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


def remount(where: Path, mode: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{mode}", str(where)], check=True, timeout=10)


@pytest.mark.slow
def test_full_then_read_only_image_disk_pauses_images_not_inspection(tmp_path: Path, tiny_bundle: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import edged.archive

    images = tmp_path / "state" / "images"
    if not mount_tmpfs(images, 512):
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)")
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker")
    monkeypatch.setattr(edged.archive, "RETRY_AFTER_S", 0.5)  # the daemon waits 60 s; the test has no minute
    try:
        broker.start()
        filler = images / "filler.bin"
        video = tmp_path / "line.avi"
        write_spot_video(video, 40, set(range(2, 40, 5)))
        cfg = load_config(write_config(tmp_path / "edged.yaml", tiny_bundle, video, tmp_path / "state", broker.port,
                                       extra_camera="    loop: true\n    realtime: true\n    fps: 20",
                                       extra="", mqtt_extra="reject_ttl_ms: 60000"))
        cfg = cfg.model_copy(update={"storage": cfg.storage.model_copy(update={
            "images": cfg.storage.images.model_copy(update={"save": "all", "format": "png"})})})
        sub = DurableSubscriber(broker.port, ["edged/test/reject"])
        runner = ServiceRunner(cfg).start()
        svc = runner.service
        health = tmp_path / "state" / "health.json"

        def paused_in_health() -> bool:
            try:
                return bool(json.loads(health.read_text())["disk"]["images_paused"])
            except (OSError, ValueError, KeyError):
                return False

        try:
            wait_until(lambda: svc.archive is not None and svc.archive.saved > 5, 30, "images being saved")
            archive = svc.archive
            assert archive is not None
            # 1. the images outgrow the small disk (quota 1 GB > 512 kB): the quota is lowered, oldest
            #    images deleted, and saving goes on below it
            wait_until(lambda: archive.failed > 0, 30, "the disk to fill up with images")
            quota_lowered = archive.quota < 1024 * 2**20
            assert quota_lowered
            saved = archive.saved
            wait_until(lambda: archive.saved > saved + 5, 30, "saving to go on below the lowered quota")
            # 2. something else fills the disk: saving fails (then makes room within the images' own
            #    share), inspection and rejects go on
            with filler.open("wb") as fh, pytest.raises(OSError):
                fh.write(b"\0" * 10_000_000)
            failed = archive.failed
            wait_until(lambda: archive.failed > failed, 30, "a failed image save")
            inspected, rejects = svc.counters.inspected, len(sub.ids("edged/test/reject"))
            wait_until(lambda: svc.counters.inspected > inspected + 40
                       and len(sub.ids("edged/test/reject")) >= rejects + 5, 30,
                       "inspections and rejects while the disk is full")
            # No partial file is left: one seen now may be a write in progress (the image writer runs at idle
            # priority and can sit between open and rename for a while on a busy machine), so each one
            # seen must be gone soon; a leaked one (names are unique per frame) would stay.
            seen = set(images.rglob("*.tmp"))
            wait_until(lambda: not seen & set(images.rglob("*.tmp")), 10, "no partial files left on the full disk")
            # 3. space returns: saving resumes
            filler.unlink()
            saved = archive.saved
            wait_until(lambda: archive.saved > saved + 5, 30, "saving to resume after space returned")
            # 4. the disk goes read-only: the same
            remount(images, "ro")
            failed = archive.failed
            wait_until(lambda: archive.failed > failed, 30, "a failed save on the read-only disk")
            wait_until(paused_in_health, 10, "the health file to report images paused")
            inspected, rejects = svc.counters.inspected, len(sub.ids("edged/test/reject"))
            wait_until(lambda: svc.counters.inspected > inspected + 40
                       and len(sub.ids("edged/test/reject")) >= rejects + 5, 30, "inspections while read-only")
            remount(images, "rw")
            saved = archive.saved
            wait_until(lambda: archive.saved > saved + 5, 30, "saving to resume after the remount")
        finally:
            runner.stop()
            sub.close()
        db = sqlite3.connect(tmp_path / "state" / "edged.db")
        with_image, without = db.execute(
            "SELECT SUM(image_path IS NOT NULL), SUM(image_path IS NULL) FROM inspections").fetchone()
        assert with_image > 0 and without > 0
        report_figures("disk_full_read_only", {"inspected": svc.counters.inspected, "rejects": svc.counters.rejects,
                                               "images_saved": archive.saved, "image_saves_failed": archive.failed,
                                               "rows_with_image": with_image, "rows_without_image": without,
                                               "quota_after_kb": archive.quota // 1024})
    finally:
        broker.stop()
        subprocess.run(["umount", "-l", str(images)], capture_output=True, timeout=10)


@pytest.mark.slow
def test_full_database_disk_keeps_rejects_flowing(tmp_path: Path, tiny_bundle: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    """The database's own disk fills up: rows cannot be committed, but rejects still reach the line
    (published directly, not durably), and everything resumes when space returns. Meanwhile the log gets
    one line per 30 s (not one per failed commit), with SQLite's own error (not the failed ROLLBACK after
    it), and the health file stays fresh (rewritten in place) and says "disk full", so `edged status`
    does not call a daemon on a full disk hung."""
    state = tmp_path / "state"
    if not mount_tmpfs(state, 4096):
        pytest.skip("cannot mount a tmpfs here (needs root / CAP_SYS_ADMIN)")
    (tmp_path / "broker").mkdir()
    broker = Broker(tmp_path / "broker")
    try:
        broker.start()
        video = tmp_path / "line.avi"
        write_spot_video(video, 40, set(range(2, 40, 5)))
        cfg = load_config(write_config(tmp_path / "edged.yaml", tiny_bundle, video, state, broker.port,
                                       extra_camera="    loop: true\n    realtime: true\n    fps: 20",
                                       extra="", mqtt_extra="reject_ttl_ms: 60000"))
        cfg = cfg.model_copy(update={"storage": cfg.storage.model_copy(update={
            "images": cfg.storage.images.model_copy(update={"save": "none"})})})
        sub = DurableSubscriber(broker.port, ["edged/test/reject"])
        runner = ServiceRunner(cfg).start()
        svc = runner.service
        db_path = state / "edged.db"

        def rows() -> int:
            db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=10)
            try:
                return int(db.execute("SELECT COUNT(*) FROM inspections").fetchone()[0])
            finally:
                db.close()

        filler = state / "filler.bin"
        health_path = state / "health.json"

        def health() -> JsonObject:
            for _ in range(5):  # rewritten in place while the disk is full: a read may catch it half written
                try:
                    return dict(json.loads(health_path.read_text()))
                except ValueError:
                    time.sleep(0.1)
            raise AssertionError("health file unreadable")

        try:
            wait_until(lambda: len(set(sub.ids("edged/test/reject"))) >= 3, 30, "rejects before the disk fills")
            with caplog.at_level("WARNING"):
                with filler.open("wb") as fh, pytest.raises(OSError):
                    fh.write(b"\0" * 100_000_000)
                assert svc.recorder is not None and svc.link is not None
                recorder = svc.recorder
                wait_until(lambda: recorder.db_errors > 0, 30, "a failed commit on the full disk")
                errors, received = svc.recorder.db_errors, len(sub.ids("edged/test/reject"))
                wait_until(lambda: len(sub.ids("edged/test/reject")) >= received + 5, 30,
                           "rejects while the database cannot be written")
                assert svc.recorder.db_errors > errors, "still failing: the rejects above were published directly"
                assert svc.link.is_alive() and svc.recorder.is_alive(), "no thread died of the full disk"
                t_full = time.time()
                wait_until(lambda: float(health()["updated_at"]) > t_full + 1.0
                           and bool(health()["disk"]["db_full"]), 30,
                           "a fresh health file saying the database disk is full")
                out = io.StringIO()
                assert status.main(cfg, out=out) == 1
                assert "database disk FULL" in out.getvalue() and "hung" not in out.getvalue(), out.getvalue()
                wait_until(lambda: recorder.db_errors >= errors + 20, 30, "more failed commits")
                lines = [r.getMessage() for r in caplog.records if "cannot write" in r.getMessage()]
            assert 1 <= len(lines) <= 3, f"{len(lines)} log lines for {svc.recorder.db_errors} failed commits"
            assert "database or disk is full" in lines[0]
            assert "rollback" not in caplog.text.lower()
            filler.unlink()
            n = rows()
            wait_until(lambda: rows() > n + 20, 30, "commits to resume after space returned")
            received = len(sub.ids("edged/test/reject"))
            wait_until(lambda: len(sub.ids("edged/test/reject")) >= received + 3, 30, "durable rejects again")
            assert svc.link.is_alive()
        finally:
            runner.stop()
            sub.close()
        assert sqlite3.connect(db_path).execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        report_figures("database_disk_full", {"commit_errors": svc.recorder.db_errors,
                                              "rejects_received": len(set(sub.ids("edged/test/reject"))),
                                              "rows": rows(), "inspected": svc.counters.inspected})
    finally:
        broker.stop()
        subprocess.run(["umount", "-l", str(state)], capture_output=True, timeout=10)


def test_a_file_name_in_a_watched_folder_cannot_forge_a_log_line(tmp_path: Path, tiny_bundle: Path,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """File names come from whoever writes into the folder: outside text, escaped in the log."""
    folder = tmp_path / "frames"
    folder.mkdir()
    (folder / "00\n2026-11-27 07:00:00.000 ERROR edged.recorder: forged.png").write_bytes(b"not an image")
    (folder / "01_good.png").write_bytes(png(spot_frame(False)))
    cfg = write_config(tmp_path / "edged.yaml", tiny_bundle, folder, tmp_path / "state")
    with caplog.at_level("WARNING"):
        service = run_to_end(cfg, tiny_bundle)
    assert service.summary().bad_frames == 1
    [line] = [r.getMessage() for r in caplog.records if "bad frame skipped" in r.getMessage()]
    assert "\n" not in line and "00\\x0a2026-11-27 07:00:00.000 ERROR" in line
