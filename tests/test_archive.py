"""Defect images: written after the commit at the path the row and the reject already carry."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import cv2
import numpy as np
import pytest

from devkit.support import write_config, write_spot_video
from edged.archive import ImageArchive, ImageWriter, map_path, overlay_from_map, render_overlay
from edged.config import load_config
from edged.frames import Frame, Region, Verdict
from edged.sdnotify import Notifier
from edged.service import Service


def _verdict(seq: int) -> Verdict:
    image = np.full((48, 64, 3), 120, np.uint8)
    frame = Frame(camera="cam1", seq=seq, image=image, captured_mono=0.0, captured_at=1_795_766_400.0 + seq)
    return Verdict(frame=frame, score=2.0, threshold=1.0, is_defective=True, decided_mono=0.0,
                   decided_at=frame.captured_at, model="test", anomaly_map=np.zeros((16, 16), np.float32))


def test_save_writes_the_planned_path_and_its_map(tmp_path: Path) -> None:
    archive = ImageArchive(tmp_path / "images", quota_mb=10)
    v = _verdict(7)
    planned = archive.planned_path(v, "line1")
    assert planned is not None and not Path(planned).exists()
    assert archive.save(v, "line1") == planned
    assert Path(planned).is_file()
    assert map_path(Path(planned)) == Path(planned).with_name(Path(planned).stem + "_map.png")
    saved = cv2.imread(str(map_path(Path(planned))), cv2.IMREAD_UNCHANGED)
    assert saved is not None
    assert saved.shape == (16, 16) and saved.dtype == np.uint8  # the model's resolution, not the frame's
    assert archive._total == sum(p.stat().st_size for p in (tmp_path / "images").rglob("*") if p.is_file())


def test_an_overlay_drawn_from_the_saved_map_is_the_one_the_verdict_gives(tmp_path: Path) -> None:
    """The web view draws a stored frame's overlay from its PNG map: the same pixels as drawing it from the
    verdict (the map is saved as the 0-255 image the overlay is made of, losslessly)."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    amap = rng.normal(0.0, 2.0, (16, 16)).astype(np.float32)
    amap[4:7, 9:12] += 9.0
    frame = Frame(camera="cam1", seq=1, image=image, captured_mono=0.0, captured_at=1_795_766_400.0)
    regions = (Region(x=36, y=12, w=12, h=9, area=108, peak=11.0),)
    v = Verdict(frame=frame, score=2.0, threshold=1.0, is_defective=True, decided_mono=0.0,
                decided_at=frame.captured_at, model="test", anomaly_map=amap, regions=regions)
    archive = ImageArchive(tmp_path / "images", quota_mb=10, fmt="png")
    stored = Path(str(archive.save(v, "line1")))
    grey, frame_read = cv2.imread(str(map_path(stored)), cv2.IMREAD_UNCHANGED), cv2.imread(str(stored))
    assert grey is not None and frame_read is not None
    drawn = overlay_from_map(frame_read, grey, [(36, 12, 12, 9)])
    expected = render_overlay(image, amap, regions)
    assert np.array_equal(drawn, expected)
    assert not np.array_equal(expected, render_overlay(image, np.zeros_like(amap), regions))  # it can fail


def test_image_thread_writes_everything_and_never_holds_more_than_its_backlog(tmp_path: Path) -> None:
    """Not started, the thread is 'behind': past its backlog of 2 the caller writes the image itself."""
    archive = ImageArchive(tmp_path / "images", quota_mb=10)
    writer = ImageWriter(archive, "line1", maxsize=2)
    for seq in range(5):
        writer.put(_verdict(seq), row_id=seq)
    assert writer.todo.qsize() == 2 and writer.inline == 3 and archive.saved == 3
    writer.start()
    writer.close()
    assert not writer.is_alive() and archive.saved == 5 and writer.lost.empty()


def test_image_thread_reports_rows_whose_frame_was_not_written(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    archive = ImageArchive(tmp_path / "images", quota_mb=10)
    monkeypatch.setattr(archive, "save", lambda verdict, station: None)  # as after a disk error
    writer = ImageWriter(archive, "line1")
    writer.start()
    writer.put(_verdict(1), row_id=41)
    writer.put(_verdict(2), row_id=None)  # a row that was never committed: nothing to clear
    writer.close()
    assert [writer.lost.get_nowait() for _ in range(writer.lost.qsize())] == [41]


def test_a_failed_write_clears_the_rows_image_path(tmp_path: Path, tiny_bundle: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Frames are encoded after the commit; a frame that then cannot be written must not leave its row
    pointing at a file that does not exist."""
    original = ImageArchive._write

    def flaky(self: ImageArchive, path: Path, image: np.ndarray) -> None:
        if "_map" not in path.name and int(path.stem.rsplit("_", 1)[-1]) % 2:
            raise OSError(errno.EINVAL, "simulated encoder failure")  # not a disk error: saving goes on
        original(self, path, image)

    monkeypatch.setattr(ImageArchive, "_write", flaky)
    video = tmp_path / "v.avi"
    write_spot_video(video, 12, set())
    cfg = load_config(write_config(tmp_path / "c.yaml", tiny_bundle, video, tmp_path / "s"))
    cfg = cfg.model_copy(update={"storage": cfg.storage.model_copy(update={
        "images": cfg.storage.images.model_copy(update={"save": "all"})})})
    Service(cfg, notifier=Notifier({}), handle_signals=False).run()
    rows = sqlite3.connect(tmp_path / "s" / "edged.db").execute("SELECT seq, image_path FROM inspections").fetchall()
    assert len(rows) == 12
    for seq, path in rows:
        if seq % 2:
            assert path is None, seq
        else:
            assert path is not None and Path(path).is_file(), seq
