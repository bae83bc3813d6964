"""The synthetic production line: deterministic, visible defects, MVTec layout, readable video."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from devkit.support import read_image
from tools import synth


def test_make_part_is_deterministic_and_shaped() -> None:
    a, ma = synth.make_part(np.random.default_rng(3), (96, 64), "scratch")
    b, mb = synth.make_part(np.random.default_rng(3), (96, 64), "scratch")
    assert a.shape == (64, 96, 3) and a.dtype == np.uint8 and ma.shape == (64, 96)
    assert np.array_equal(a, b) and np.array_equal(ma, mb)
    gray, _ = synth.make_part(np.random.default_rng(3), (64, 64), None, color=False)
    assert gray.shape == (64, 64)


@pytest.mark.parametrize("defect", synth.DEFECTS)
def test_defects_are_visible_and_masked(defect: str) -> None:
    for seed in range(5):
        image, mask = synth.make_part(np.random.default_rng(seed), (128, 128), defect)
        _, good_mask = synth.make_part(np.random.default_rng(seed), (128, 128), None)
        assert not good_mask.any()
        assert set(np.unique(mask)) == {0, 255}
        gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY).astype(float)
        ring = (cv2.dilate(mask, np.ones((7, 7), np.uint8)) > 0) & (cv2.dilate(mask, np.ones((3, 3), np.uint8)) == 0)
        contrast = abs(gray[mask > 0].mean() - gray[ring].mean())
        assert contrast > 25, f"{defect} seed {seed}: contrast {contrast:.1f}"
        assert 0 < (mask > 0).mean() < 0.05


def test_write_dataset_layout(tmp_path: Path) -> None:
    root = synth.write_dataset(tmp_path / "ds", n_train=5, n_test_good=2, n_test_defect=4, size=(64, 64))
    assert len(list((root / "train" / "good").glob("*.png"))) == 5
    assert len(list((root / "test" / "good").glob("*.png"))) == 2
    defect_images = sorted(p for d in synth.DEFECTS for p in (root / "test" / d).glob("*.png"))
    assert len(defect_images) == 4
    for p in defect_images:
        mask = cv2.imread(str(root / "ground_truth" / p.parent.name / f"{p.stem}_mask.png"), cv2.IMREAD_GRAYSCALE)
        assert mask is not None and mask.max() == 255


def test_write_video_and_folder(tmp_path: Path) -> None:
    labels = synth.write_video(tmp_path / "line.avi", 6, [1, 4], size=(80, 60), seed=1)
    assert labels == [False, True, False, False, True, False]
    cap = cv2.VideoCapture(str(tmp_path / "line.avi"))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert len(frames) == 6 and frames[0].shape == (60, 80, 3)
    labels = synth.write_folder(tmp_path / "frames", 3, [2], size=(80, 60), seed=1)
    assert labels == [False, False, True]
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [
        "frame_00000.png", "frame_00001.png", "frame_00002.png"]
    # the PNG frame matches the (lossy) video frame closely: same content
    png = read_image(tmp_path / "frames" / "frame_00000.png")
    assert np.abs(png.astype(int) - frames[0].astype(int)).mean() < 6
