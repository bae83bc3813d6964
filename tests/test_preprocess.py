"""prepare_uint8 converts channel order after resizing (faster); the pixels must not change."""

from __future__ import annotations

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
