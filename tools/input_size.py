"""The model's input size chosen from the training images: their aspect kept, small images not enlarged.

Why: a fixed square squashes a long narrow part (a 4:1 rail becomes a blur along its length) and
enlarges small photos for no new detail at several times the cost. The rule: keep the method's pixel
budget (its `default_size` squared), take the shape of the median training image, never go above that
image's own size, and round each side to the backbone's grid (16 px). `--size N` or `--size WxH` still
fixes it by hand. The manifest records the result and the daemon's preprocessing follows it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np

from tools.dataset import Record, sample_images

MULTIPLE = 16  # the stride of the feature grid: each side a whole number of patches
MAX_ASPECT = 4.0  # longer than 4:1, a part is better cut into several views
SAMPLE = 32  # images decoded to learn the typical shape


def parse_size(text: str) -> tuple[int, int] | None:
    """'auto' -> None; 'N' -> (N, N); 'WxH' -> (W, H). ValueError with what was expected."""
    t = text.strip().lower()
    if t == "auto":
        return None
    m = re.fullmatch(r"(\d{1,5})(?:x(\d{1,5}))?", t)
    if not m:
        raise ValueError(f"--size {text!r}: expected auto, a number of pixels (224) or WIDTHxHEIGHT (384x128)")
    w = int(m.group(1))
    return (w, int(m.group(2)) if m.group(2) else w)


def sample_shapes(records: Sequence[Record], sample: int = SAMPLE, seed: int = 0) -> list[tuple[int, int]]:
    """(width, height) of a seeded sample of the records' images as stored (unreadable ones skipped)."""
    return [(int(image.shape[1]), int(image.shape[0])) for image in sample_images(records, sample, seed)]


def _round(side: float, low: int, high: int, cap: float | None = None) -> int:
    """`side` to the nearest multiple of 16 within [low, high], but not above `cap` (no enlarging)."""
    out = MULTIPLE * round(side / MULTIPLE)
    if cap is not None and out > cap:
        out = MULTIPLE * math.floor(cap / MULTIPLE)
    return int(min(high, max(low, out)))


def choose(shapes: Sequence[tuple[int, int]], base: int, low: int, high: int, non_square: bool = True,
           ) -> tuple[int, int]:
    """(width, height) for a model of about `base` x `base` pixels on images of these (width, height)s.

    The median image's aspect (clamped to `MAX_ASPECT`) is kept when the method takes non-square input;
    the result is never larger than the median image in either side (no upsampling), and each side is a
    multiple of 16 within [low, high].
    """
    if not shapes:
        return base, base
    mw = float(np.median([s[0] for s in shapes]))
    mh = float(np.median([s[1] for s in shapes]))
    aspect = min(MAX_ASPECT, max(1 / MAX_ASPECT, mw / mh)) if non_square else 1.0
    w, h = base * math.sqrt(aspect), base / math.sqrt(aspect)
    shrink = min(1.0, mw / w, mh / h) if non_square else min(1.0, min(mw, mh) / base)
    w, h = w * shrink, h * shrink
    if not non_square:
        side = _round(min(w, h), low, high, min(mw, mh))
        return side, side
    return _round(w, low, high, mw), _round(h, low, high, mh)
