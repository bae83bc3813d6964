"""A folder of image files, read in name order; with `watch`, new files are picked up as they appear
(line-scan rigs and other programs that write one file per part).

Each image's size is read from its header before it is decoded (`image_size`), so a huge file is
skipped instead of exhausting memory. `IMAGE_EXTENSIONS` is the one list of image file types for the
daemon and the training tools (tools/dataset.py imports it).
"""

from __future__ import annotations

import re
import struct
import time
from pathlib import Path
from typing import BinaryIO, Literal

import cv2
import numpy as np
from pydantic import Field

from edged.sources.base import KIND_HELP, BadFrame, NoFrameYet, ReplayCamera, Source, SourceEnded, SourceFailed

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pbm"})


class FolderCamera(ReplayCamera):
    """An image folder. A path that exists is a folder when it is a directory; one that does not exist
    (yet: mounted after start) is taken as a folder when its name has no extension (a "frames.d" or a
    dated "2026.11" needs `kind: folder`)."""

    kind: Literal["folder"] = Field("folder", description=KIND_HELP)
    watch: bool = Field(False, json_schema_extra={"common": True}, description=(
        "Keep watching the folder for new image files instead of finishing when they are all read."))
    max_image_megapixels: float = Field(50.0, gt=0, le=1000, json_schema_extra={"common": True}, description=(
        "Images with more megapixels (width x height from the file's header) are skipped before decoding "
        "and counted as bad frames, so one huge file cannot exhaust memory."))

    @classmethod
    def claims(cls, source: str, base: Path | None) -> bool:
        """An existing folder, or a path not there yet that ends in / or has no extension (mounted later)."""
        path = Path(source)
        if base is not None and not path.is_absolute():
            path = base / path
        try:
            if path.exists():
                return path.is_dir()
        except OSError:  # a name too long, a folder we may not look into: judge by the name as if not there
            pass
        return source.endswith("/") or not path.suffix


class FolderSource(Source):
    """Image files in name order; `watch` keeps polling for new files (line-scan rigs that write files)."""

    live = False

    @property
    def pacing(self) -> float | None:
        """`fps` (else 30) when realtime; None: as fast as inspection goes."""
        return self.cam.pacing(None)

    def __init__(self, cam: FolderCamera, poll_s: float = 0.1) -> None:
        super().__init__(cam.source)
        self.cam = cam
        self.folder = Path(cam.source)
        self.watch = cam.watch
        self.loop = cam.loop
        self.poll_s = poll_s
        self.max_pixels = cam.max_image_megapixels * 1e6
        self._pending: list[Path] = []
        self._seen: set[str] = set()
        self._any = False

    def open(self) -> None:
        """Start from the folder's first file; raises SourceFailed when it is not there or not a folder."""
        try:
            is_dir = self.folder.is_dir()
        except OSError as exc:  # e.g. a name too long: pathlib ignores only "not found" errors
            raise SourceFailed(f"cannot open {self.folder}: {exc}") from None
        if not is_dir:
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
        """The next image and its file name. NoFrameYet while a watched folder has nothing new (or a file is still being
        written), BadFrame for an unreadable or oversized image, SourceEnded at the end."""
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
