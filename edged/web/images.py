"""JPEGs for the web view, encoded on demand in the web threads, never on the pipeline's.

The live frame of a camera is encoded at most `live_fps` times a second whatever the number of viewers:
the first request after the interval encodes (under the camera's lock), the others get the cached bytes.
Stored images are read only from inside the image folder (a path from the database is still checked:
the folder is the boundary, not the row).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edged.archive import draw_boxes, map_path, overlay_from_map, render_overlay
from edged.frames import Frame, Verdict
from edged.preprocess import to_uint8

JPEG_QUALITY = 80
THUMB_WIDTH = 160


@dataclass(frozen=True, slots=True)
class Encoded:
    """One encoded image and what it shows."""

    data: bytes
    seq: int  # the frame's sequence number (-1: none)
    encoded_at: float  # monotonic


def encode_jpeg(image: np.ndarray, width: int | None = None) -> bytes:
    """BGR or gray (8 or 16 bit) -> JPEG bytes, scaled down to `width` when given."""
    frame = to_uint8(image)
    if width is not None and frame.shape[1] > width:
        h = max(1, round(frame.shape[0] * width / frame.shape[1]))
        frame = cv2.resize(frame, (width, h), interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError("the frame cannot be encoded as JPEG")
    return data.tobytes()


def overlay_of(verdict: Verdict) -> np.ndarray:
    """The verdict's frame with its anomaly map and regions (the frame itself when it has no map)."""
    if verdict.anomaly_map is None:
        return boxes_on(verdict.frame.image, [r.to_dict() for r in verdict.regions])
    return render_overlay(verdict.frame.image, verdict.anomaly_map, verdict.regions)


def boxes_on(image: np.ndarray, regions: list[dict[str, float | int]]) -> np.ndarray:
    """A copy of the frame with the regions' boxes drawn (a stored frame whose map was not saved)."""
    out = to_uint8(image)
    out = cv2.cvtColor(out, cv2.COLOR_GRAY2BGR) if out.ndim == 2 else out[:, :, :3].copy()
    return draw_boxes(out, _boxes(regions))


def stored_overlay(frame_path: Path, frame: np.ndarray, regions: list[dict[str, float | int]]) -> np.ndarray:
    """A stored frame's overlay, drawn now: its saved anomaly map as a heat map and its regions' boxes. An
    overlay an older edged rendered into that file (`images.format: png`: colour, the frame's size) is shown
    as it is; the boxes alone when there is no map or it cannot be read (deleted by the quota, spoiled)."""
    saved = read_frame(map_path(frame_path))
    if saved is not None and saved.ndim == 2 and saved.dtype == np.uint8:
        return overlay_from_map(frame, saved, _boxes(regions))
    if saved is not None and saved.ndim == 3 and saved.shape[:2] == frame.shape[:2]:
        return saved
    return boxes_on(frame, regions)


def _boxes(regions: list[dict[str, float | int]]) -> list[tuple[int, int, int, int]]:
    """(x, y, w, h) of each region as the database holds it; an entry that is not one is left out."""
    out = []
    for r in regions:
        try:
            out.append((int(r["x"]), int(r["y"]), int(r["w"]), int(r["h"])))
        except (KeyError, TypeError, ValueError, OverflowError):
            continue
    return out


def colour_scale(width: int = 256, height: int = 14) -> bytes:
    """The heat map's colour scale (low on the left, high on the right) as a JPEG, for the part page."""
    ramp = np.tile(np.linspace(0, 255, width).astype(np.uint8), (height, 1))
    return encode_jpeg(cv2.applyColorMap(ramp, cv2.COLORMAP_JET))


class LiveEncoder:
    """Per camera, the latest captured frame (or the latest reject's overlay) as JPEG, re-encoded at most `fps` times a
    second."""

    def __init__(self, fps: float) -> None:
        self.interval = 1.0 / fps
        self._cache: dict[tuple[str, bool], Encoded] = {}
        self._locks: dict[tuple[str, bool], threading.Lock] = {}
        self._guard = threading.Lock()
        self.encodes = 0  # how many encodes the web threads did (bench, tests)

    def get(self, camera: str, frame: Frame | None, verdict: Verdict | None, overlay: bool) -> Encoded | None:
        """The camera's current JPEG: `frame` as captured, or with `overlay` the reject `verdict` drawn; None when
        there is none yet."""
        if overlay and verdict is not None:
            frame = verdict.frame
        if frame is None or (overlay and verdict is None):
            return None
        key = (camera, overlay)
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one encode per interval per camera, however many browsers ask
            cached = self._cache.get(key)
            now = time.monotonic()
            fresh = cached is not None and (cached.seq == frame.seq or now - cached.encoded_at < self.interval)
            if cached is not None and fresh:
                return cached
            image = overlay_of(verdict) if overlay and verdict is not None else frame.image
            encoded = Encoded(encode_jpeg(image), frame.seq, now)
            self.encodes += 1
            self._cache[key] = encoded
            return encoded


def stored_image(folder: Path, path: str | None) -> Path | None:
    """The stored file of a row when it exists inside the image folder; None otherwise (gone, or outside)."""
    if not path:
        return None
    try:
        root = folder.resolve()
        candidate = Path(path).resolve()
    except (OSError, ValueError):
        return None
    if not candidate.is_relative_to(root) or not candidate.is_file():
        return None
    return candidate


def legacy_overlay_file(image: Path) -> Path | None:
    """An overlay JPEG an older edged rendered beside a stored frame (`<name>_map.jpg`), when there is one."""
    candidate = image.with_name(image.stem + "_map" + image.suffix)
    return candidate if candidate.suffix.lower() in (".jpg", ".jpeg") and candidate.is_file() else None


def read_frame(path: Path) -> np.ndarray | None:
    """A stored frame as pixels; None when it cannot be read (deleted by the quota meanwhile, truncated)."""
    try:
        data = np.fromfile(str(path), dtype=np.uint8)
    except OSError:  # missing, or deleted between the row's read and this one
        return None
    if data.size == 0:
        return None
    image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    return image if isinstance(image, np.ndarray) else None
