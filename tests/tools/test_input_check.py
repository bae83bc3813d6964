"""tools.input_check: the daemon's input-health checks run on good images at training and evaluation time."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from devkit.support import build_max_bundle, spot_frame
from edged.bundle import load_manifest
from tools.dataset import Record
from tools.input_check import verdicts


def _good(folder: Path, n: int) -> list[Record]:
    folder.mkdir(parents=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"{i}.png"), spot_frame(False, (64, 64), seed=i))
    return [Record(p) for p in sorted(folder.glob("*.png"))]


def test_verdicts_seed_each_image_as_it_was_scored(tmp_path: Path) -> None:
    """With every image judged, each change is seeded with the index given, so the noise judged is the noise scored."""
    manifest = load_manifest(build_max_bundle(tmp_path / "b", size=32, threshold=0.5, map_threshold=0.5))
    good = _good(tmp_path / "good", 5)
    seen: list[int] = []

    def change(im: np.ndarray, i: int) -> np.ndarray:
        seen.append(i)
        return im

    out = verdicts(manifest, good, {"c": change}, limit=None, indices=[10 + k for k in range(5)])
    assert seen == [10, 11, 12, 13, 14]
    assert out["c"]["flags"] == [False] * 5 and out["c"]["images"] == 5
    with pytest.raises(ValueError, match="indices"):
        verdicts(manifest, good, {"c": change}, limit=None, indices=[1])


def test_a_sample_of_verdicts_is_spread_and_carries_no_flags(tmp_path: Path) -> None:
    manifest = load_manifest(build_max_bundle(tmp_path / "b", size=32, threshold=0.5, map_threshold=0.5))
    good = _good(tmp_path / "good", 9)
    out = verdicts(manifest, good, {}, limit=3)
    assert out["none"]["images"] == 3 and "flags" not in out["none"]


def test_an_unreadable_image_is_never_flagged_and_not_counted(tmp_path: Path) -> None:
    manifest = load_manifest(build_max_bundle(tmp_path / "b", size=32, threshold=0.5, map_threshold=0.5))
    good = _good(tmp_path / "good", 3)
    good[1].path.write_bytes(b"not an image")
    out = verdicts(manifest, good, {"dark": lambda im, i: (im // 4).astype(np.uint8)}, limit=None)
    assert out["dark"]["images"] == 2 and out["dark"]["flags"][1] is False  # type: ignore[index]


def test_describe_says_when_a_few_images_are_flagged() -> None:
    from tools.input_check import describe

    assert describe({"flagged": 1 / 286, "reason": "too_bright", "drift": None}) == "flagged <1% (too_bright)"
    assert describe({"flagged": 0.0, "reason": None, "drift": None}) == "flagged 0%"
    assert describe({"flagged": 0.12, "reason": "too_bright", "drift": "too_bright"}) == (
        "flagged 12% (too_bright), drift: too_bright")
    assert describe({}) == "n/a"


def test_each_image_is_decoded_once_for_every_condition(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """All of a test split's good images at full size would not fit in memory: one at a time, read once."""
    import tools.input_check as input_check

    manifest = load_manifest(build_max_bundle(tmp_path / "b", size=32, threshold=0.5, map_threshold=0.5))
    good = _good(tmp_path / "good", 4)
    reads: list[Path] = []
    real = input_check.read_image

    def counting(path: Path) -> np.ndarray | None:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(input_check, "read_image", counting)
    out = verdicts(manifest, good, {"a": lambda im, i: im, "b": lambda im, i: im // 2}, limit=None)
    assert sorted(reads) == sorted(r.path for r in good) and set(out) == {"none", "a", "b"}


def test_statistics_learn_the_noise_through_the_calibration_jpeg_and_keep_the_tolerated_light(tmp_path: Path) -> None:
    """`record_statistics` measures each training image as stored and, when the threshold was calibrated through
    JPEG, through that JPEG too: the noise range spans both, every other range is the stored images' alone."""
    from edged.input_health import measure, small_grey
    from tools.camera_effects import through_jpeg
    from tools.dataset import read_image
    from tools.input_check import record_statistics

    good = _good(tmp_path / "good", 6)
    plain = record_statistics(good)
    stats = record_statistics(good, light_gain=(0.7, 1.3), jpeg_quality=40)
    assert plain is not None and stats is not None
    assert plain.noise_jpeg_quality is None and plain.light_gain == (1.0, 1.0)
    assert stats.noise_jpeg_quality == 40 and stats.light_gain == (0.7, 1.3)
    images = [read_image(r.path) for r in good]
    noise = [measure(small_grey(x), None, None).noise for im in images if im is not None
             for x in (im, through_jpeg(im, 40))]
    assert stats.noise == pytest.approx((min(noise), max(noise)), abs=1e-5)
    assert plain.noise is not None and plain.noise != stats.noise
    assert stats.mean == plain.mean and stats.n_images == plain.n_images == 6
