"""`--normalize auto`: the light normalization chosen from how much the training images' brightness varies."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from devkit.support import read_image
from tools import light_range, synth
from tools.dataset import Record
from tools.fit import FitConfig, FitError, check_fit
from tools.methods.base import FitOptions


def test_a_steady_lamp_is_normalized_a_varied_product_is_not() -> None:
    rng = np.random.default_rng(0)
    steady = light_range.choose(list(110 * rng.uniform(0.95, 1.05, 64)))
    assert steady.normalize == "mean_std" and steady.span is not None and steady.span < light_range.SPAN
    varied = light_range.choose(list(rng.uniform(60, 160, 64)))  # the magnetic tiles' kind of spread
    assert varied.normalize == "none" and varied.span is not None and varied.span >= light_range.SPAN
    assert "under the x1.3" in steady.describe() and "at or over" in varied.describe()


def test_the_span_ignores_a_few_odd_images_and_the_bit_depth() -> None:
    means = [100.0] * 60 + [10.0, 250.0, 240.0, 5.0]  # four odd images out of 64: under each tenth
    assert light_range.choose(means).normalize == "mean_std"
    assert light_range.choose([m * 256 for m in means]).span == light_range.choose(means).span  # 16 bit


@pytest.mark.parametrize("means", [[], [120.0], [0.0] * 10, [float("nan")] * 5])
def test_without_evidence_of_a_steady_lamp_the_light_is_left_alone(means: list[float]) -> None:
    choice = light_range.choose(means)
    assert choice.normalize == "none" and choice.span is None
    assert "could not be compared" in choice.describe()


def test_brightness_is_read_as_stored_without_the_alpha_channel(tmp_path: Path) -> None:
    bgra = np.zeros((8, 8, 4), np.uint8)
    bgra[..., :3], bgra[..., 3] = 90, 255
    cv2.imwrite(str(tmp_path / "a.png"), bgra)
    cv2.imwrite(str(tmp_path / "b.png"), np.full((8, 8), 30, np.uint16) * 256)
    (tmp_path / "c.png").write_bytes(b"not an image")  # skipped, as everywhere in fit
    records = [Record(tmp_path / n) for n in ("a.png", "b.png", "c.png")]
    assert sorted(light_range.sample_brightness(records)) == [90.0, 30.0 * 256]


def _folder(path: Path, gains: list[float]) -> Path:
    """Good parts of the synthetic line, each under its own gain (a lamp's change between photos)."""
    synth.write_folder(path, len(gains), [], size=(48, 48), seed=5)
    for p, g in zip(sorted(path.glob("*.png")), gains, strict=True):
        image = read_image(p)
        cv2.imwrite(str(p), np.clip(image.astype(np.float32) * g, 0, 255).astype(np.uint8))
    return path


def _cfg(data: Path, out: Path, **kw: object) -> FitConfig:
    return FitConfig(data=data, method="band-test", out=out, options=FitOptions(size=48, progress=False),
                     **kw)  # type: ignore[arg-type]


def test_fit_chooses_by_default_and_an_explicit_choice_wins(tmp_path: Path) -> None:
    steady = _folder(tmp_path / "steady", [1.0] * 20)
    varied = _folder(tmp_path / "varied", [0.6, 1.0] * 10)  # the product itself comes dark and bright
    plan = check_fit(_cfg(steady, tmp_path / "o1"))
    assert plan.spec.normalize == "mean_std" and plan.light is not None and plan.light.n_images == 20
    plan = check_fit(_cfg(varied, tmp_path / "o2"))
    assert plan.spec.normalize == "none" and plan.light is not None and plan.light.span is not None
    for given in ("none", "mean_std"):
        plan = check_fit(_cfg(steady if given == "none" else varied, tmp_path / "o3", normalize=given))
        assert plan.spec.normalize == given and plan.light is None
    with pytest.raises(FitError, match="--normalize gamma: must be one of auto, none, mean_std"):
        check_fit(_cfg(steady, tmp_path / "o4", normalize="gamma"))
