"""Dataset loader: MVTec layout and plain folders, unreadable files skipped, mixed sizes and channels."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from tools import synth
from tools.dataset import (
    DatasetError,
    file_list_sha256,
    holdout_split,
    load_dataset,
    load_images,
    read_mask,
)


def test_mvtec_layout(tmp_path: Path) -> None:
    root = synth.write_dataset(tmp_path / "d", n_train=6, n_test_good=2, n_test_defect=6, size=(48, 40))
    ds = load_dataset(root)
    assert ds.layout == "mvtec" and len(ds.train) == 6 and all(r.is_good for r in ds.train)
    assert ds.defect_types == sorted(synth.DEFECTS)
    assert sum(r.is_good for r in ds.test) == 2
    for r in ds.test:
        assert (r.mask is None) == r.is_good
        if r.mask is not None:
            assert r.mask.name == f"{r.path.stem}_mask.png" and r.mask.parent.name == r.label
    assert "train/good 6" in ds.describe()
    mask = read_mask(ds.test[-1].mask, (20, 24))  # resized to another shape, still binary
    assert mask.shape == (20, 24) and mask.dtype == bool and mask.any()
    assert not read_mask(None, (5, 5)).any()


def test_plain_folder_recursive_mixed_images_and_unreadable(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rng = np.random.default_rng(0)
    (tmp_path / "a" / "b").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "a" / "color.png"), synth.make_part(rng, (50, 30))[0])
    cv2.imwrite(str(tmp_path / "a" / "b" / "gray.jpg"), synth.make_part(rng, (64, 64), color=False)[0])
    cv2.imwrite(str(tmp_path / "wide.bmp"), synth.make_part(rng, (120, 20))[0])
    cv2.imwrite(str(tmp_path / "deep16.png"), (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / ".hidden").mkdir()
    cv2.imwrite(str(tmp_path / ".hidden" / "x.png"), np.zeros((8, 8), np.uint8))
    ds = load_dataset(tmp_path)
    assert ds.layout == "folder" and not ds.test
    assert len(ds.train) == 6  # 4 images + 2 unreadable ones with image extensions; no .txt, no hidden
    with caplog.at_level(logging.WARNING):
        images, kept = load_images(ds.train)
    assert len(images) == len(kept) == 4
    assert "broken.png" in caplog.text and "empty.jpg" in caplog.text
    shapes = sorted(im.shape for im in images)
    assert (64, 64) in shapes and (30, 50, 3) in shapes and (20, 120, 3) in shapes
    assert any(im.dtype == np.uint16 for im in images)


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such folder"):
        load_dataset(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no image"):
        load_dataset(tmp_path / "empty")
    (tmp_path / "f.png").write_bytes(b"x")
    with pytest.raises(DatasetError, match="is a file"):
        load_dataset(tmp_path / "f.png")


def test_holdout_split_is_seeded_disjoint_and_sized(tmp_path: Path) -> None:
    root = synth.write_dataset(tmp_path / "d", n_train=20, n_test_good=0, n_test_defect=0, size=(16, 16))
    records = load_dataset(root).train
    train, hold = holdout_split(records, 0.15, seed=4)
    assert len(hold) == 3 and len(train) == 17
    assert not {r.path for r in train} & {r.path for r in hold}
    assert holdout_split(records, 0.15, seed=4) == (train, hold)
    assert holdout_split(records, 0.15, seed=5)[1] != hold
    assert len(holdout_split(records[:2], 0.15)[1]) == 1  # at least one image for the threshold
    with pytest.raises(DatasetError):
        holdout_split(records[:1], 0.15)
    assert file_list_sha256(train, root) == file_list_sha256(list(reversed(train)), root)
    assert file_list_sha256(train, root) != file_list_sha256(hold, root)


@pytest.mark.parametrize("method", ["cae", "patchcore", "featae", "classic"])
def test_new_bundles_shrink_with_halve_area(method: str) -> None:
    """Every image method's spec (what fit writes into input.resize) asks for the cheaper anti-aliased resize."""
    from tools.methods.base import FitOptions
    from tools.methods.registry import get_method

    assert get_method(method).input_spec(FitOptions(size=128)).resize == "halve_area"


@pytest.mark.parametrize("order", ["rgb", "gray"])
def test_training_reads_the_pixels_the_daemon_feeds_with_halve_area(order: str) -> None:
    """fit stores each image at model size (`model_sized`, as it is read) and the Detector prepares that again; the
    daemon prepares the camera's 640x480 frame once: with `resize: halve_area` both give the same model input."""
    from edged.bundle import InputSpec
    from edged.preprocess import prepare_uint8
    from tools.dataset import model_sized

    spec = InputSpec(width=128, height=128, channels=1 if order == "gray" else 3, color_order=order,
                     resize="halve_area")
    rng = np.random.default_rng(4)
    for _ in range(3):
        frame = synth.make_part(rng, (640, 480))[0]
        stored = model_sized(spec)(frame)
        assert frame.shape[:2] == (480, 640)
        np.testing.assert_array_equal(prepare_uint8(stored, spec), prepare_uint8(frame, spec))
        # not vacuous: one-step area (old bundles) gives other pixels at 5 x 3.75
        assert not np.array_equal(prepare_uint8(stored, spec),
                                  prepare_uint8(frame, spec.model_copy(update={"resize": "area"})))


def test_camera_changes_are_made_at_the_stored_size_before_the_resize(tmp_path: Path) -> None:
    """`as_delivered`: noise (or a JPEG block, a clipped highlight) is the camera's, made on the image as stored and
    then averaged by the resize, not added to the small model-sized image; 16-bit images come to 8 bits first."""
    from edged.bundle import InputSpec
    from tools.camera_effects import with_sensor_noise
    from tools.dataset import Record, as_delivered, model_sized

    spec = InputSpec(width=64, height=64, channels=1, color_order="gray", resize="halve_area", bit_depth=12)
    part = synth.make_part(np.random.default_rng(5), (256, 256))[0]
    grey = cv2.cvtColor(part, cv2.COLOR_BGR2GRAY)
    cv2.imwrite(str(tmp_path / "a.png"), grey)
    cv2.imwrite(str(tmp_path / "b.png"), grey.astype(np.uint16) << 4)  # the same pixels from a 12-bit camera
    records = [Record(tmp_path / "a.png"), Record(tmp_path / "b.png")]

    def noise(image: np.ndarray, i: int) -> np.ndarray:
        return with_sensor_noise(image, 16.0, np.random.default_rng(i % 1))

    delivered = as_delivered(records, spec, noise)
    expected = model_sized(spec)(noise(grey, 0))
    for image in delivered:
        np.testing.assert_array_equal(image, expected)
    small = model_sized(spec)(grey).astype(np.float32)
    at_model_size = noise(model_sized(spec)(grey), 0).astype(np.float32)
    # 4x4 pixels average into one: the camera's noise is about a quarter as strong in the model's input
    assert np.std(delivered[0] - small) < 0.4 * np.std(at_model_size - small)
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(DatasetError, match="no longer a readable image"):
        as_delivered(records, spec, noise)


def test_sample_images_is_seeded_in_file_order_and_skips_unreadable(tmp_path: Path) -> None:
    """The sample the fit's data-driven choices look at: the same seed gives the same images, in file order, and a
    file that does not decode is left out, not raised."""
    from tools.dataset import Record, sample_images

    records = []
    for i in range(8):
        path = tmp_path / f"{i}.png"
        if i == 3:
            path.write_bytes(b"not a png")
        else:
            cv2.imwrite(str(path), np.full((4, 4 + i), i, np.uint8))
        records.append(Record(path))
    every = [int(im[0, 0]) for im in sample_images(records, 8, seed=0)]
    assert every == [0, 1, 2, 4, 5, 6, 7]
    some = [int(im[0, 0]) for im in sample_images(records, 4, seed=[5, 11])]
    assert some == sorted(some) and len(some) in (3, 4)
    assert some == [int(im[0, 0]) for im in sample_images(records, 4, seed=[5, 11])]
