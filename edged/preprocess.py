"""Frame -> model input, exactly as the bundle's manifest says.

`tools/` calls the same functions on training images, so the daemon sees what the model was trained
on: one implementation, no drift between training and production.
"""

from __future__ import annotations

import cv2
import numpy as np

from edged.bundle import InputSpec


class FrameError(ValueError):
    """A frame that cannot be inspected (empty, wrong dtype or channel count)."""


def to_uint8(image: np.ndarray, bit_depth: int = 16) -> np.ndarray:
    """8-bit pixels from an 8- or 16-bit image whose values use `bit_depth` bits (the manifest's).

    The one place 16-bit data becomes 8-bit, for training and the daemon alike: a 12-bit camera writes
    0..4095 into uint16, so keeping the top 8 of 16 bits would leave it nearly black; the top 8 of its
    `bit_depth` bits are kept instead (values above 2**bit_depth - 1 saturate).
    """
    if image.dtype == np.uint8:
        return image
    if image.dtype != np.uint16:
        raise FrameError(f"unsupported pixel type {image.dtype} (use 8- or 16-bit integer images)")
    shift = bit_depth - 8
    if shift >= 8:
        return (image >> 8).astype(np.uint8)
    return np.minimum(image >> shift, 255).astype(np.uint8)


def to_color_order(image: np.ndarray, color_order: str, bit_depth: int = 16) -> np.ndarray:
    """Convert an OpenCV image (gray, BGR or BGRA, uint8 or uint16) to the model's color order, HxW or HxWx3."""
    if image is None or not isinstance(image, np.ndarray) or image.size == 0:
        raise FrameError("empty frame")
    image = to_uint8(image, bit_depth)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        if color_order == "gray":
            return image
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB if color_order == "rgb" else cv2.COLOR_GRAY2BGR)
    if image.ndim != 3 or image.shape[2] not in (3, 4):
        raise FrameError(f"unsupported frame shape {image.shape}")
    if image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if color_order == "gray":
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if color_order == "rgb":
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return image


def resize(image: np.ndarray, width: int, height: int, method: str = "area") -> np.ndarray:
    """Area interpolation when shrinking (no aliasing of fine scratches), linear when enlarging.

    `method` is the bundle's `InputSpec.resize`. "area" is one INTER_AREA step: exact, but slow when the
    factor is not 2 (640x480 -> 128x128 is 5 x 3.75: OpenCV's general float path, 0.6-2 ms of CPU per
    frame). "halve_area" first halves the frame while it stays at least the model's size in both directions
    (each halving the exact, rounded mean of 2x2 pixels: OpenCV's vectorized path, about 0.06 ms at
    640x480), then shrinks the rest (under 2x) with INTER_AREA on the small image: every source pixel
    still counts with a weight close to one-step area's (a thin scratch keeps its contrast, nothing
    aliases), for about a third of the cost.
    """
    h, w = image.shape[:2]
    if (w, h) == (width, height):
        return image
    if w < width or h < height:
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_LINEAR)
    if method == "halve_area":
        while w % 2 == 0 and h % 2 == 0 and w // 2 >= width and h // 2 >= height:
            w, h = w // 2, h // 2
            image = cv2.resize(image, (w, h), interpolation=cv2.INTER_AREA)
        if (w, h) == (width, height):
            return image
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


NORM_MEAN, NORM_STD = 128.0, 40.0  # what `normalize: mean_std` maps every image's mean and spread to (grey levels)


def normalize_light(image: np.ndarray) -> np.ndarray:
    """Per-image brightness and contrast normalization (`InputSpec.normalize: mean_std`) of a uint8 image: one
    gain and offset for all channels (colors keep their balance), through a 256-entry table (cheap at model size).
    A flat image (spread under 1 grey level) is only shifted: its noise is not amplified into texture."""
    mean, std = cv2.meanStdDev(image.reshape(image.shape[0], -1))
    m, s = float(mean[0, 0]), float(std[0, 0])
    gain = NORM_STD / s if s >= 1.0 else 1.0
    lut = np.clip((np.arange(256, dtype=np.float32) - m) * gain + NORM_MEAN, 0, 255).round().astype(np.uint8)
    return cv2.LUT(image, lut)


def prepare_uint8(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The model's uint8 image (`_prepare_uint8`), normalized when the bundle says so (training and daemon alike)."""
    out = _prepare_uint8(image, spec)
    return normalize_light(out) if spec.normalize == "mean_std" else out


def _prepare_uint8(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """Color conversion and resize: the uint8 HxW(xC) image the model sees (also used for overlays).

    Channel swaps and copies (BGR->RGB, BGRA->BGR, gray->3 channels) commute exactly with resizing,
    which treats each channel alone, so they run on the small image: a 640x480 frame is converted
    after shrinking, not before. A conversion to gray (a rounded weighted sum) still runs first, so
    the pixels are the same as ever for every color order.
    """
    if (spec.color_order != "gray" and isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.size
            and (image.ndim == 2 or (image.ndim == 3 and image.shape[2] in (3, 4)))):
        return to_color_order(resize(image, spec.width, spec.height, spec.resize), spec.color_order)
    return resize(to_color_order(image, spec.color_order, spec.bit_depth), spec.width, spec.height, spec.resize)


def to_tensor(prepared: np.ndarray, spec: InputSpec, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 HxW(xC) -> float32 CxHxW scaled and normalized; writes into `out` when given."""
    chw = prepared[None, :, :] if prepared.ndim == 2 else prepared.transpose(2, 0, 1)
    if out is None:
        out = np.empty((spec.channels, spec.height, spec.width), dtype=np.float32)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(-1, 1, 1)
    np.multiply(chw, np.float32(spec.scale), out=out, casting="unsafe")
    if np.any(mean != 0) or np.any(std != 1):
        out -= mean
        out /= std
    return out

