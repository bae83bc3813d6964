"""Cache MTD at the model size as uint8 arrays for fast CAE experiments (not used by the pipeline)."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

from edged.bundle import InputSpec
from edged.preprocess import prepare_uint8


def imread(path: Path, flags: int = cv2.IMREAD_COLOR) -> np.ndarray:
    """cv2.imread that raises, naming the file, where the image cannot be read."""
    image = cv2.imread(str(path), flags)
    if image is None:
        raise OSError(f"cannot read {path}")
    return image


def main(root: str = "/work/shared/datasets/mtd", size: int = 128, out: str = "/tmp/cae_exp/mtd128.npz") -> None:
    spec = InputSpec(width=size, height=size, channels=1, color_order="gray")
    base = Path(root)
    train = sorted((base / "train" / "good").iterdir())
    rng = np.random.default_rng(0)
    order = rng.permutation(len(train))
    n_hold = round(0.15 * len(train))
    hold_idx, fit_idx = set(order[:n_hold].tolist()), order[n_hold:]
    tr = np.stack([prepare_uint8(imread(train[i]), spec) for i in sorted(fit_idx)])
    ho = np.stack([prepare_uint8(imread(train[i]), spec) for i in sorted(hold_idx)])
    te: list[np.ndarray] = []
    lab: list[int] = []
    masks: list[np.ndarray] = []
    kinds: list[str] = []
    for d in sorted((base / "test").iterdir()):
        for f in sorted(d.iterdir()):
            te.append(prepare_uint8(imread(f), spec))
            lab.append(0 if d.name == "good" else 1)
            kinds.append(d.name)
            if d.name == "good":
                masks.append(np.zeros((size, size), np.uint8))
            else:
                m = imread(base / "ground_truth" / d.name / f"{f.stem}_mask.png", cv2.IMREAD_GRAYSCALE)
                masks.append((cv2.resize(m, (size, size), interpolation=cv2.INTER_NEAREST) > 127).astype(np.uint8))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, train=tr, hold=ho, test=np.stack(te), label=np.array(lab), mask=np.stack(masks),
                        kind=np.array(kinds))
    print(out, tr.shape, ho.shape, len(te))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(sys.argv[1])
    else:
        main()
