"""Defect regions: connected areas of the anomaly map over a pixel threshold, as frame-pixel boxes."""

from __future__ import annotations

import cv2
import numpy as np

from edged.frames import Region


def find_regions(amap: np.ndarray, map_threshold: float, frame_hw: tuple[int, int],
                 offset: tuple[int, int] = (0, 0), min_area: int = 16, max_regions: int = 32) -> list[Region]:
    """Boxes around map areas above `map_threshold`, scaled from map size to the frame's size.

    `offset` (x, y) places boxes in the full frame when a region of interest was cropped. Boxes are
    sorted by peak value, strongest first, and capped so a bad model cannot flood a message.
    """
    mask = (amap > map_threshold).astype(np.uint8)
    if not mask.any():
        return []
    n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
    mh, mw = amap.shape
    fh, fw = frame_hw
    sx, sy = fw / mw, fh / mh
    regions = []
    for label in range(1, n):
        x, y, w, h, area = (int(v) for v in stats[label])
        frame_area = round(area * sx * sy)
        if frame_area < min_area:
            continue
        peak = float(amap[labels == label].max())
        x0, y0 = int(np.floor(x * sx)), int(np.floor(y * sy))
        x1, y1 = min(fw, int(np.ceil((x + w) * sx))), min(fh, int(np.ceil((y + h) * sy)))
        regions.append(Region(x=x0 + offset[0], y=y0 + offset[1], w=x1 - x0, h=y1 - y0, area=frame_area,
                              peak=peak))
    regions.sort(key=lambda r: r.peak, reverse=True)
    return regions[:max_regions]
