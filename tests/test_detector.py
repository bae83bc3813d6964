"""The detector: both runtimes (ONNX Runtime and OpenCV DNN) give the same scores and maps."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from support import build_max_bundle, spot_frame

from edged.bundle import BundleError
from edged.detector import Detector

RUNTIME_TOLERANCE = 1e-5  # fp32 graphs, same input: only summation order may differ


def test_opencv_runtime_matches_onnxruntime(tmp_path: Path) -> None:
    bundle = build_max_bundle(tmp_path / "b", size=48, channels=3)
    frames = [spot_frame(i % 2 == 1, size=(96, 72), seed=i) for i in range(6)]
    ort = Detector(bundle, runtime="onnxruntime").infer(frames)
    cv = Detector(bundle, runtime="opencv").infer(frames)
    for a, b in zip(ort, cv, strict=True):
        assert abs(a.score - b.score) <= RUNTIME_TOLERANCE
        assert a.anomaly_map is not None and b.anomaly_map is not None
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=RUNTIME_TOLERANCE)


def test_opencv_runtime_uses_the_fp32_model(tmp_path: Path) -> None:
    det = Detector(build_max_bundle(tmp_path / "b"), runtime="opencv")
    assert det.precision == "fp32" and det.provider == "opencv-dnn-cpu"


def test_falls_back_to_opencv_without_onnxruntime(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as on a machine without it: import fails
    det = Detector(build_max_bundle(tmp_path / "b"))
    assert det.runtime == "opencv"
    assert det.infer([spot_frame(True)])[0].score == pytest.approx(1.0)


def test_missing_provider_falls_back_to_cpu(tmp_path: Path) -> None:
    det = Detector(build_max_bundle(tmp_path / "b"), providers=("tensorrt", "cuda", "cpu"))
    assert det.provider == "CPUExecutionProvider"


def test_bad_bundles_are_refused_with_a_clear_error(tmp_path: Path) -> None:
    bundle = build_max_bundle(tmp_path / "b")
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        Detector(tmp_path)
    (bundle / "manifest.json").write_text("{")
    with pytest.raises(BundleError, match="not valid JSON"):
        Detector(bundle)
    (bundle / "manifest.json").write_text('{"format_version": 1}')
    with pytest.raises(BundleError, match="bundle_id"):
        Detector(bundle)
