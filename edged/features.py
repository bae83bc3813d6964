"""Hand-made image features for the `classic` method, computed with numpy/OpenCV only.

The daemon must not need scikit-image: this module reproduces the training code's features
(`tools/methods/classic/model.py`) and a test proves the two agree. Registry: name -> function.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Extractor = Callable[[np.ndarray], np.ndarray]
_REGISTRY: dict[str, Extractor] = {}


def _register(name: str) -> Callable[[Extractor], Extractor]:
    def deco(fn: Extractor) -> Extractor:
        _REGISTRY[name] = fn
        return fn
    return deco


def get(name: str) -> Extractor:
    """The extractor a features bundle names; KeyError for one this edged does not have."""
    return _REGISTRY[name]


# --- classic-v1: the reference design's texture/gradient/gray features ------------------------------------------

LBP_POINTS = 24
LBP_RADIUS = 3
LBP_BINS = LBP_POINTS + 2  # 'uniform' codes: 0..P for uniform patterns, P + 1 for all the others


def _lbp_offsets(points: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """Sampling offsets (rows, cols) exactly as scikit-image computes them (rounded to 5 decimals)."""
    angles = 2 * np.pi * np.arange(points, dtype=np.float64) / points
    return np.round(-radius * np.sin(angles), 5), np.round(radius * np.cos(angles), 5)


def lbp_uniform(gray: np.ndarray, points: int = LBP_POINTS, radius: float = LBP_RADIUS) -> np.ndarray:
    """Rotation-invariant uniform LBP codes (HxW int), equal to ``skimage.feature.local_binary_pattern``.

    Same arithmetic in the same order as scikit-image's Cython loop (bilinear sampling, zeros outside
    the image, ``neighbour - centre >= 0``, 0-1 changes counted without wrap-around), vectorized per
    neighbour, so the codes match bit for bit rather than approximately.
    """
    image = np.ascontiguousarray(gray, dtype=np.float64)
    rows, cols = image.shape
    pad = int(np.ceil(radius)) + 1
    padded = np.zeros((rows + 2 * pad, cols + 2 * pad), np.float64)
    padded[pad:pad + rows, pad:pad + cols] = image
    rr = np.arange(rows, dtype=np.float64)[:, None]
    cc = np.arange(cols, dtype=np.float64)[None, :]
    rp, cp = _lbp_offsets(points, radius)
    bits = np.empty((points, rows, cols), np.int8)
    for i in range(points):
        r = rr + rp[i]
        c = cc + cp[i]
        minr, minc = np.floor(r), np.floor(c)
        maxr, maxc = np.ceil(r), np.ceil(c)
        dr, dc = r - minr, c - minc
        # the offsets are the same for every pixel, so each corner is one shifted view of the padded image
        r0, r1 = int(minr[0, 0]) + pad, int(maxr[0, 0]) + pad
        c0, c1 = int(minc[0, 0]) + pad, int(maxc[0, 0]) + pad
        tl = padded[r0:r0 + rows, c0:c0 + cols]
        tr = padded[r0:r0 + rows, c1:c1 + cols]
        bl = padded[r1:r1 + rows, c0:c0 + cols]
        br = padded[r1:r1 + rows, c1:c1 + cols]
        top = (1 - dc) * tl + dc * tr
        bottom = (1 - dc) * bl + dc * br
        texture = (1 - dr) * top + dr * bottom
        bits[i] = (texture - image) >= 0
    changes = np.sum(bits[:-1] != bits[1:], axis=0)
    ones = bits.sum(axis=0, dtype=np.int64)
    return np.where(changes <= 2, ones, points + 1)


@_register("classic-v1")
def classic_v1(prepared: np.ndarray) -> np.ndarray:
    """33 float32 features of a gray uint8 image: LBP histogram (P=24, R=3, uniform, 26 bins, fractions),
    Sobel gradient magnitude (mean, std, 25th, 75th percentile), gray level (mean, std, median)."""
    import cv2

    gray = prepared if prepared.ndim == 2 else cv2.cvtColor(prepared, cv2.COLOR_BGR2GRAY)
    codes = lbp_uniform(gray)
    hist = np.bincount(codes.ravel(), minlength=LBP_BINS)[:LBP_BINS] / codes.size
    g = gray.astype(np.float64)
    gx = cv2.Sobel(g, cv2.CV_64F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT_101)
    gy = cv2.Sobel(g, cv2.CV_64F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT_101)
    mag = np.hypot(gx, gy)
    p25, p75 = np.percentile(mag, [25, 75])
    stats = [mag.mean(), mag.std(), p25, p75, g.mean(), g.std(), np.median(g)]
    return np.concatenate([hist, np.asarray(stats)]).astype(np.float32)
