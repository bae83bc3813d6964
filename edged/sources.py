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
import re
import struct
import time
from pathlib import Path
from typing import BinaryIO

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

    def __init__(self, spec: str, watch: bool = False, loop: bool = False, poll_s: float = 0.1,
                 max_megapixels: float = 50.0) -> None:
        super().__init__(spec)
        self.folder = Path(spec)
        self.watch = watch
        self.loop = loop
        self.poll_s = poll_s
        self.max_pixels = max_megapixels * 1e6
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
        size = image_size(path)
        if size is not None and size[0] * size[1] > self.max_pixels:
            # decoding first would cost width x height x channels bytes (1.2 GB for a 20000x20000 PNG)
            raise BadFrame(f"{path.name}: {size[0]}x{size[1]} pixels ({size[0] * size[1] / 1e6:.0f} MP) is over "
                           f"the pixel budget of {self.max_pixels / 1e6:g} MP (cameras[].max_image_megapixels): "
                           "skipped without decoding")
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None or image.size == 0:
            raise BadFrame(f"{path.name}: not a readable image")
        self._any = True
        return image, path.name


def image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from an image file's header, without decoding it; None when the format is not one
    read here (PNG, JPEG, BMP, WebP, PNM, TIFF) or the header is unreadable (imread then reports it)."""
    try:
        with path.open("rb") as fh:
            head = fh.read(64)
            if head.startswith(b"\xff\xd8"):
                return _jpeg_size(fh)
    except OSError:
        return None
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        return struct.unpack(">II", head[16:24])
    if head.startswith(b"BM") and len(head) >= 26:
        w, h = struct.unpack("<ii", head[18:26])
        return abs(w), abs(h)
    if head.startswith(b"RIFF") and head[8:12] == b"WEBP" and len(head) >= 30:
        chunk = head[12:16]
        if chunk == b"VP8 ":
            w, h = struct.unpack("<HH", head[26:30])
            return w & 0x3FFF, h & 0x3FFF
        if chunk == b"VP8L":
            bits = int.from_bytes(head[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8X":
            return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
    if head[:1] == b"P" and head[1:2] in b"123456" and len(head) > 2:
        fields = re.sub(rb"#[^\n]*", b" ", head[2:]).split()
        if len(fields) >= 2 and fields[0].isdigit() and fields[1].isdigit():
            return int(fields[0]), int(fields[1])
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff_size(path, "<" if head[:2] == b"II" else ">")
    return None


def _jpeg_size(fh: BinaryIO) -> tuple[int, int] | None:
    """Walk the JPEG markers (after SOI) to the first start-of-frame, which holds the size."""
    fh.seek(2)
    for _ in range(256):  # markers before the frame header: APPn (EXIF), DQT, DHT, COM...
        marker = fh.read(2)
        while len(marker) == 2 and marker[1] == 0xFF:  # fill bytes
            marker = marker[1:] + fh.read(1)
        if len(marker) < 2 or marker[0] != 0xFF:
            return None
        kind = marker[1]
        if kind in (0x01, *range(0xD0, 0xD8)):
            continue  # no length
        length = fh.read(2)
        if len(length) < 2:
            return None
        n = struct.unpack(">H", length)[0]
        if 0xC0 <= kind <= 0xCF and kind not in (0xC4, 0xC8, 0xCC):
            sof = fh.read(5)
            if len(sof) < 5:
                return None
            h, w = struct.unpack(">HH", sof[1:5])
            return w, h
        fh.seek(n - 2, 1)
    return None


def _tiff_size(path: Path, order: str) -> tuple[int, int] | None:
    """ImageWidth (256) and ImageLength (257) of the first IFD."""
    try:
        with path.open("rb") as fh:
            fh.seek(4)
            (offset,) = struct.unpack(order + "I", fh.read(4))
            fh.seek(offset)
            (count,) = struct.unpack(order + "H", fh.read(2))
            found: dict[int, int] = {}
            for _ in range(min(count, 512)):
                tag, kind, _n, value = struct.unpack(order + "HHI4s", fh.read(12))
                if tag in (256, 257):
                    found[tag] = struct.unpack(order + ("H" if kind == 3 else "I"), value[:2 if kind == 3 else 4])[0]
            return (found[256], found[257]) if len(found) == 2 else None
    except (OSError, struct.error):
        return None


def _settled(path: Path, min_age_s: float = 0.2) -> bool:
    """A file written by another process is read only once it has not changed for a moment."""
    try:
        return time.time() - path.stat().st_mtime >= min_age_s
    except OSError:
        return True  # vanished: let imread report it as a bad frame


def open_source(spec: str, *, watch: bool = False, loop: bool = False, open_timeout_s: float = 10.0,
                read_timeout_s: float = 5.0, width: int | None = None, height: int | None = None,
                fps: float | None = None, max_megapixels: float = 50.0) -> Source:
    kind = source_kind(spec)
    if kind == "folder":
        return FolderSource(spec, watch=watch, loop=loop, max_megapixels=max_megapixels)
    return VideoSource(spec, kind, open_timeout_s=open_timeout_s, read_timeout_s=read_timeout_s, loop=loop,
                       width=width, height=height, fps=fps)
