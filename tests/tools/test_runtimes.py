"""A trained model gives the same scores under ONNX Runtime, OpenVINO and OpenCV DNN, or is refused by them.

fit ends with `edged-train verify` on its good images (tools/verify.py), so the bundles here carry the
parity checks that decide which runtimes the daemon may run them in.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from devkit.support import read_image
from edged.bundle import BundleError
from edged.detector import Detector
from edged.runtimes import registry
from tools import synth
from tools.cli import main as train

RELATIVE_TOLERANCE = 1e-3  # of the score: far inside verify's 1% of the threshold


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
    assert "opencv" in cv.manifest.runtimes and cv.precision == "fp32"
    others = [cv]
    if registry.installed("openvino"):
        check = cv.manifest.check("openvino", "fp32")
        assert check is not None and check.passed and check.images.endswith("(good images)"), check
        assert check.n_images == 16 and check.latency_ms is not None and check.cpu
        others.append(Detector(bundle, precision="fp32", runtime="openvino"))
    for det in others:
        for frame, a in zip(frames, ort, strict=True):
            b = det.infer([frame])[0]
            assert abs(a.score - b.score) <= RELATIVE_TOLERANCE * max(abs(a.score), 1e-6), det.runtime
            assert a.anomaly_map is not None and b.anomaly_map is not None
            # a map's pixels near zero differ by float rounding (one runtime's convolution algorithm against
            # another's): measured up to 0.0017 on a map reaching 1.7, so the bound is a share of the map's peak
            peak = float(np.abs(a.anomaly_map).max())
            np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, rtol=1e-3, atol=2e-3 * max(peak, 1.0),
                                       err_msg=det.runtime)


def test_a_model_opencv_cannot_run_is_refused(tmp_path: Path, data: Path) -> None:
    bundle = tmp_path / "classic"
    assert train(["fit", str(data), "--method", "classic", "--out", str(bundle), "--size", "64", "-q"]) == 0
    manifest = Detector(bundle).manifest
    assert manifest.runtimes == ("onnxruntime",)  # a tree ensemble: cv2.dnn and OpenVINO have no such op
    check = manifest.check("opencv", "fp32")
    assert check is not None and not check.passed and check.max_diff is None and check.error
    with pytest.raises(BundleError, match=r"model\.runtime: opencv: the fp32 model failed the parity check"):
        Detector(bundle, runtime="opencv")
    auto = Detector(bundle, runtime="auto")
    assert auto.runtime == "onnxruntime" and auto.choice.mode == "auto"
