"""The camera effects that training calibrates for and evaluation judges under: what each does to pixels."""

from __future__ import annotations

import numpy as np
import pytest

from tools import camera_effects as fx
from tools.evaluate import perturbations


def test_light_clips_like_a_saturating_sensor_and_rounds() -> None:
    image = np.array([[0, 100, 200, 250]], np.uint8)
    assert fx.under_light(image, 1.3).tolist() == [[0, 130, 255, 255]]  # the bright end saturates
    assert fx.under_light(image, 0.7).tolist() == [[0, 70, 140, 175]]
    assert fx.light_lut(1.3)[2] == 3 and fx.light_lut(0.7)[1] == 1  # 2.6 and 0.7 round up: not truncated
    assert fx.light_lut(1.3)[1] == 1 and fx.light_lut(0.7)[2] == 1  # 1.3 and 1.4 round down
    assert fx.under_light(image, 1.0, 1.25)[0, 1] < 100 < fx.under_light(image, 1.0, 0.8)[0, 1]
    assert fx.under_light(image, 1.0).tolist() == image.tolist()


def test_jpeg_changes_texture_but_keeps_shape_and_channels() -> None:
    rng = np.random.default_rng(0)
    for shape in ((40, 48), (40, 48, 3)):
        image = rng.integers(0, 256, shape, dtype=np.uint8)
        out = fx.through_jpeg(image, 50)
        assert out.shape == image.shape and out.dtype == np.uint8
        assert 0 < np.abs(out.astype(int) - image).mean() < 80


def test_blur_is_in_proportion_to_the_image() -> None:
    small, large = np.zeros((64, 64), np.uint8), np.zeros((512, 512), np.uint8)
    small[:, 32:] = large[:, 256:] = 255
    # the edge spreads over more pixels in the larger image: the blur is a fraction of its size
    assert np.count_nonzero((fx.defocused(small) > 5) & (fx.defocused(small) < 250)) / 64 < \
        np.count_nonzero((fx.defocused(large) > 5) & (fx.defocused(large) < 250)) / 512


def test_noise_is_seeded_and_of_the_stated_spread() -> None:
    image = np.full((200, 200), 128, np.uint8)
    a = fx.with_sensor_noise(image, 8.0, np.random.default_rng(3))
    assert np.array_equal(a, fx.with_sensor_noise(image, 8.0, np.random.default_rng(3)))
    assert a.astype(float).std() == pytest.approx(8.0, rel=0.05)


def test_cover_enters_from_a_border_with_the_stated_size() -> None:
    image = np.full((100, 200, 3), 200, np.uint8)
    for seed in range(20):
        out = fx.partly_covered(image, np.random.default_rng(seed))
        ys, xs = np.nonzero(out[..., 0] == fx.OCCLUDER_LEVEL)
        assert 20 <= xs.max() - xs.min() + 1 <= 70 and 20 <= ys.max() - ys.min() + 1 <= 35
        assert xs.min() == 0 or ys.min() == 0 or xs.max() == 199 or ys.max() == 99
        assert out.shape == image.shape


def test_evaluation_light_is_the_light_training_calibrates_for() -> None:
    """--robustness' "light x1.3" is exactly `under_light(1.3)`, the corner `--calibrate-light` uses."""
    image = np.arange(256, dtype=np.uint8).reshape(16, 16)
    p = perturbations()
    assert np.array_equal(p["light x1.3"](image, 0), fx.under_light(image, 1.3))
    assert np.array_equal(p["light x0.7"](image, 0), fx.under_light(image, 0.7))
    assert np.array_equal(p["JPEG quality 50"](image, 0), fx.through_jpeg(image, 50))
