"""Evaluation metrics on hand-checkable cases, and a full report on a tiny real bundle."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from devkit.support import build_max_bundle, spot_frame
from edged.bundle import load_manifest, write_manifest
from tools import synth
from tools.dataset import DatasetError, Record
from tools.evaluate import aupro, evaluate_bundle, perturbations, pixel_auroc, pro_curve, rates, recall_at_frr
from tools.input_check import record_statistics

REPORT_KEYS = {"image_auroc", "pixel_auroc", "aupro", "threshold", "frr", "recall", "recall_at_1pct_frr",
               "ms_per_image", "recall_per_defect"}


def test_aupro_perfect_and_hand_computed() -> None:
    mask = np.zeros((10, 10), bool)
    mask[2:4, 2:4] = True  # region of 4 px
    mask[7:9, 6:9] = True  # region of 6 px, not touching the first
    perfect = mask.astype(float)
    assert aupro([mask], [perfect]) == pytest.approx(1.0)
    # region A found at the top score, region B only below every good pixel: PRO = 0.5 up to FPR 1
    half = np.full((10, 10), 0.5)
    half[2:4, 2:4] = 1.0
    half[7:9, 6:9] = 0.0
    assert aupro([mask], [half]) == pytest.approx(0.5)
    curve = pro_curve([mask], [half])
    assert curve is not None
    fpr, pro = curve
    assert fpr[-1] == pytest.approx(1.0) and pro[-1] == pytest.approx(1.0)
    # an inverted map finds nothing before every good pixel is flagged
    assert aupro([mask], [1.0 - perfect]) == pytest.approx(0.0)
    assert aupro([np.zeros((4, 4), bool)], [np.zeros((4, 4))]) is None


def test_aupro_weights_regions_equally() -> None:
    """A small region counts as much as a big one (unlike pixel AUROC)."""
    mask = np.zeros((20, 20), bool)
    mask[0:10, 0:10] = True  # 100 px
    mask[15, 15] = True  # 1 px
    found_big = np.where(mask, 0.0, 0.5)
    found_big[0:10, 0:10] = 1.0
    assert aupro([mask], [found_big]) == pytest.approx(0.5)
    auroc = pixel_auroc([mask], [found_big])
    assert auroc is not None and auroc > 0.99


def test_rates_and_recall_at_frr() -> None:
    labels = np.array([0] * 100 + [1] * 10)
    scores = np.r_[np.arange(100) / 100, np.full(10, 0.995)]
    frr, recall = rates(labels, scores, 0.985)
    assert frr == pytest.approx(0.01) and recall == 1.0
    assert recall_at_frr(labels, scores, 0.01) == 1.0
    assert recall_at_frr(labels, np.r_[np.arange(100) / 100, np.full(10, 0.5)], 0.01) == 0.0
    assert recall_at_frr(np.zeros(3), np.zeros(3)) is None


def test_perturbations_keep_shape_and_are_deterministic() -> None:
    image = spot_frame(False, (64, 48), seed=1)
    for name, fn in perturbations().items():
        out = fn(image, 3)
        assert out.shape == image.shape and out.dtype == np.uint8, name
        assert np.array_equal(out, fn(image, 3)), name
        assert not np.array_equal(out, image), name


@pytest.fixture
def spot_dataset(tmp_path: Path) -> Path:
    """MVTec layout of dark frames; defects are bright spots with their masks."""
    root = tmp_path / "spots"
    for d in ("train/good", "test/good", "test/spot", "ground_truth/spot"):
        (root / d).mkdir(parents=True)
    for i in range(6):
        cv2.imwrite(str(root / "test/good" / f"{i}.png"), spot_frame(False, (64, 64), seed=i))
        spot = (16 + 6 * i, 20 + 4 * i)
        cv2.imwrite(str(root / "test/spot" / f"{i}.png"), spot_frame(True, (64, 64), seed=10 + i, spot=spot))
        mask = np.zeros((64, 64), np.uint8)
        mask[spot[1] - 4:spot[1] + 5, spot[0] - 4:spot[0] + 5] = 255
        cv2.imwrite(str(root / "ground_truth/spot" / f"{i}_mask.png"), mask)
    return root


def test_evaluate_writes_report(spot_dataset: Path, tmp_path: Path) -> None:
    bundle = build_max_bundle(tmp_path / "b", size=32, threshold=0.5, map_threshold=0.5)
    report = evaluate_bundle(bundle, spot_dataset, tmp_path / "r", robustness=True, timing_images=3, progress=False)
    on_disk = json.loads((tmp_path / "r" / "report.json").read_text())
    assert on_disk.keys() >= REPORT_KEYS and on_disk == report
    assert report["image_auroc"] == 1.0 and report["frr"] == 0.0 and report["recall"] == 1.0
    assert report["recall_per_defect"] == {"spot": {"n": 6, "recall": 1.0}}
    assert report["recall_at_1pct_frr"] == 1.0
    assert report["pixel_auroc"] > 0.95 and report["aupro"] > 0.8
    assert report["ms_per_image"] > 0 and report["ms_per_image_fp32"] > 0 and report["ms_per_image_int8"] > 0
    assert set(report["robustness"]) == set(perturbations())
    assert report["robustness"]["strong light (x1.4)"]["recall"] == 1.0
    for name in ("report.html", "report.md", "roc.png", "histogram.png", "examples.png", "robustness.png"):
        assert (tmp_path / "r" / name).stat().st_size > 500, name
    assert "image AUROC" in (tmp_path / "r" / "report.html").read_text()


def test_evaluate_folder_of_good_images(tmp_path: Path) -> None:
    bundle = build_max_bundle(tmp_path / "b", size=32, threshold=0.5)
    good = tmp_path / "good"
    good.mkdir()
    for i in range(4):
        cv2.imwrite(str(good / f"{i}.png"), spot_frame(False, (40, 30), seed=i))
    report = evaluate_bundle(bundle, good, tmp_path / "r", precision="fp32", timing_images=2, progress=False)
    assert report["precision"] == "fp32" and report["frr"] == 0.0
    assert report["image_auroc"] is None and report["recall"] is None and report["pixel_auroc"] is None


# --- issue 21: masks strict, report folder checked first, images shrunk as read ---------------------------------------

def _masked_data(tmp_path: Path) -> Path:
    return synth.write_dataset(tmp_path / "d", n_train=2, n_test_good=2, n_test_defect=3, size=(48, 48), seed=1)


@pytest.mark.parametrize("broken", ["wrong size", "empty", "garbage"])
def test_bad_masks_are_errors_naming_the_file(tmp_path: Path, broken: str) -> None:
    data = _masked_data(tmp_path)
    mask = sorted((data / "ground_truth").rglob("*_mask.png"))[0]
    if broken == "wrong size":
        cv2.imwrite(str(mask), np.full((40, 48), 255, np.uint8))
    elif broken == "empty":
        mask.write_bytes(b"")
    else:
        mask.write_bytes(b"\x89PNG not a mask")
    bundle = build_max_bundle(tmp_path / "b", size=32, threshold=0.5, map_threshold=0.5)
    with pytest.raises(DatasetError, match=re.escape(str(mask))):
        evaluate_bundle(bundle, data, tmp_path / "r", timing_images=0, progress=False)
    assert not (tmp_path / "r").exists()


def test_unwritable_report_path_is_refused_before_scoring(tmp_path: Path) -> None:
    data = _masked_data(tmp_path)
    bundle = build_max_bundle(tmp_path / "b", size=32)
    (tmp_path / "file").write_text("x")
    with pytest.raises(DatasetError, match=r"--report .*file/r: .*file is not a folder"):
        evaluate_bundle(bundle, data, tmp_path / "file" / "r", timing_images=0, progress=False)


def test_large_images_are_held_at_the_model_size(tmp_path: Path) -> None:
    """Evaluation memory does not grow with the camera: 1600x1600 images, a 32 px model."""
    import tracemalloc

    data = synth.write_dataset(tmp_path / "d", n_train=0, n_test_good=6, n_test_defect=0, size=(1600, 1600))
    bundle = build_max_bundle(tmp_path / "b", size=32)
    tracemalloc.start()
    report = evaluate_bundle(bundle, data, tmp_path / "r", timing_images=1, progress=False, write_html=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    full = 1600 * 1600 * 3
    assert report["n_good"] == 6
    assert peak < 3 * full  # one image being read (and its copy), never all six


def test_robustness_says_what_input_health_flags(spot_dataset: Path, tmp_path: Path) -> None:
    bundle = build_max_bundle(tmp_path / "b", size=32, threshold=0.5, map_threshold=0.5)
    for i in range(12):  # good parts of the same line, for the fit-time statistics
        cv2.imwrite(str(spot_dataset / "train/good" / f"{i}.png"), spot_frame(False, (64, 64), seed=100 + i))
    train = [Record(p) for p in sorted((spot_dataset / "train/good").glob("*.png"))]
    stats = record_statistics(train)
    assert stats is not None and stats.n_images == len(train)
    write_manifest(bundle, load_manifest(bundle).model_copy(update={"input_stats": stats}))
    report = evaluate_bundle(bundle, spot_dataset, tmp_path / "r", robustness=True, timing_images=0, progress=False,
                             write_html=False)
    health = report["input_health"]
    assert set(health) == {"none", *perturbations()}
    assert health["none"]["flagged"] == 0.0 and health["none"]["reference"] is True  # good images raise nothing
    assert health["low light (x0.6)"]["flagged"] == 1.0 and health["low light (x0.6)"]["reason"] == "too_dark"
    assert health["strong light (x1.4)"]["reason"] == "too_bright"
    assert health["low light (x0.6)"]["drift"] == "too_dark" and health["none"]["drift"] is None
    assert health["noise (sigma 8)"]["images"] == 6 and "flags" not in health["none"]
    # joined with the scores: nothing flagged as stored, so every false reject is an unflagged one
    assert report["frr_unflagged"] == report["frr"]
    assert report["robustness"]["low light (x0.6)"]["frr_unflagged"] is None  # every good image flagged
    for row in report["robustness"].values():
        assert row["frr_unflagged"] is None or 0.0 <= row["frr_unflagged"] <= 1.0


def test_false_rejects_are_set_beside_the_input_health_flags_of_the_same_images() -> None:
    from tools.evaluate import flagged_false_rejects

    rejected = np.array([True, True, True, False, False, False, False, False])
    flags = [True, True, False, True, False, False, False, False]
    joint = flagged_false_rejects(rejected, flags)
    assert joint["frr_unflagged"] == pytest.approx(1 / 5)  # one false reject among the five images passed
    assert joint["false_rejects_flagged"] == pytest.approx(2 / 3)
    assert flagged_false_rejects(rejected, [True] * 8)["frr_unflagged"] is None  # nothing passed
    assert flagged_false_rejects(np.zeros(8, bool), flags)["false_rejects_flagged"] is None  # no false reject
    assert flagged_false_rejects(rejected, flags[:3]) == {"frr_unflagged": None, "false_rejects_flagged": None}


def test_robustness_without_input_statistics_still_reports(spot_dataset: Path, tmp_path: Path) -> None:
    bundle = build_max_bundle(tmp_path / "b", size=32, threshold=0.5, map_threshold=0.5)
    report = evaluate_bundle(bundle, spot_dataset, tmp_path / "r", robustness=True, timing_images=0, progress=False)
    assert report["input_health"]["none"]["reference"] is False
    assert report["input_health"]["low light (x0.6)"]["flagged"] == 0.0  # what is dark needs the reference
    assert "input health" in (tmp_path / "r" / "report.md").read_text()
