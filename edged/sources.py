"""Camera sources, chosen by one config string.

    "0", "1"           V4L2 device index (USB/industrial cameras)
    rtsp://, http(s):// network streams (FFmpeg, TCP transport, open/read timeouts)
    a video file       replayed frame by frame
    an image folder    sorted file names; with `watch`, new files are picked up as they appear
    "gst:<pipeline>"   GStreamer pipeline ending in appsink (Jetson CSI cameras; needs OpenCV built
                       with GStreamer, as JetPack's is)

A source reads one frame at a time and signals what happened with exceptions, so the capture thread
has one place to decide: skip the frame (`BadFrame`), reopen (`SourceFailed`) or stop (`SourceEnded`).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import cv2
import numpy as np

from edged.safetext import redact_url

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}
# TCP for RTSP: UDP loses packets on busy plant networks and shows up as smeared frames.
os.environ.setdefault("OPENCV_FFMPEG_CAPTURE_OPTIONS", "rtsp_transport;tcp")


class SourceFailed(Exception):
    """The source cannot deliver frames now (not opened, disconnected, read timeout): reopen it."""


class SourceEnded(Exception):
    """A file or folder has no more frames (not an error)."""


class NoFrameYet(Exception):
    """A watched folder has no new file yet: wait, nothing is wrong."""


class BadFrame(Exception):
    """This one frame is unusable (corrupt file, empty image); the next may be fine."""


def source_kind(source: str) -> str:
    """Classify a config source string: device, stream, gstreamer, folder or file."""
    if source.startswith("gst:"):
        return "gstreamer"
    if source.isdigit() or source.startswith("/dev/video"):
        return "device"
    if "://" in source:
        return "stream"
    if Path(source).is_dir():
        return "folder"
    return "file"


class Source:
    live: bool = True
    nominal_fps: float | None = None

    def __init__(self, spec: str) -> None:
        self.spec = spec

    def open(self) -> None:
        raise NotImplementedError

    def read(self) -> tuple[np.ndarray, str]:
        """The next frame and its name (file name for folders, '' otherwise)."""
        raise NotImplementedError

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return redact_url(self.spec)


class VideoSource(Source):
    """Anything cv2.VideoCapture opens: devices, streams, files, GStreamer pipelines."""

    def __init__(self, spec: str, kind: str, open_timeout_s: float = 10.0, read_timeout_s: float = 5.0,
                 loop: bool = False, width: int | None = None, height: int | None = None,
                 fps: float | None = None) -> None:
        super().__init__(spec)
        self.kind = kind
        self.live = kind != "file"
        self.loop = loop
        self.open_timeout_ms = int(open_timeout_s * 1000)
        self.read_timeout_ms = int(read_timeout_s * 1000)
        self.width, self.height, self.fps = width, height, fps
        self.cap: cv2.VideoCapture | None = None
        self._frames_read = 0

    def open(self) -> None:
        self.close()
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, self.open_timeout_ms,
                  cv2.CAP_PROP_READ_TIMEOUT_MSEC, self.read_timeout_ms]
        if self.kind == "device":
            index = int(self.spec.removeprefix("/dev/video"))
            cap = cv2.VideoCapture(index, cv2.CAP_V4L2, params)
        elif self.kind == "gstreamer":
            if "GStreamer:                   YES" not in cv2.getBuildInformation():
                raise SourceFailed("this OpenCV is built without GStreamer (use JetPack's OpenCV on Jetson)")
            cap = cv2.VideoCapture(self.spec.removeprefix("gst:").strip(), cv2.CAP_GSTREAMER)
        elif self.kind == "stream":
            cap = cv2.VideoCapture(self.spec, cv2.CAP_FFMPEG, params)
        else:
            if not Path(self.spec).is_file():
                raise SourceFailed(f"no such file: {self.spec}")
            cap = cv2.VideoCapture(self.spec, cv2.CAP_FFMPEG)
        if not cap.isOpened():
            cap.release()
            raise SourceFailed(f"cannot open {self.describe()}")
        if self.kind == "device":
            if self.width and self.height:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
            if self.fps:
                cap.set(cv2.CAP_PROP_FPS, self.fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)  # the newest frame, not a stale one from the driver
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.nominal_fps = float(fps) if fps and 0 < fps < 1000 else None
        self.cap = cap

    def read(self) -> tuple[np.ndarray, str]:
        if self.cap is None:
            raise SourceFailed("not open")
        ok, frame = self.cap.read()
        if ok and frame is not None and frame.size:
            self._frames_read += 1
            return frame, ""
        if self.kind == "file":
            if self.loop and self._frames_read > 0:
                self.cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                self._frames_read = 0
                return self.read()
            raise SourceEnded
        raise SourceFailed("read failed (stream ended, timeout or device lost)")

    def close(self) -> None:
        if self.cap is not None:
            self.cap.release()
            self.cap = None

    def describe(self) -> str:
        return redact_url(self.spec)  # never log credentials in a URL (streams, GStreamer pipelines)


class FolderSource(Source):
    """Image files in name order; `watch` keeps polling for new files (line-scan rigs that write files)."""

    live = False

    def __init__(self, spec: str, watch: bool = False, loop: bool = False, poll_s: float = 0.1) -> None:
        super().__init__(spec)
        self.folder = Path(spec)
        self.watch = watch
        self.loop = loop
        self.poll_s = poll_s
        self._pending: list[Path] = []
        self._seen: set[str] = set()
        self._any = False

    def open(self) -> None:
        if not self.folder.is_dir():
            raise SourceFailed(f"no such folder: {self.folder}")
        self._pending, self._seen = [], set()
        self._scan()

    def _scan(self) -> None:
        try:
            names = sorted(p.name for p in self.folder.iterdir()
                           if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
        except OSError as exc:
            raise SourceFailed(f"cannot list {self.folder}: {exc}") from None
        new = [n for n in names if n not in self._seen]
        self._seen.update(new)
        self._pending.extend(self.folder / n for n in new)

    def read(self) -> tuple[np.ndarray, str]:
        while not self._pending:
            if self.watch:
                time.sleep(self.poll_s)
                self._scan()
                if not self._pending:
                    raise NoFrameYet
                break
            if self.loop and self._any:
                self._seen.clear()
                self._scan()
                continue
            raise SourceEnded
        path = self._pending.pop(0)
        if self.watch and not _settled(path):
            self._pending.insert(0, path)  # still being written: try again shortly
            raise NoFrameYet
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None or image.size == 0:
            raise BadFrame(f"{path.name}: not a readable image")
        self._any = True
        return image, path.name


def _settled(path: Path, min_age_s: float = 0.2) -> bool:
    """A file written by another process is read only once it has not changed for a moment."""
    try:
        return time.time() - path.stat().st_mtime >= min_age_s
    except OSError:
        return True  # vanished: let imread report it as a bad frame


def open_source(spec: str, *, watch: bool = False, loop: bool = False, open_timeout_s: float = 10.0,
                read_timeout_s: float = 5.0, width: int | None = None, height: int | None = None,
                fps: float | None = None) -> Source:
    kind = source_kind(spec)
    if kind == "folder":
        return FolderSource(spec, watch=watch, loop=loop)
    return VideoSource(spec, kind, open_timeout_s=open_timeout_s, read_timeout_s=read_timeout_s, loop=loop,
                       width=width, height=height, fps=fps)
