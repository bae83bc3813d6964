"""Two hard test sets in the MVTec AD layout, made from what this machine has, to check that the training
defaults are not tuned to the magnetic tiles:

* ``stones``: a busy stone-like texture (random cells with their own shade, darker seams, grain), made
  fresh for every image so that no two parts share pixels (crops of one photograph would: a test crop
  overlapping a training crop is no new part, and out-of-fold scores of overlapping crops are
  optimistic). Brightness and contrast jitter by a few percent, as a lamp would. Defects are faint: a
  scratch (+-35 gray levels, 1-2 px), a patch of a real photo of grass (scikit-image's ``data.grass()``,
  shipped in its wheel: foreign material), a smudge (the area blurred), a small dark pit; masks exact.
* ``rail``: long narrow color parts (384 x 96 px, the synthetic line of `tools.synth` at a 4:1 aspect)
  with small low-contrast defects, to check that a long part keeps its aspect end to end.
* ``lamp``: other stones under light that differs by up to x2 between parts (gain 0.65-1.35, the brightest
  seams' neighbours clip at 255), as the tiles' light does: a set whose brightness is not steady, so that
  what the defaults do for such data (no normalization, light copies) is measured on more than the tiles.
* ``rail_lamp``: ``rail`` with each image under its own lamp (gain 0.65-1.35), long color parts whose light varies.

    python scripts/make_hard_sets.py /tmp/hard      # -> /tmp/hard/stones, rail, lamp, rail_lamp

Benchmark aid (docs/patchcore.md): the test suite makes its own small images.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tools import synth

CROP = 160
LAMP_GAINS = (0.65, 1.35)  # `lamp`: the stones under a lamp that differs by x2 between parts; the brightest clip


def _jitter(image: np.ndarray, rng: np.random.Generator, gains: tuple[float, float] = (0.95, 1.05)) -> np.ndarray:
    gain, offset = rng.uniform(*gains), rng.uniform(-6, 6)
    return np.clip(image.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)


def _defect(image: np.ndarray, kind: str, rng: np.random.Generator, foreign: np.ndarray,
            ) -> tuple[np.ndarray, np.ndarray]:
    out = image.astype(np.float32)
    h, w = image.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    cx, cy = int(rng.integers(w // 5, 4 * w // 5)), int(rng.integers(h // 5, 4 * h // 5))
    if kind == "scratch":
        angle, length = rng.uniform(0, np.pi), rng.uniform(0.25, 0.5) * w
        end = (int(cx + length * np.cos(angle)), int(cy + length * np.sin(angle)))
        cv2.line(mask, (cx, cy), end, 255, int(rng.integers(1, 3)))
        out[mask > 0] += 35.0 if rng.random() < 0.5 else -35.0
    elif kind == "foreign":
        r = int(rng.integers(10, 18))
        fy, fx = int(rng.integers(0, foreign.shape[0] - 2 * r)), int(rng.integers(0, foreign.shape[1] - 2 * r))
        cv2.circle(mask, (cx, cy), r, 255, -1)
        patch = np.zeros_like(out)
        y0, x0 = max(0, cy - r), max(0, cx - r)
        y1, x1 = min(h, cy + r), min(w, cx + r)
        patch[y0:y1, x0:x1] = foreign[fy:fy + (y1 - y0), fx:fx + (x1 - x0)]
        out[mask > 0] = patch[mask > 0]
    elif kind == "smudge":
        axes = (int(rng.integers(12, 24)), int(rng.integers(8, 16)))
        cv2.ellipse(mask, (cx, cy), axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
        blurred = cv2.GaussianBlur(out, (0, 0), 4.0)
        out[mask > 0] = blurred[mask > 0]
    else:  # pit
        r = int(rng.integers(3, 6))
        cv2.circle(mask, (cx, cy), r, 255, -1)
        out[mask > 0] *= 0.4
    return np.clip(out, 0, 255).astype(np.uint8), mask


def stones(rng: np.random.Generator, size: int = CROP, cells: int = 90) -> np.ndarray:
    """A gray stone-like texture: Voronoi cells shaded on their own, darker seams, fine grain."""
    centers = rng.uniform(-8, size + 8, (cells, 2)).astype(np.float32)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    d = (xs[..., None] - centers[:, 0]) ** 2 + (ys[..., None] - centers[:, 1]) ** 2
    order = np.argsort(d, axis=2)[..., :2]
    nearest = order[..., 0]
    d1 = np.sqrt(np.take_along_axis(d, order[..., :1], 2)[..., 0])
    d2 = np.sqrt(np.take_along_axis(d, order[..., 1:2], 2)[..., 0])
    shade = rng.uniform(90, 190, cells).astype(np.float32)[nearest]
    tilt = rng.normal(0, 0.8, (cells, 2)).astype(np.float32)
    shade += tilt[nearest, 0] * (xs - centers[nearest, 0]) + tilt[nearest, 1] * (ys - centers[nearest, 1])
    seam = np.clip((d2 - d1) / 3.0, 0, 1)
    image = shade * (0.45 + 0.55 * seam) + cv2.GaussianBlur(rng.normal(0, 6, (size, size)).astype(np.float32),
                                                           (0, 0), 0.8)
    return np.clip(image, 0, 255).astype(np.uint8)


def write_stones(root: Path, n_train: int = 200, n_good: int = 60, n_defect: int = 80, seed: int = 0,
                 gains: tuple[float, float] = (0.95, 1.05)) -> Path:
    from skimage import data

    foreign = data.grass()
    rng = np.random.default_rng(seed)
    (root / "train" / "good").mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        cv2.imwrite(str(root / "train" / "good" / f"{i:04d}.png"), _jitter(stones(rng), rng, gains))
    (root / "test" / "good").mkdir(parents=True, exist_ok=True)
    for i in range(n_good):
        cv2.imwrite(str(root / "test" / "good" / f"{i:04d}.png"), _jitter(stones(rng), rng, gains))
    kinds = ("scratch", "foreign", "smudge", "pit")
    for i in range(n_defect):
        kind = kinds[i % len(kinds)]
        image, mask = _defect(_jitter(stones(rng), rng, gains), kind, rng, foreign)
        for folder, arr, name in (("test", image, f"{i:04d}.png"), ("ground_truth", mask, f"{i:04d}_mask.png")):
            (root / folder / kind).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / folder / kind / name), arr)
    return root


def write_rail(root: Path, seed: int = 0) -> Path:
    return synth.write_dataset(root, n_train=120, n_test_good=40, n_test_defect=48, size=(384, 96), seed=seed)


def under_lamps(src: Path, dst: Path, gains: tuple[float, float] = LAMP_GAINS, seed: int = 2) -> Path:
    """A copy of the set `src` with each image under its own lamp (a seeded gain in `gains`, clipped at 255); the
    masks as they were. `rail_lamp`: the long color parts under light that varies as the tiles' does."""
    rng = np.random.default_rng(seed)
    for path in sorted(src.rglob("*.png")):
        out = dst / path.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise SystemExit(f"{path}: cannot be read")
        if path.relative_to(src).parts[0] != "ground_truth":
            image = np.clip(image.astype(np.float32) * rng.uniform(*gains), 0, 255).astype(np.uint8)
        cv2.imwrite(str(out), image)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    a = ap.parse_args()
    print(write_stones(a.out / "stones"))
    print(write_rail(a.out / "rail"))
    print(write_stones(a.out / "lamp", seed=1, gains=LAMP_GAINS))
    print(under_lamps(a.out / "rail", a.out / "rail_lamp"))


if __name__ == "__main__":
    main()
