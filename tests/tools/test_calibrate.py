"""Threshold math and re-calibration of a bundle from new good images."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from devkit.support import build_max_bundle, spot_frame
from edged.bundle import load_manifest, sha256_file
from tools.calibrate import (
    DEFAULT_PERCENTILE,
    CalibrationError,
    image_threshold,
    map_threshold,
    recalibrate,
)


def test_default_percentile_is_nearest_rank() -> None:
    scores = np.arange(1, 101, dtype=float)  # 1..100
    t = image_threshold(scores)
    assert t.percentile == DEFAULT_PERCENTILE == 99.5
    assert t.value == 100.0  # with n <= 200 the 99.5th percentile is the highest good score seen
    assert t.expected_frr == 0.0 and t.n_images == 100
    many = np.arange(1, 1001, dtype=float)
    t = image_threshold(many)
    assert t.value == 996.0 and t.expected_frr == pytest.approx(0.004)  # at most 0.5% above
    assert image_threshold(scores, percentile=95).value == 96.0
    assert image_threshold(scores, percentile=95).expected_frr == pytest.approx(0.04)


def test_target_frr() -> None:
    scores = np.arange(1, 101, dtype=float)
    t = image_threshold(scores, target_frr=0.05)
    assert t.method == "target_frr" and t.value == 95.0 and t.expected_frr == pytest.approx(0.05)
    assert image_threshold(scores, target_frr=0.0).value == 100.0
    assert image_threshold(scores, target_frr=0.019).expected_frr == pytest.approx(0.01)  # never above target
    ties = np.array([1.0] * 10 + [2.0] * 10)
    assert image_threshold(ties, target_frr=0.05).expected_frr == 0.0  # ties are rejected together or not


def test_errors() -> None:
    with pytest.raises(CalibrationError, match="no good"):
        image_threshold([])
    with pytest.raises(CalibrationError, match="not finite"):
        image_threshold([1.0, float("nan")])
    with pytest.raises(CalibrationError, match="either"):
        image_threshold([1.0], percentile=99, target_frr=0.1)
    with pytest.raises(CalibrationError):
        image_threshold([1.0], percentile=0)
    with pytest.raises(CalibrationError):
        image_threshold([1.0], target_frr=1.0)


def test_map_threshold_uses_each_images_peak() -> None:
    maps = [np.full((4, 4), float(i)) for i in range(10)]
    maps[3][0, 0] = 50.0
    assert map_threshold(maps) == 50.0
    assert map_threshold(maps, percentile=50) == 6.0  # peaks 0 1 2 4 5 6 7 8 9 50: nearest rank above the middle
    assert map_threshold(None) is None and map_threshold([]) is None


def test_recalibrate_rewrites_thresholds_not_models(tmp_path: Path) -> None:
    bundle = build_max_bundle(tmp_path / "b", size=32, threshold=0.01, map_threshold=0.01)
    hashes = {p: e.sha256 for p, e in load_manifest(bundle).models.items()}
    good = tmp_path / "good"
    good.mkdir()
    for i in range(20):  # dark noisy frames: their max is the brightest pixel after resize
        cv2.imwrite(str(good / f"{i:02d}.png"), spot_frame(False, seed=i))
    m = recalibrate(bundle, good, progress=False)
    for precision, entry in m.models.items():
        assert entry.sha256 == hashes[precision] == sha256_file(bundle / entry.file)
        assert entry.threshold.n_images == 20 and "edged-train calibrate" in entry.threshold.source
        assert 0.1 < entry.threshold.value < 0.25  # gray <= 60/255 after area resize
        assert entry.map_threshold == pytest.approx(entry.threshold.value)  # score = max of the map here
    on_disk = load_manifest(bundle)
    assert on_disk == m
    m2 = recalibrate(bundle, good, target_frr=0.1, progress=False)
    assert m2.models["fp32"].threshold.method == "target_frr"
    assert m2.models["fp32"].threshold.value <= m.models["fp32"].threshold.value


# --- issue 21: outliers, history and identity, the interval ---------------------------------------------------------

def test_interval_says_when_n_is_too_small() -> None:
    from tools.calibrate import frr_interval, trust_warning

    nine = image_threshold(np.arange(9, dtype=float))
    assert nine.expected_frr == 0.0 and nine.frr_interval == pytest.approx((0.0, 1 - 0.025 ** (1 / 9)))
    assert "too few to trust" in (trust_warning(nine) or "")  # 9 images do not promise 0% false rejects
    many = image_threshold(np.arange(2000, dtype=float))  # 10 of 2000 above: 0.5%, interval 0.24-0.92%
    assert many.frr_interval is not None and many.frr_interval[0] < 0.005 < many.frr_interval[1] < 0.01
    assert trust_warning(many) is None
    assert frr_interval(3, 3) == (pytest.approx(0.025 ** (1 / 3)), 1.0)


def test_outlier_fence_flags_far_scores_not_skewed_good_ones() -> None:
    from tools.calibrate import outlier_indices

    rng = np.random.default_rng(0)
    good = rng.gumbel(1.0, 0.1, 200)  # maxima are right-skewed: Q3 + 3 IQR would flag some of these
    assert outlier_indices(good) == []
    assert outlier_indices(np.r_[good, 5.0, 4.0]) == [200, 201]
    assert outlier_indices(np.r_[np.zeros(20), 1.0]) == []  # tied quartiles: nothing to judge by
    assert outlier_indices(np.r_[rng.normal(0, 1, 30), 30.0]) == [30]  # signed scores


def _bundle(tmp_path: Path) -> Path:
    from tests.tools.conftest import write_good
    from tools.fit import FitConfig, fit_bundle
    from tools.methods.base import FitOptions

    data = write_good(tmp_path / "train", 16)
    fit_bundle(FitConfig(data=data, method="mean-distance-test", out=tmp_path / "b",
                         options=FitOptions(size=48, progress=False)))
    return tmp_path / "b"


def test_defective_parts_among_calibration_images_are_refused_or_dropped(tmp_path: Path) -> None:
    from tests.tools.conftest import write_good

    bundle = _bundle(tmp_path)
    before = load_manifest(bundle)
    mixed = write_good(tmp_path / "new", 20, seed=7, odd=2)
    with pytest.raises(CalibrationError, match=r"2 of 22 calibration images score far above.*odd_"):
        recalibrate(bundle, mixed, progress=False)
    assert load_manifest(bundle) == before  # nothing written
    notes: list[str] = []
    m = recalibrate(bundle, mixed, progress=False, drop_outliers=True, warnings=notes)
    t = m.models["fp32"].threshold
    assert t.n_images == 20 and "2 outliers dropped" in t.source
    assert any("dropped 2 calibration image(s)" in n and "odd_0.png" in n for n in notes)
    dropped = m.history[-1]["dropped_outliers"]
    assert isinstance(dropped, list) and sorted(dropped) == ["odd_0.png", "odd_1.png"]


def test_each_calibration_has_its_own_identity_and_the_history(tmp_path: Path) -> None:
    from tests.tools.conftest import write_good

    bundle = _bundle(tmp_path)
    first = load_manifest(bundle)
    new = write_good(tmp_path / "new", 12, seed=3)
    m1 = recalibrate(bundle, new, progress=False)
    m2 = recalibrate(bundle, new, percentile=90, progress=False)
    assert len({first.bundle_id, m1.bundle_id, m2.bundle_id}) == 3
    assert m1.bundle_id.startswith(first.bundle_id + "-r1-") and m2.bundle_id.startswith(first.bundle_id + "-r2-")
    assert [h["bundle_id"] for h in m2.history] == [first.bundle_id, m1.bundle_id]
    before, after = m2.history[0]["thresholds"], m2.history[1]["thresholds"]
    assert isinstance(before, dict) and isinstance(after, dict)
    assert before["fp32"]["value"] == first.models["fp32"].threshold.value
    assert after["fp32"]["n_images"] == 12
    assert load_manifest(bundle) == m2
