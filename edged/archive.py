"""Defect images on disk, under a size quota, that never stop the inspection.

The oldest files are deleted when the quota is exceeded. When the disk is full or read-only, saving
pauses (reported in the health file and the log) and is retried a minute later: inspecting and
publishing rejects matters more than pictures. A full disk also lowers the quota below what the
images hold (oldest deleted), so images that outgrew a small disk leave room for the database.

Beside a frame goes its anomaly map as people see it (`<name>_map.png`: grey, 0-255 over the map's own
range, at the model's resolution), not a rendered overlay: a PNG of 128 x 128 costs a fraction of a
millisecond where a 640 x 480 overlay JPEG cost about as much CPU as the frame's own (a saved reject: 6.1-7.6
-> 4.0-4.2 ms, docs/performance.md). The web view draws the overlay from the two on demand, with
`overlay_from_map`, the same pixels `render_overlay` gives.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path

import cv2
import numpy as np

from edged.frames import Region, Verdict
from edged.health import Heartbeats, SupervisedThread
from edged.preprocess import to_uint8

log = logging.getLogger(__name__)

DISK_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EIO}
RETRY_AFTER_S = 60.0  # after a disk error, saving is tried again this much later


class ImageArchive:
    """Defect images under a size quota (the oldest deleted first). A disk error never reaches inspection: saving pauses
    for `retry_after_s` and is counted."""

    def __init__(self, folder: Path, quota_mb: float, overlay: bool = True, fmt: str = "jpg",
                 retry_after_s: float | None = None) -> None:
        self.folder = folder
        self.quota = int(quota_mb * 1024 * 1024)
        self.overlay = overlay
        self.ext = "." + fmt
        self.retry_after_s = RETRY_AFTER_S if retry_after_s is None else retry_after_s
        self.paused_until = 0.0
        self.saved = 0
        self.failed = 0
        self._files: deque[tuple[str, int]] = deque()  # oldest first; a str costs a third of a Path
        self._total = 0
        self._scan()

    @property
    def paused(self) -> bool:
        """True while saving is paused after a disk error (full, read-only); shown in the health file."""
        return time.monotonic() < self.paused_until

    def _scan(self) -> None:
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            files = sorted((p for p in self.folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_mtime)
        except OSError as exc:
            log.warning("image folder %s unusable: %s", self.folder, exc)
            files = []
        for p in files:
            size = p.stat().st_size
            self._files.append((str(p), size))
            self._total += size

    def _base(self, verdict: Verdict, station: str) -> Path:
        f = verdict.frame
        stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(f.captured_at))
        return self.folder / stamp[:8] / f"{station}_{f.camera}_{stamp}_{f.seq:08d}"

    def planned_path(self, verdict: Verdict, station: str) -> str | None:
        """Where `save` will put this frame (None while saving is paused): the row and the reject carry
        the path at once, and the JPEG is written after the commit, off the reject's path."""
        if self.paused:
            return None
        return str(self._base(verdict, station).with_suffix(self.ext))

    def save(self, verdict: Verdict, station: str) -> str | None:
        """Save the frame and its overlay; returns the frame's path, or None when paused or failed."""
        if self.paused:
            return None
        base = self._base(verdict, station)
        try:
            base.parent.mkdir(parents=True, exist_ok=True)
            path = base.with_suffix(self.ext)
            self._write(path, verdict.frame.image)
        except OSError as exc:
            self._failed(exc, "image")
            return None
        self.saved += 1
        try:
            self._write_map(base, verdict)
        except OSError as exc:  # the frame stays: the overlay is only a convenience
            self._failed(exc, "overlay")
        self._enforce_quota()
        return str(path)

    def _failed(self, exc: OSError, what: str) -> None:
        """A disk error pauses saving (and may lower the quota); anything else is just logged."""
        self.failed += 1
        if exc.errno in DISK_ERRNOS:
            self.paused_until = time.monotonic() + self.retry_after_s
            log.error("cannot save defect images (%s): paused for %.0f s; inspection goes on",
                      exc.strerror or exc, self.retry_after_s)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self._shrink_quota()
        else:
            log.warning("cannot save defect %s: %s", what, exc)

    def _write_map(self, base: Path, verdict: Verdict) -> None:
        if self.overlay and verdict.anomaly_map is not None:
            self._write(map_path(base.with_suffix(self.ext)), map_image(verdict.anomaly_map))

    def _write(self, path: Path, image: np.ndarray) -> None:
        ok, data = cv2.imencode(path.suffix, image)
        if not ok:
            raise OSError(errno.EINVAL, f"cannot encode {path.name}")
        tmp = path.with_name(path.name + ".tmp")
        try:
            with tmp.open("wb") as fh:
                fh.write(data.tobytes())
            tmp.replace(path)
        except OSError:
            # a partial file on a full disk would hold the space that saving needs to resume
            with contextlib.suppress(OSError):
                tmp.unlink()
            raise
        size = path.stat().st_size
        self._files.append((str(path), size))
        self._total += size

    def _shrink_quota(self) -> None:
        """The disk filled up below our quota: hold 10% less than now, so images never starve the database.

        Only while the images are a sizeable part (>= 10%) of the file system: when something else
        filled the disk, deleting our few images would not help.
        """
        try:
            st = os.statvfs(self.folder)
        except OSError:
            return
        if self._total <= 0 or self._total < 0.1 * st.f_blocks * st.f_frsize:
            return
        new = int(self._total * 0.9)
        if new < self.quota:
            log.error("image quota lowered from %.1f MB to %.1f MB (the disk is smaller than the quota); "
                      "oldest images deleted", self.quota / 2**20, new / 2**20)
            self.quota = new
            self._enforce_quota()

    def _enforce_quota(self) -> None:
        while self._total > self.quota and self._files:
            path, size = self._files.popleft()
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                log.warning("cannot delete %s to keep the image quota: %s", path, exc)
            self._total -= size


class ImageWriter(SupervisedThread):
    """Encodes and writes defect images behind the recorder, only when a core is otherwise idle.

    On a 2-core box, a 640x480 JPEG encoded right after a reject's commit competed with the MQTT thread
    for a core and added up to 5 ms to the reject's publish (p99). This thread runs in Linux's
    SCHED_IDLE class, so it never delays inspection or publishing. When it falls behind (a CPU busy
    with frames), `put` writes the image in the caller instead: the backlog, and the memory its frames
    hold, stays at `maxsize` images. Rows whose frame could not be written come back on `lost` (row ids)
    for the recorder, the only database writer, to clear their path.
    """

    def __init__(self, archive: ImageArchive, station: str, maxsize: int = 4,
                 heartbeats: Heartbeats | None = None) -> None:
        # no beat (it sleeps on its queue when idle): supervised for its death only
        super().__init__("images", heartbeats)
        self.what = "image writer"
        self.archive = archive
        self.station = station
        self.todo: queue.Queue[tuple[Verdict, int | None] | None] = queue.Queue(maxsize)
        self.lost: queue.Queue[int] = queue.Queue()
        self.inline = 0  # images written by the caller because the thread was behind

    def put(self, verdict: Verdict, row_id: int | None) -> None:
        """Queue a frame for writing; never blocks: when the thread is behind, the image is written here, in
        the caller."""
        try:
            self.todo.put_nowait((verdict, row_id))
        except queue.Full:
            self.inline += 1
            self._save(verdict, row_id)

    def close(self, timeout: float = 30.0) -> None:
        """Write what is queued, then end."""
        if self.is_alive():
            self.todo.put(None)
            self.join(timeout)

    def work(self) -> None:
        """Write queued images at idle priority until `close` (supervised: `SupervisedThread`)."""
        # Linux: the scheduling class is per thread. Refused (a seccomp filter answers EPERM, not a kill:
        # deploy/edged.service sets SystemCallErrorNumber=EPERM), the thread keeps normal priority.
        with contextlib.suppress(OSError, AttributeError):
            os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
        while (item := self.todo.get()) is not None:
            self._save(*item)

    def _save(self, verdict: Verdict, row_id: int | None) -> None:
        try:
            path = self.archive.save(verdict, self.station)
        except Exception:  # an image must never stop the line; the row loses its path
            log.exception("cannot save a defect image")
            path = None
        if path is None and row_id is not None:
            self.lost.put(row_id)


def map_path(frame_path: Path) -> Path:
    """Where a stored frame's anomaly map lies: `<name>_map.png` beside it."""
    return frame_path.with_name(frame_path.stem + "_map.png")


def map_image(amap: np.ndarray) -> np.ndarray:
    """The anomaly map as people see it: uint8, 0 at its lowest and 255 at its highest value (its own range:
    the overlay shows where, the score how much)."""
    lo, hi = float(np.min(amap)), float(np.max(amap))
    return (np.clip((amap - lo) / (hi - lo + 1e-12), 0, 1) * 255).astype(np.uint8)


def overlay_from_map(image: np.ndarray, grey_map: np.ndarray, boxes: Iterable[tuple[int, int, int, int]] = ()
                     ) -> np.ndarray:
    """The frame with a `map_image` as a heat map and the defect boxes (x, y, w, h), for people to look at."""
    frame = image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    frame = to_uint8(frame)  # the one 16-bit rule (edged.preprocess); a 16-bit frame keeps its top 8 bits
    h, w = frame.shape[:2]
    heat = cv2.applyColorMap(cv2.resize(grey_map, (w, h)), cv2.COLORMAP_JET)
    return draw_boxes(cv2.addWeighted(frame[:, :, :3], 0.6, heat, 0.4, 0), boxes)


def draw_boxes(image: np.ndarray, boxes: Iterable[tuple[int, int, int, int]]) -> np.ndarray:
    """The defect boxes (x, y, w, h) drawn in red on `image` (BGR uint8, changed in place), which is returned."""
    for x, y, bw, bh in boxes:
        cv2.rectangle(image, (x, y), (x + max(bw, 1) - 1, y + max(bh, 1) - 1), (0, 0, 255), 2)
    return image


def render_overlay(image: np.ndarray, amap: np.ndarray, regions: Iterable[Region] = ()) -> np.ndarray:
    """A verdict's frame with its anomaly map and regions drawn (the live view's latest reject)."""
    return overlay_from_map(image, map_image(amap), ((r.x, r.y, r.w, r.h) for r in regions))
