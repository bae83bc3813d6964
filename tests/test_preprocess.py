"""prepare_uint8 converts channel order after resizing (faster); the pixels must not change."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from edged.bundle import InputSpec
from edged.preprocess import NORM_MEAN, NORM_STD, FrameError, normalize_light, prepare_uint8, resize, to_color_order


def reference(image: np.ndarray, spec: InputSpec) -> np.ndarray:
    """The original order: convert the whole frame, then resize."""
    return resize(to_color_order(image, spec.color_order), spec.width, spec.height)


@pytest.mark.parametrize("order", ["rgb", "bgr", "gray"])
@pytest.mark.parametrize("shape", [(480, 640, 3), (480, 640, 4), (480, 640), (61, 83, 3), (50, 40, 3), (480, 640, 1)])
@pytest.mark.parametrize("size", [(128, 128), (96, 64), (224, 224)])
def test_same_pixels_as_convert_then_resize(order: str, shape: tuple[int, ...], size: tuple[int, int]) -> None:
    rng = np.random.default_rng(sum(shape) + size[0])
    image = rng.integers(0, 256, size=shape, dtype=np.uint8)
    channels = 1 if order == "gray" else 3
    spec = InputSpec(width=size[0], height=size[1], channels=channels, color_order=order)
    got = prepare_uint8(image, spec)
    np.testing.assert_array_equal(got, reference(image, spec))
    assert got.shape == ((size[1], size[0]) if order == "gray" else (size[1], size[0], 3))


def test_16_bit_and_empty_frames_keep_their_handling() -> None:
    spec = InputSpec(width=32, height=32, channels=3, color_order="rgb")
    deep = (np.arange(64 * 48 * 3, dtype=np.uint16).reshape(48, 64, 3) * 7)
    np.testing.assert_array_equal(prepare_uint8(deep, spec), reference(deep, spec))
    with pytest.raises(FrameError):
        prepare_uint8(np.zeros((0, 0, 3), np.uint8), spec)
    with pytest.raises(FrameError):
        prepare_uint8(np.zeros((8, 8, 3), np.float32), spec)


def test_12_bit_frames_use_their_bit_depth() -> None:
    """A 12-bit camera (0..4095 in uint16) keeps its brightness when the manifest says bit_depth 12."""
    from edged.preprocess import to_uint8

    twelve = np.array([[0, 16, 2048, 4095, 65535]], np.uint16)
    np.testing.assert_array_equal(to_uint8(twelve, 12), [[0, 1, 128, 255, 255]])  # above 12 bits: saturated
    np.testing.assert_array_equal(to_uint8(twelve, 16), [[0, 0, 8, 15, 255]])  # the old rule: nearly black
    spec = InputSpec(width=4, height=4, channels=1, color_order="gray", bit_depth=12)
    assert int(prepare_uint8(np.full((8, 8), 4000, np.uint16), spec).min()) == 250
    assert InputSpec(width=4, height=4).bit_depth == 16  # bundles written before the field keep their rule


def _textured(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(60, 180, (48, 64, 3)).astype(np.float32)
    return np.repeat(np.repeat(base, 4, axis=0), 4, axis=1).astype(np.uint8)  # 192x256 BGR blocks


def test_mean_std_normalization_removes_a_lamps_gain_and_offset() -> None:
    spec = InputSpec(width=64, height=48, channels=3, color_order="rgb", normalize="mean_std")
    image = _textured()
    base = prepare_uint8(image, spec).astype(np.float32)
    assert abs(base.mean() - NORM_MEAN) < 1.0 and abs(base.std() - NORM_STD) < 1.0
    for gain, offset in ((0.6, 0.0), (1.3, -20.0), (0.8, 25.0)):
        lit = np.clip(image.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)
        assert np.abs(prepare_uint8(lit, spec).astype(np.float32) - base).mean() < 2.0, (gain, offset)
    plain = spec.model_copy(update={"normalize": "none"})
    assert np.array_equal(prepare_uint8(image, plain), prepare_uint8(image, InputSpec(
        width=64, height=48, channels=3, color_order="rgb")))  # the default changes no pixel


def test_normalization_does_not_amplify_a_flat_image() -> None:
    flat = np.full((40, 40), 30, np.uint8)
    flat[0, 0] = 31  # sensor noise on a covered lens
    out = normalize_light(flat)
    assert int(out.max()) - int(out.min()) <= 1 and abs(float(out.mean()) - NORM_MEAN) < 1.0


def _line_frame(offset: int, vertical: bool) -> np.ndarray:
    """A 640x480 grey frame with one 1-pixel scratch 100 levels brighter, at `offset` pixels from the middle."""
    image = np.full((480, 640), 100, np.uint8)
    if vertical:
        image[:, 300 + offset] = 200
    else:
        image[200 + offset, :] = 200
    return image


def test_bundles_without_the_field_keep_one_step_area() -> None:
    """Every bundle written before `input.resize` was fitted on one INTER_AREA step: it keeps exactly those pixels."""
    spec = InputSpec(width=128, height=128, channels=3, color_order="bgr")
    assert spec.resize == "area"
    frame = np.random.default_rng(1).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    np.testing.assert_array_equal(prepare_uint8(frame, spec),
                                  cv2.resize(frame, (128, 128), interpolation=cv2.INTER_AREA))


@pytest.mark.parametrize("order", ["rgb", "gray"])
@pytest.mark.parametrize("size", [(128, 128), (224, 224), (96, 64), (320, 240), (160, 160)])
def test_halve_area_is_close_to_area_and_the_same_when_it_cannot_halve(order: str, size: tuple[int, int]) -> None:
    """Halving keeps every pixel's weight close to one-step area's: on a textured 640x480 frame (random 4-pixel
    blocks, harsher than a part) the mean difference stays under 1.5 grey levels; where no halving fits (the model
    is over half the frame) it is the same resize."""
    frame = cv2.resize(_textured(3), (640, 480), interpolation=cv2.INTER_LINEAR)
    channels = 1 if order == "gray" else 3
    area = InputSpec(width=size[0], height=size[1], channels=channels, color_order=order)
    halve = area.model_copy(update={"resize": "halve_area"})
    a, h = prepare_uint8(frame, area).astype(np.int16), prepare_uint8(frame, halve).astype(np.int16)
    assert h.shape == a.shape
    assert float(np.abs(a - h).mean()) < 1.5
    if size[0] * 2 > 640 or size[1] * 2 > 480:
        np.testing.assert_array_equal(a, h)
    small = np.zeros((40, 30, 3), np.uint8)  # enlarging stays linear in both
    np.testing.assert_array_equal(prepare_uint8(small, halve), prepare_uint8(small, area))


@pytest.mark.parametrize("size", [(128, 128), (224, 224), (96, 96)])
@pytest.mark.parametrize("vertical", [True, False])
def test_halve_area_keeps_a_thin_scratch_at_every_position(size: tuple[int, int], vertical: bool) -> None:
    """A 1-pixel scratch shrunk 3-7x must never vanish, wherever it falls (plain INTER_LINEAR loses it at some
    positions: the check can fail): its peak stays at least half of one-step area's and of the ideal
    contrast / shrink factor, and its total brightness (what the model integrates) within 2% of area's."""
    factor = (640 / size[0]) if vertical else (480 / size[1])
    linear_peaks = []
    for offset in range(24):
        image = _line_frame(offset, vertical)
        area = resize(image, *size, method="area").astype(np.int32) - 100
        halve = resize(image, *size, method="halve_area").astype(np.int32) - 100
        assert halve.max() >= max(area.max() / 2, 100 / factor / 2), offset
        assert abs(int(halve.sum()) - int(area.sum())) <= 0.02 * area.sum() + size[0], offset
        linear_peaks.append(int(cv2.resize(image, size, interpolation=cv2.INTER_LINEAR).max()) - 100)
    assert min(linear_peaks) == 0  # what the test guards against: an aliasing resize drops the scratch
