"""Cross-fitting: every good image trains the final model and is scored once by a fold model that never
saw it, through the daemon's Detector; the threshold comes from all n out-of-fold scores."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from devkit.support import read_image
from edged.bundle import load_manifest
from edged.detector import Detector
from tools import crossfit, synth
from tools.calibrate import score_images
from tools.dataset import load_dataset, load_images, model_sized
from tools.fit import FitConfig, fit_bundle
from tools.methods.base import FitOptions


def test_folds_cover_every_image_once_and_are_balanced() -> None:
    for n, k in ((10, 5), (11, 5), (30, 3), (2, 2)):
        folds = crossfit.fold_of(n, k, seed=3)
        counts = np.bincount(folds, minlength=k)
        assert folds.shape == (n,) and counts.sum() == n and counts.max() - counts.min() <= 1
    assert not np.array_equal(crossfit.fold_of(20, 5, 0), crossfit.fold_of(20, 5, 1))  # seeded shuffle
    assert np.array_equal(crossfit.fold_of(20, 5, 7), crossfit.fold_of(20, 5, 7))
    with pytest.raises(ValueError, match="folds"):
        crossfit.fold_of(3, 5, 0)


def test_out_of_fold_puts_each_score_back_in_image_order() -> None:
    """Each image's score comes from the one fold whose model did not train on it."""
    seen: list[tuple[set[int], set[int]]] = []

    def fit_and_score(train: Sequence[int], held: Sequence[int], fold: int) -> dict[str, crossfit.HeldScores]:
        seen.append((set(train), set(held)))
        return {"fp32": crossfit.HeldScores(np.asarray(held, float) + 0.5, np.asarray(held, float))}

    oof = crossfit.out_of_fold(13, 4, 0, fit_and_score)
    np.testing.assert_array_equal(oof.scores["fp32"], np.arange(13) + 0.5)
    np.testing.assert_array_equal(oof.peaks["fp32"], np.arange(13))
    assert all(not (tr & he) and len(tr | he) == 13 for tr, he in seen)
    assert set().union(*(he for _, he in seen)) == set(range(13))


@pytest.fixture(scope="module")
def crossfit_bundle(synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cf") / "bundle"
    fit_bundle(FitConfig(data=synth_data, method="mean-distance-test", out=out, folds=3,
                         options=FitOptions(size=64, seed=2, progress=False)))
    return out


def test_threshold_is_set_on_out_of_fold_scores_not_on_the_final_models(crossfit_bundle: Path,
                                                                        synth_data: Path) -> None:
    """The final model scores its own training images lower than models that never saw them: a
    threshold from in-sample scores would reject good parts. The manifest's comes from the fold models."""
    m = load_manifest(crossfit_bundle)
    ds = load_dataset(synth_data)
    images, _ = load_images(ds.train, transform=model_sized(m.input))
    in_sample, _ = score_images(Detector(crossfit_bundle, precision="fp32"), images, keep_maps=False)
    t = m.models["fp32"].threshold
    assert t.n_images == len(images) == m.training.count == 30 and m.training.holdout == 0
    assert m.training.params["folds"] == 3 and "3-fold cross-fit" in t.source
    assert t.value > float(np.max(in_sample))  # out-of-fold scores run higher than in-sample ones
    assert t.frr_interval is not None and t.frr_interval[1] < 0.15  # 30 scores, not 4.5
    # and it carries over to new good parts of the same line: none of the test split's good parts is rejected
    good = [r for r in ds.test if r.is_good]
    test_good, _ = load_images(good, transform=model_sized(m.input))
    scores, _ = score_images(Detector(crossfit_bundle, precision="fp32"), test_good, keep_maps=False)
    assert float(np.mean(scores > t.value)) <= 0.125


def test_holdout_still_available_and_smaller(synth_data: Path, tmp_path: Path) -> None:
    m = fit_bundle(FitConfig(data=synth_data, method="mean-distance-test", out=tmp_path / "b", folds=0,
                             options=FitOptions(size=64, seed=2, progress=False))).manifest
    assert m.training.params["calibration"] == "hold-out"
    assert m.models["fp32"].threshold.n_images == m.training.holdout == round(30 * 0.15)
    assert m.training.count == 30 - m.training.holdout


def test_a_fold_model_never_trains_on_the_images_it_scores(tmp_path: Path) -> None:
    """With one distinctive image among the good ones, its out-of-fold score is far above the others
    (a model that had trained on it would score it like the rest)."""
    good = tmp_path / "good"
    synth.write_folder(good, 20, [], size=(48, 48), seed=4)
    import cv2

    odd = 255 - read_image(sorted(good.iterdir())[0])
    cv2.imwrite(str(good / "zz_odd.png"), odd)
    with pytest.raises(ValueError, match=r"zz_odd\.png"):
        # light left as it is: the toy method's distance to the mean part is what makes the negative stand out,
        # and normalizing both to one mean and spread narrows it (0.59 -> 0.37 against 0.14-0.20 in-sample)
        fit_bundle(FitConfig(data=good, method="mean-distance-test", out=tmp_path / "b", folds=4, normalize="none",
                             options=FitOptions(size=48, progress=False)))
