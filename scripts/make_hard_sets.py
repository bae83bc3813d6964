"""Two hard test sets in the MVTec AD layout, made from what this machine has, to check that the training
defaults are not tuned to the magnetic tiles:

* ``gravel``: crops of a real photograph of gravel (scikit-image's ``data.gravel()``, shipped in its
  wheel): a busy natural texture where defects are faint. Training and good test crops come from
  disjoint parts of the photo; brightness and contrast jitter by a few percent, as a lamp would.
  Defects: a faint scratch (+-18 gray levels, 1-2 px), a patch of another real texture (``data.grass()``,
  foreign material), a smudge (the area blurred), a small dark pit; masks are exact.
* ``rail``: long narrow color parts (384 x 96 px, the synthetic line of `tools.synth` at a 4:1 aspect)
  with small low-contrast defects, to check that a long part keeps its aspect end to end.

    python scripts/make_hard_sets.py /tmp/hard      # -> /tmp/hard/gravel, /tmp/hard/rail

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


def _jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    gain, offset = rng.uniform(0.95, 1.05), rng.uniform(-6, 6)
    return np.clip(image.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)


def _crop(photo: np.ndarray, rng: np.random.Generator, rows: tuple[int, int]) -> np.ndarray:
    y = int(rng.integers(rows[0], rows[1] - CROP))
    x = int(rng.integers(0, photo.shape[1] - CROP))
    crop = photo[y:y + CROP, x:x + CROP]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop)


def _defect(image: np.ndarray, kind: str, rng: np.random.Generator, foreign: np.ndarray,
            ) -> tuple[np.ndarray, np.ndarray]:
    out = image.astype(np.float32)
    mask = np.zeros(image.shape[:2], np.uint8)
    h, w = mask.shape
    cx, cy = int(rng.integers(w // 5, 4 * w // 5)), int(rng.integers(h // 5, 4 * h // 5))
    if kind == "scratch":
        angle, length = rng.uniform(0, np.pi), rng.uniform(0.25, 0.5) * w
        end = (int(cx + length * np.cos(angle)), int(cy + length * np.sin(angle)))
        cv2.line(mask, (cx, cy), end, 255, int(rng.integers(1, 3)))
        out[mask > 0] += 18.0 if rng.random() < 0.5 else -18.0
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
        blurred = cv2.GaussianBlur(out, (0, 0), 3.0)
        out[mask > 0] = blurred[mask > 0]
    else:  # pit
        r = int(rng.integers(3, 6))
        cv2.circle(mask, (cx, cy), r, 255, -1)
        out[mask > 0] *= 0.55
    return np.clip(out, 0, 255).astype(np.uint8), mask


def write_gravel(root: Path, n_train: int = 200, n_good: int = 60, n_defect: int = 80, seed: int = 0) -> Path:
    from skimage import data

    photo, foreign = data.gravel(), data.grass()
    rng = np.random.default_rng(seed)
    split = int(photo.shape[0] * 0.6)  # train crops above, test crops below: no shared pixels
    (root / "train" / "good").mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        cv2.imwrite(str(root / "train" / "good" / f"{i:04d}.png"), _jitter(_crop(photo, rng, (0, split)), rng))
    (root / "test" / "good").mkdir(parents=True, exist_ok=True)
    for i in range(n_good):
        cv2.imwrite(str(root / "test" / "good" / f"{i:04d}.png"),
                    _jitter(_crop(photo, rng, (split, photo.shape[0])), rng))
    kinds = ("scratch", "foreign", "smudge", "pit")
    for i in range(n_defect):
        kind = kinds[i % len(kinds)]
        image, mask = _defect(_jitter(_crop(photo, rng, (split, photo.shape[0])), rng), kind, rng, foreign)
        for folder, arr, name in (("test", image, f"{i:04d}.png"), ("ground_truth", mask, f"{i:04d}_mask.png")):
            (root / folder / kind).mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(root / folder / kind / name), arr)
    return root


def write_rail(root: Path, seed: int = 0) -> Path:
    return synth.write_dataset(root, n_train=120, n_test_good=40, n_test_defect=48, size=(384, 96), seed=seed)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    a = ap.parse_args()
    print(write_gravel(a.out / "gravel"))
    print(write_rail(a.out / "rail"))


if __name__ == "__main__":
    main()
