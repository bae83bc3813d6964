"""The bundle manifest: paths stay inside the bundle folder, every number is finite and in range."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from devkit.support import JsonObject, build_max_bundle, json_object
from edged.bundle import BundleError, load_manifest, resolve_model
from edged.detector import Detector


def edit_manifest(bundle: Path, change: Callable[[JsonObject], None]) -> None:
    """Rewrite manifest.json after change(raw dict) (NaN/Infinity written as JSON's non-standard tokens)."""
    path = bundle / "manifest.json"
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


def test_the_test_bundle_loads(tmp_path: Path) -> None:
    bundle = build_max_bundle(tmp_path / "b")
    assert resolve_model(bundle, load_manifest(bundle)) == (bundle / "model.onnx").resolve()


@pytest.mark.parametrize("name", ["../outside.onnx", "../../etc/passwd", "/etc/passwd", "sub/../../x.onnx",
                                  "C:\\models\\x.onnx", "..\\x.onnx"])
def test_model_paths_that_leave_the_bundle_are_refused(tmp_path: Path, name: str) -> None:
    bundle = build_max_bundle(tmp_path / "b")
    edit_manifest(bundle, lambda raw: raw["models"]["int8"].update(file=name))
    with pytest.raises(BundleError, match="inside the bundle folder"):
        load_manifest(bundle)


def test_a_model_symlinked_outside_the_bundle_is_refused(tmp_path: Path) -> None:
    bundle = build_max_bundle(tmp_path / "b")
    outside = tmp_path / "elsewhere.onnx"
    (bundle / "model.onnx").rename(outside)
    os.symlink(outside, bundle / "model.onnx")
    with pytest.raises(BundleError, match="points outside the bundle folder"):
        Detector(bundle)
    with pytest.raises(BundleError, match="points outside"):
        Detector(bundle, verify=False)


def test_a_manifest_symlinked_outside_the_bundle_is_refused(tmp_path: Path) -> None:
    bundle = build_max_bundle(tmp_path / "b")
    outside = tmp_path / "manifest.json"
    (bundle / "manifest.json").rename(outside)
    os.symlink(outside, bundle / "manifest.json")
    with pytest.raises(BundleError, match=r"manifest\.json points outside the bundle folder"):
        load_manifest(bundle)


def test_a_bundle_folder_that_is_itself_a_link_is_fine(tmp_path: Path) -> None:
    """models/current -> models/line1-v3 is how bundles are deployed; links inside it that stay inside too."""
    bundle = build_max_bundle(tmp_path / "line1-v3")
    os.symlink(bundle, tmp_path / "current")
    (bundle / "model.onnx").rename(bundle / "model-v3.onnx")
    os.symlink("model-v3.onnx", bundle / "model.onnx")
    assert Detector(tmp_path / "current").infer([__import__("numpy").zeros((8, 8), "uint8")])[0].score == 0.0


@pytest.mark.parametrize(("where", "value", "expected"), [
    (("models", "int8", "threshold", "value"), float("nan"), "models.int8.threshold.value: Input should be a finite"),
    (("models", "int8", "threshold", "value"), float("inf"), "models.int8.threshold.value: Input should be a finite"),
    (("models", "fp32", "map_threshold"), float("-inf"), "models.fp32.map_threshold: Input should be a finite"),
    (("input", "scale"), float("nan"), "input.scale"),
    (("input", "scale"), 0, "input.scale: Input should be greater than 0"),
    (("input", "mean"), [float("nan")], "input.mean.0: Input should be a finite"),
    (("input", "std"), [float("inf")], "input.std.0: Input should be a finite"),
    (("models", "int8", "threshold", "percentile"), 250.0, "percentile: Input should be less than or equal to 100"),
    (("models", "int8", "threshold", "expected_frr"), -0.5, "expected_frr: Input should be greater than or equal"),
    (("models", "int8", "threshold", "frr_interval"), [0.5, 0.1], "frr_interval"),
    (("models", "int8", "threshold", "n_images"), -3, "n_images"),
])
def test_manifest_numbers_are_finite_and_in_range(tmp_path: Path, where: tuple[str, ...], value: object,
                                                  expected: str) -> None:
    bundle = build_max_bundle(tmp_path / "b")

    def change(raw: JsonObject) -> None:
        node = raw
        for key in where[:-1]:
            node = json_object(node[key])
        node[where[-1]] = value

    edit_manifest(bundle, change)
    with pytest.raises(BundleError) as exc:
        load_manifest(bundle)
    assert expected in str(exc.value)


def test_check_config_refuses_a_nan_threshold_with_exit_2(tmp_path: Path) -> None:
    bundle = build_max_bundle(tmp_path / "b")
    edit_manifest(bundle, lambda raw: raw["models"]["int8"]["threshold"].update(value=float("nan")))
    cfg = tmp_path / "edged.yaml"
    cfg.write_text(f"model: {{bundle: {bundle}}}\ncameras: [{{name: c, source: '0'}}]\n")
    proc = subprocess.run([sys.executable, "-m", "edged", "check-config", "-c", str(cfg)], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "threshold.value: Input should be a finite number" in proc.stderr


def test_a_record_key_from_a_newer_edged_train_is_dropped_and_the_bundle_loads(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Training summaries, runtime checks and input statistics only record what was done: a key this edged does
    not know there costs nothing, so a bundle from a newer edged-train still runs on an older station; the
    runtimes it leaves out are logged, so nobody wonders why a verified one is never used."""
    bundle = build_max_bundle(tmp_path / "b")

    def change(raw: JsonObject) -> None:
        json_object(raw["training"])["augmentation"] = {"future": True}
        raw["verified"] = [{"runtime": "onnxruntime", "precision": "int8", "passed": True, "max_diff": 0.0,
                            "tolerance": 0.01, "energy_mj": 3.0},
                           {"runtime": "tensorrt", "precision": "int8", "passed": True, "tolerance": 0.01}]
        raw["runtimes"] = ["onnxruntime", "tensorrt", "x\nfake log line"]

    edit_manifest(bundle, change)
    with caplog.at_level(logging.INFO, logger="edged.bundle"):
        manifest = load_manifest(bundle)
    assert manifest.runtimes == ("onnxruntime",)  # a runtime this edged cannot run is left out, not an error
    (line,) = [r.getMessage() for r in caplog.records if "does not know" in r.getMessage()]
    assert "tensorrt" in line and "\n" not in line  # the outside text is escaped: one log line
    assert [c.runtime for c in manifest.verified] == ["onnxruntime"]
    assert "augmentation" not in manifest.training.model_dump()


@pytest.mark.parametrize("where", [("input",), ("models", "int8", "threshold"), ("outputs",), ()])
def test_a_scoring_key_from_a_newer_edged_train_is_refused_saying_so(tmp_path: Path, where: tuple[str, ...]) -> None:
    """A key in a section that decides how frames are scored cannot be ignored: the message says to update."""
    bundle = build_max_bundle(tmp_path / "b")

    def change(raw: JsonObject) -> None:
        node = raw
        for key in where:
            node = json_object(node[key])
        node["contrast_stretch"] = "clahe"

    edit_manifest(bundle, change)
    with pytest.raises(BundleError) as exc:
        load_manifest(bundle)
    message = str(exc.value)
    assert ".".join((*where, "contrast_stretch")) in message
    assert "newer edged-train" in message and "update edged" in message
