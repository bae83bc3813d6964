"""A trained model gives the same scores under ONNX Runtime and OpenCV DNN, or is refused by OpenCV."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from devkit.support import read_image
from edged.bundle import BundleError
from edged.detector import Detector
from tools import synth
from tools.cli import main as train

RELATIVE_TOLERANCE = 1e-3  # the same as tools.fit.OPENCV_TOLERANCE, which decides what a bundle declares


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("rt")
    return synth.write_dataset(root / "data", n_train=24, n_test_good=4, n_test_defect=4, size=(64, 64), seed=3)


def test_cae_runs_the_same_in_both_runtimes(tmp_path: Path, data: Path) -> None:
    bundle = tmp_path / "cae"
    assert train(["fit", str(data), "--method", "cae", "--out", str(bundle), "--size", "64", "--epochs", "2",
                  "-q"]) == 0
    frames = [read_image(p) for p in sorted((data / "test").rglob("*.png"))]
    ort = Detector(bundle, precision="fp32").infer(frames)
    cv = Detector(bundle, runtime="opencv")
    assert cv.manifest.runtimes == ("onnxruntime", "opencv") and cv.precision == "fp32"
    for frame, a in zip(frames, ort, strict=True):
        b = cv.infer([frame])[0]
        assert abs(a.score - b.score) <= RELATIVE_TOLERANCE * max(abs(a.score), 1e-6)
        assert a.anomaly_map is not None and b.anomaly_map is not None
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, rtol=1e-3, atol=1e-3)


def test_a_model_opencv_cannot_run_is_refused(tmp_path: Path, data: Path) -> None:
    bundle = tmp_path / "classic"
    assert train(["fit", str(data), "--method", "classic", "--out", str(bundle), "--size", "64", "-q"]) == 0
    assert Detector(bundle).manifest.runtimes == ("onnxruntime",)  # a tree ensemble: cv2.dnn has no such op
    with pytest.raises(BundleError, match="not verified to run correctly under OpenCV"):
        Detector(bundle, runtime="opencv")
