"""The runtimes by name: which are installed, their versions, and opening one for a model file."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from edged.bundle import Manifest, RuntimeName
from edged.runtimes import onnxruntime as ort_runtime
from edged.runtimes import openvino as ov_runtime
from edged.runtimes.base import Backend, RuntimeUnavailable

NAMES: tuple[RuntimeName, ...] = ("onnxruntime", "openvino", "opencv")  # the reference first
REFERENCE: RuntimeName = "onnxruntime"  # thresholds are calibrated on its scores
FP32_ONLY: frozenset[str] = frozenset({"opencv"})  # cv2.dnn cannot run QDQ int8 graphs reliably
# cv2.dnn runs one inference at a time (OpenCVBackend's lock), so its single-call time says nothing of what
# two workers get: `auto` takes it only where no concurrent runtime may run the bundle
SERIALIZED: frozenset[str] = frozenset({"opencv"})


def installed(name: str) -> bool:
    """Whether the runtime's library imports here (OpenCV always does: it is a runtime requirement)."""
    if name == "onnxruntime":
        return ort_runtime.installed()
    if name == "openvino":
        return ov_runtime.installed()
    return name == "opencv"


def version(name: str) -> str:
    """The runtime library's version string ('' when it is not installed)."""
    if not installed(name):
        return ""
    if name == "opencv":
        from edged.runtimes import opencv

        return opencv.version()
    return ov_runtime.version() if name == "openvino" else ort_runtime.version()


def open_backend(name: str, path: Path, manifest: Manifest, providers: Sequence[str], threads: int) -> Backend:
    """Load `path` in runtime `name`; RuntimeUnavailable when its library is missing, BundleError otherwise."""
    openers: dict[str, Callable[[], Backend]] = {
        "onnxruntime": lambda: ort_runtime.OrtBackend(path, manifest, providers, threads),
        "openvino": lambda: ov_runtime.OpenVINOBackend(path, manifest, threads),
        "opencv": lambda: _opencv(path, manifest),
    }
    if name not in openers:
        raise RuntimeUnavailable(f"unknown runtime {name!r} (known: {', '.join(NAMES)})")
    return openers[name]()


def _opencv(path: Path, manifest: Manifest) -> Backend:
    from edged.runtimes.opencv import OpenCVBackend

    return OpenCVBackend(path, manifest)
