"""How a camera may deliver a part differently from the stored image: light, focus, noise, encoding, cover.

One place for the image changes that training applies (light copies, calibration under the light corners or
through JPEG, in `tools.fit`) and that evaluation judges a bundle under (`tools.evaluate --robustness`), so a
bundle calibrated for a change is measured under exactly that change. Every function takes and returns a
uint8 image (grey or BGR) of the same shape; the random ones take their generator, so callers seed them.
"""

from __future__ import annotations

import cv2
import numpy as np

OCCLUDER_LEVEL = 20  # a dark glove, cable or part edge entering the field of view


def light_lut(gain: float, gamma: float = 1.0) -> np.ndarray:
    """The 256-entry table of a lamp's change: ``255 * gain * (v / 255) ** gamma``, clipped at 255 as a sensor
    saturates (a brighter exposure loses the bright regions' detail; no normalization can bring it back)."""
    levels = np.arange(256, dtype=np.float64) / 255.0
    return np.clip(255.0 * gain * levels ** gamma, 0, 255).round().astype(np.uint8)


def under_light(image: np.ndarray, gain: float, gamma: float = 1.0) -> np.ndarray:
    """The image under light changed by `gain` and `gamma` (`light_lut`)."""
    return cv2.LUT(image, light_lut(gain, gamma))


def through_jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    """The image as a camera's or a stream's lossy encoder at `quality` would deliver it (MJPG; H.264 behaves
    alike: blocks, ringing); the image itself if OpenCV cannot encode it."""
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    decoded = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED) if ok else None
    return image if decoded is None else decoded


def defocused(image: np.ndarray) -> np.ndarray:
    """A slightly defocused lens: a Gaussian blur of about 1.5 px at 256 px, in proportion to the image."""
    sigma = max(0.8, 0.006 * min(image.shape[:2]))
    return cv2.GaussianBlur(image, (0, 0), sigma)


def with_sensor_noise(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian sensor noise of `sigma` grey levels (a high gain in low light)."""
    noisy = image.astype(np.float32) + rng.normal(0.0, sigma, image.shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def partly_covered(image: np.ndarray, rng: np.random.Generator, low: float = 0.2, high: float = 0.35) -> np.ndarray:
    """A dark rectangle of `low`-`high` of each side, entering from one border (a glove, a cable)."""
    h, w = image.shape[:2]
    ow, oh = int(w * rng.uniform(low, high)), int(h * rng.uniform(low, high))
    side = int(rng.integers(4))
    x = 0 if side == 0 else w - ow if side == 1 else int(rng.integers(0, w - ow + 1))
    y = 0 if side == 2 else h - oh if side == 3 else int(rng.integers(0, h - oh + 1))
    out = image.copy()
    out[y:y + oh, x:x + ow] = OCCLUDER_LEVEL
    return out
