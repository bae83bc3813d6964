"""A synthetic production line: textured parts, some with defects, for the demo and every test.

numpy + OpenCV only (no torch), deterministic by seed, so tests never depend on real data. A part is a
rounded rectangle (or a disc) with a fine machined texture on a darker background, with a few pixels of
position jitter and a few percent of brightness jitter, as a camera over a conveyor would see it.
Defects are drawn clearly (dark/bright scratch, dark spot, jagged crack) so that a small model trained
for seconds separates them, and their ground-truth mask is exact.

Sizes are ``(width, height)``, OpenCV's order, everywhere in this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

DEFECTS = ("scratch", "spot", "crack")
SHAPES = ("rounded_rect", "disc")

# A light steel-blue part on a dark gray belt, in BGR. Color on purpose: gray/color handling is tested.
_PART_BGR = np.array([178.0, 168.0, 150.0])
_BACKGROUND_BGR = np.array([52.0, 58.0, 60.0])


def _part_mask(size: tuple[int, int], shape: str, center: tuple[float, float], half: tuple[float, float],
               ) -> np.ndarray:
    """uint8 mask (255 inside) of the part outline."""
    w, h = size
    mask = np.zeros((h, w), np.uint8)
    cx, cy = center
    if shape == "disc":
        r = min(half)
        cv2.circle(mask, (round(cx), round(cy)), round(r), 255, -1, lineType=cv2.LINE_AA)
        return mask
    if shape != "rounded_rect":
        raise ValueError(f"shape must be one of {SHAPES}, not {shape!r}")
    hx, hy = half
    radius = max(2, round(0.25 * min(hx, hy)))
    x0, y0, x1, y1 = round(cx - hx), round(cy - hy), round(cx + hx), round(cy + hy)
    cv2.rectangle(mask, (x0 + radius, y0), (x1 - radius, y1), 255, -1)
    cv2.rectangle(mask, (x0, y0 + radius), (x1, y1 - radius), 255, -1)
    for px, py in ((x0 + radius, y0 + radius), (x1 - radius, y0 + radius), (x0 + radius, y1 - radius),
                   (x1 - radius, y1 - radius)):
        cv2.circle(mask, (px, py), radius, 255, -1, lineType=cv2.LINE_AA)
    return mask


def _texture(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Fine grain plus faint parallel machining marks, zero-mean float32 HxW (a few gray levels)."""
    grain = cv2.GaussianBlur(rng.normal(0.0, 1.0, (h, w)).astype(np.float32), (0, 0), 0.7)
    ys = np.arange(h, dtype=np.float32)[:, None]
    phase = rng.uniform(0, 2 * np.pi)
    marks = np.sin(ys * 2 * np.pi / 3.5 + phase) * np.ones((1, w), np.float32)
    return 5.0 * grain + 2.0 * marks


def _point_in(rng: np.random.Generator, inside: np.ndarray, margin: int) -> tuple[int, int]:
    """A random pixel at least `margin` pixels inside the part."""
    k = max(1, 2 * margin + 1)
    core = cv2.erode(inside, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    ys, xs = np.nonzero(core)
    if len(xs) == 0:
        ys, xs = np.nonzero(inside)
    i = int(rng.integers(len(xs)))
    return int(xs[i]), int(ys[i])


def _draw_defect(rng: np.random.Generator, defect: str, part_width: float, inside: np.ndarray,
                 ) -> tuple[np.ndarray, float]:
    """The defect's mask (uint8, 255 on defect pixels) and its intensity offset in gray levels."""
    h, w = inside.shape
    mask = np.zeros((h, w), np.uint8)
    if defect == "scratch":
        length = rng.uniform(0.15, 0.40) * part_width
        cx, cy = _point_in(rng, inside, int(length / 2) + 2)
        angle = rng.uniform(0, np.pi)
        dx, dy = 0.5 * length * np.cos(angle), 0.5 * length * np.sin(angle)
        thickness = 1 if part_width < 80 else 2
        cv2.line(mask, (round(cx - dx), round(cy - dy)), (round(cx + dx), round(cy + dy)), 255, thickness)
        offset = -70.0 if rng.random() < 0.6 else 60.0  # mostly dark grooves, sometimes bright burnish
    elif defect == "spot":
        diameter = rng.uniform(0.04, 0.10) * part_width
        rx = max(1.5, diameter / 2 * rng.uniform(0.8, 1.2))
        ry = max(1.5, diameter / 2 * rng.uniform(0.8, 1.2))
        cx, cy = _point_in(rng, inside, int(max(rx, ry)) + 2)
        cv2.ellipse(mask, (cx, cy), (round(rx), round(ry)), rng.uniform(0, 180), 0, 360, 255, -1)
        offset = -85.0
    elif defect == "crack":
        length = rng.uniform(0.25, 0.45) * part_width
        cx, cy = _point_in(rng, inside, int(length / 2) + 2)
        angle = rng.uniform(0, np.pi)
        n = int(rng.integers(4, 8))
        t = np.linspace(-0.5, 0.5, n + 1) * length
        jitter = rng.normal(0.0, 0.08 * length, n + 1)
        jitter[0] = jitter[-1] = 0.0
        xs = cx + t * np.cos(angle) - jitter * np.sin(angle)
        ys = cy + t * np.sin(angle) + jitter * np.cos(angle)
        pts = np.stack([xs, ys], axis=1).round().astype(np.int32)
        cv2.polylines(mask, [pts], False, 255, 1)
        offset = -90.0
    else:
        raise ValueError(f"defect must be one of {DEFECTS} or None, not {defect!r}")
    mask &= inside  # a defect lies on the part, never on the belt
    return mask, offset


def make_part(rng: np.random.Generator, size: tuple[int, int] = (128, 128), defect: str | None = None,
              color: bool = True, shape: str = "rounded_rect") -> tuple[np.ndarray, np.ndarray]:
    """One camera image of a part and its defect mask.

    Returns ``(image, mask)``: image BGR uint8 HxWx3 (HxW gray when ``color`` is False), mask uint8 HxW
    with 255 on defect pixels (all zero for a good part). ``size`` is (width, height).
    """
    w, h = size
    jitter = max(1.0, 0.03 * min(w, h))  # a few pixels of conveyor position jitter
    center = (w / 2 + rng.uniform(-jitter, jitter), h / 2 + rng.uniform(-jitter, jitter))
    half = (0.36 * w, 0.32 * h) if shape == "rounded_rect" else (0.36 * min(w, h), 0.36 * min(w, h))
    inside = _part_mask(size, shape, center, half)
    alpha = cv2.GaussianBlur(inside.astype(np.float32) / 255.0, (0, 0), 0.8)[..., None]
    gain = rng.uniform(0.95, 1.05)  # illumination drift
    # Part: base color with a gentle lighting gradient and the machined texture.
    xs = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    ys = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    shade = 1.0 + 0.06 * xs - 0.04 * ys
    part = _PART_BGR[None, None, :] * shade[..., None] + _texture(rng, h, w)[..., None]
    belt = _BACKGROUND_BGR[None, None, :] + 3.0 * rng.normal(0.0, 1.0, (h, w, 1))
    image = alpha * part + (1.0 - alpha) * belt
    mask = np.zeros((h, w), np.uint8)
    if defect is not None:
        part_width = 2 * half[0]
        mask, offset = _draw_defect(rng, defect, part_width, inside)
        soft = cv2.GaussianBlur(mask.astype(np.float32) / 255.0, (0, 0), 0.6)
        soft = np.maximum(soft, mask.astype(np.float32) / 255.0)[..., None]
        image = image + offset * soft
    image = np.clip(image * gain, 0, 255).astype(np.uint8)
    if not color:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    return image, mask


def _defect_cycle(i: int) -> str:
    return DEFECTS[i % len(DEFECTS)]


def write_dataset(root: Path, n_train: int = 40, n_test_good: int = 10, n_test_defect: int = 10,
                  size: tuple[int, int] = (128, 128), seed: int = 0, color: bool = True) -> Path:
    """A dataset in the MVTec AD layout (PNG): train/good, test/good, test/<defect>, ground_truth masks.

    Defective test images cycle through the defect types. Returns ``root``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "train" / "good").mkdir(parents=True, exist_ok=True)
    (root / "test" / "good").mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        image, _ = make_part(rng, size, None, color)
        cv2.imwrite(str(root / "train" / "good" / f"{i:03d}.png"), image)
    for i in range(n_test_good):
        image, _ = make_part(rng, size, None, color)
        cv2.imwrite(str(root / "test" / "good" / f"{i:03d}.png"), image)
    counts = dict.fromkeys(DEFECTS, 0)
    for i in range(n_test_defect):
        defect = _defect_cycle(i)
        image, mask = make_part(rng, size, defect, color)
        name = f"{counts[defect]:03d}"
        counts[defect] += 1
        (root / "test" / defect).mkdir(parents=True, exist_ok=True)
        (root / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / "test" / defect / f"{name}.png"), image)
        cv2.imwrite(str(root / "ground_truth" / defect / f"{name}_mask.png"), mask)
    return root


def _frames(n_frames: int, defective: Iterable[int], size: tuple[int, int], seed: int, color: bool = True,
            ) -> Iterator[tuple[np.ndarray, bool]]:
    bad = set(defective)
    for i in range(n_frames):
        rng = np.random.default_rng([seed, i])  # frame i is the same whatever n_frames is
        defect = _defect_cycle(i) if i in bad else None
        image, _ = make_part(rng, size, defect, color)
        yield image, i in bad


def write_video(path: Path, n_frames: int, defective: Iterable[int], size: tuple[int, int] = (160, 120),
                fps: float = 30, seed: int = 0) -> list[bool]:
    """An MJPG .avi where frame i shows a part, defective when i is in ``defective``. Returns the labels."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*"MJPG"), float(fps), tuple(size))
    if not writer.isOpened():
        raise OSError(f"OpenCV cannot write an MJPG video to {path}")
    labels = []
    try:
        for image, bad in _frames(n_frames, defective, size, seed):
            writer.write(image)
            labels.append(bad)
    finally:
        writer.release()
    return labels


def write_folder(path: Path, n: int, defective: Iterable[int], size: tuple[int, int] = (160, 120), seed: int = 0,
                 color: bool = True) -> list[bool]:
    """PNG frames ``frame_00000.png``... with the same content as `write_video`. Returns the labels."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    labels = []
    for i, (image, bad) in enumerate(_frames(n, defective, size, seed, color)):
        cv2.imwrite(str(path / f"frame_{i:05d}.png"), image)
        labels.append(bad)
    return labels
