"""The detector: both runtimes (ONNX Runtime and OpenCV DNN) give the same scores and maps."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from devkit.support import build_max_bundle, spot_frame
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


def bundle_with_input(tmp_path: Path, manifest_size: int, graph_size: int = 32, graph_channels: int = 1,
                      manifest_channels: int = 1, dtype: int | None = None) -> Path:
    """The max bundle, its manifest saying one input, the graph declaring another (size, channels, dtype)."""
    import json

    import onnx
    from onnx import TensorProto, helper

    from edged.bundle import sha256_file

    bundle = build_max_bundle(tmp_path / "b", size=graph_size, channels=graph_channels)
    if dtype is not None:  # the same graph behind a Cast from `dtype`
        model = onnx.load(bundle / "model.onnx")
        graph = model.graph
        graph.input[0].type.tensor_type.elem_type = dtype
        graph.node[0].input[0] = "casted"
        graph.node.insert(0, helper.make_node("Cast", ["input"], ["casted"], to=TensorProto.FLOAT))
        onnx.checker.check_model(model)
        for name in ("model.onnx", "model.fp32.onnx"):
            onnx.save(model, bundle / name)
    path = bundle / "manifest.json"
    raw = json.loads(path.read_text())
    raw["input"].update(width=manifest_size, height=manifest_size, channels=manifest_channels,
                        color_order="gray" if manifest_channels == 1 else "rgb")
    for entry in raw["models"].values():
        entry["sha256"] = sha256_file(bundle / entry["file"])
    path.write_text(json.dumps(raw))
    return bundle


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"manifest_size": 64}, r"axis 2: 32 != 64"),
    ({"manifest_size": 32, "manifest_channels": 3}, r"axis 1: 1 != 3"),
    ({"manifest_size": 32, "graph_channels": 3}, r"axis 1: 3 != 1"),
    ({"manifest_size": 32, "dtype": 2}, r"tensor\(uint8\), but the daemon feeds float32"),
])
def test_a_manifest_that_does_not_match_its_model_is_refused_at_load(tmp_path: Path, kwargs: dict[str, int],
                                                                     expected: str) -> None:
    bundle = bundle_with_input(tmp_path, **kwargs)
    with pytest.raises(BundleError, match=expected):
        Detector(bundle)


@pytest.mark.slow
def test_check_config_and_run_exit_2_on_a_mismatched_bundle(tmp_path: Path) -> None:
    """The issue's case: the manifest says 64x64, the graph takes 32x32; it used to pass check-config and
    then kill both inference workers on the first frame while the daemon looked healthy."""
    import subprocess

    from devkit.support import write_config, write_spot_video

    bundle = bundle_with_input(tmp_path, manifest_size=64)
    video = tmp_path / "v.avi"
    write_spot_video(video, 5, {2})
    cfg = write_config(tmp_path / "edged.yaml", bundle, video, tmp_path / "state")
    for command in ("check-config", "run"):
        proc = subprocess.run([sys.executable, "-m", "edged", command, "-c", str(cfg)], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2, (command, proc.stderr)
        assert "does not match" in proc.stderr or "the manifest says" in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr


def _with_reference_parts(bundle: Path, shift: dict[str, float] | None = None) -> Path:
    """The bundle with reference parts written by fit's own code, its recorded scores then moved by `shift`
    (precision -> amount), as a station whose kernels score differently would see them."""
    from edged.bundle import load_manifest, write_manifest
    from tools.fit import reference_parts

    manifest = load_manifest(bundle)
    parts = [spot_frame(i == 3, size=(32, 32), seed=20 + i) for i in range(4)]
    ref = reference_parts(bundle, parts, manifest)
    assert ref is not None and set(ref.scores) == {"int8", "fp32"} and len(ref.scores["fp32"]) == 4
    moved = {p: tuple(s + (shift or {}).get(p, 0.0) for s in scores) for p, scores in ref.scores.items()}
    write_manifest(bundle, manifest.model_copy(update={"reference_parts": ref.model_copy(update={"scores": moved})}))
    return bundle


def test_reference_parts_score_alike_at_load(tmp_path: Path) -> None:
    det = Detector(_with_reference_parts(build_max_bundle(tmp_path / "b")))
    assert det.precision == "int8" and det.warnings == ()


def test_an_int8_model_that_scores_the_reference_parts_differently_falls_back_or_is_refused(tmp_path: Path) -> None:
    """3% of the threshold off (tolerance 2%): the bundle's default int8 gives way to fp32 with a warning that
    names the difference; int8 asked for by name is refused; fp32 off as well refuses the bundle."""
    bundle = _with_reference_parts(build_max_bundle(tmp_path / "b", threshold=0.5), {"int8": 0.015})
    det = Detector(bundle)
    assert det.precision == "fp32" and len(det.warnings) == 1
    assert "reference parts differently" in det.warnings[0] and "3.0% of the threshold" in det.warnings[0]
    with pytest.raises(BundleError, match=r"int8 model scores .* reference parts differently.*refused"):
        Detector(bundle, precision="int8")
    assert Detector(bundle, precision="fp32").warnings == ()
    both = _with_reference_parts(build_max_bundle(tmp_path / "c", threshold=0.5), {"int8": 0.015, "fp32": 0.015})
    with pytest.raises(BundleError, match="fp32 model scores"):
        Detector(both)


def test_damaged_reference_parts_are_refused(tmp_path: Path) -> None:
    bundle = _with_reference_parts(build_max_bundle(tmp_path / "b"))
    (bundle / "reference_parts.npz").write_bytes(b"PK\x03\x04 not a zip")
    with pytest.raises(BundleError, match=r"reference_parts\.npz does not match its sha256"):
        Detector(bundle)
    with pytest.raises(BundleError, match=r"reference_parts\.npz cannot be read"):
        Detector(bundle, verify=False)
