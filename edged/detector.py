"""Runs a model bundle: frames in, (score, anomaly map) out.

One `Detector` owns one inference session, which ONNX Runtime allows several threads to run at
once. `tools/` scores calibration and test images through this same class, so the threshold is set on
exactly what the daemon computes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edged import features as feature_extractors
from edged.bundle import BundleError, Manifest, load_manifest, resolve_model
from edged.preprocess import prepare_uint8, to_tensor

log = logging.getLogger(__name__)

PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def _onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(frozen=True, slots=True)
class Output:
    """One frame's model output: the image score (compared with the threshold) and the anomaly map, if any."""

    score: float
    anomaly_map: np.ndarray | None  # HxW float32 at the model's input size


class Detector:
    """A loaded bundle ready to score frames. Thread-safe for `infer` calls."""

    def __init__(self, bundle_dir: str | Path, precision: str | None = None, runtime: str = "onnxruntime",
                 providers: Sequence[str] = ("cpu",), intra_op_threads: int = 1, verify: bool = True) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.manifest: Manifest = load_manifest(self.bundle_dir)
        self.precision = precision or self.manifest.default
        if runtime == "onnxruntime" and not _onnxruntime_available():
            log.warning("onnxruntime is not installed: running the model with OpenCV DNN instead")
            runtime = "opencv"
        if runtime == "opencv" and "opencv" not in self.manifest.runtimes:
            raise BundleError(f"model bundle {bundle_dir}: this model was not verified to run correctly under "
                              f"OpenCV DNN (manifest runtimes: {', '.join(self.manifest.runtimes)}); use "
                              "model.runtime: onnxruntime")
        if runtime == "opencv" and self.precision == "int8":
            # cv2.dnn cannot run QDQ int8 graphs reliably; the fp32 file carries the same model.
            log.info("runtime opencv: using the fp32 model of the bundle")
            self.precision = "fp32"
        entry = self.manifest.model(self.precision)
        self.model_path = resolve_model(self.bundle_dir, self.manifest, self.precision, verify=verify)
        self.threshold = entry.threshold.value
        self.map_threshold = entry.map_threshold
        self.spec = self.manifest.input
        self.runtime = runtime
        if self.spec.kind == "features":
            try:
                self._features = feature_extractors.get(self.spec.features or "")
            except KeyError:
                raise BundleError(f"model bundle {bundle_dir}: unknown feature extractor "
                                  f"{self.spec.features!r}") from None
        if runtime == "opencv":
            self._backend: _Backend = _OpenCVBackend(self.model_path, self.manifest)
        else:
            self._backend = _OrtBackend(self.model_path, self.manifest, providers, intra_op_threads)
        self.provider = self._backend.provider
        self.threads = intra_op_threads
        self._self_test()
        log.info("model %s (%s, %s) loaded from %s: runtime %s, provider %s, %d intra-op thread(s)",
                 self.manifest.bundle_id, self.manifest.method, self.precision, self.model_path.name,
                 runtime, self.provider, intra_op_threads)

    @property
    def bundle_id(self) -> str:
        """The bundle's id, recorded with every verdict so each row and message says which model decided."""
        return self.manifest.bundle_id

    def _self_test(self) -> None:
        """One inference on a black frame at load: a graph whose input does not match the manifest (size,
        channels, dtype) or that cannot run is refused now (exit 2), not by killing every worker on the
        first part. Its outputs must be finite and the map one per pixel of the input."""
        spec = self.spec
        blank = np.zeros((spec.height, spec.width) if spec.channels == 1 else (spec.height, spec.width, 3), np.uint8)
        where = f"model bundle {self.bundle_dir}: {self.model_path.name}"
        try:
            row = self.prepare(blank)
            self._backend.check_input(row.shape)
            scores, maps = self._backend.run(np.ascontiguousarray(row[None], dtype=np.float32))
        except BundleError as exc:
            raise BundleError(f"{where}: {exc}") from None
        except Exception as exc:  # ONNX Runtime and OpenCV raise their own types for a graph that cannot run
            text = str(exc).strip().splitlines()
            raise BundleError(f"{where}: a test inference on a blank {spec.width}x{spec.height} frame failed "
                              f"({text[-1] if text else type(exc).__name__}): does the manifest's input match "
                              "the model?") from None
        if scores.shape[0] != 1:
            raise BundleError(f"{where}: output {self.manifest.outputs.score!r} gave {scores.shape[0]} scores for "
                              "one frame")
        if not np.all(np.isfinite(scores)):
            raise BundleError(f"{where}: the score of a blank frame is {float(scores[0])}: the model is broken")
        if maps is not None:
            amap = maps[0]
            while amap.ndim > 2 and amap.shape[0] == 1:
                amap = amap[0]
            if amap.ndim != 2 or amap.size == 0:
                raise BundleError(f"{where}: anomaly map output {self.manifest.outputs.map!r} has shape "
                                  f"{tuple(maps.shape)}, not [N, 1, H, W] or [N, H, W]")
            if not np.all(np.isfinite(amap)):
                raise BundleError(f"{where}: the anomaly map of a blank frame is not finite: the model is broken")

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """Frame -> one model input row (CxHxW float32, or an F-vector for feature models)."""
        prepared = prepare_uint8(image, self.spec)
        if self.spec.kind == "features":
            return self._features(prepared)
        return to_tensor(prepared, self.spec)

    def infer(self, images: Sequence[np.ndarray]) -> list[Output]:
        """Score a batch of frames (BGR or gray uint8, any size)."""
        if not images:
            return []
        batch = np.stack([self.prepare(image) for image in images])
        return self.infer_tensor(batch)

    def infer_tensor(self, batch: np.ndarray) -> list[Output]:
        """Score an already prepared batch (N x model input)."""
        scores, maps = self._backend.run(np.ascontiguousarray(batch, dtype=np.float32))
        out = []
        for i in range(batch.shape[0]):
            amap = None
            if maps is not None:
                amap = maps[i]
                while amap.ndim > 2:
                    amap = amap[0]
            out.append(Output(float(scores[i]), amap))
        return out


class _Backend:
    provider: str

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        raise NotImplementedError

    def check_input(self, row_shape: tuple[int, ...]) -> None:
        """Raise BundleError when the graph declares an input other than one prepared row (batch first)."""


class _OrtBackend(_Backend):
    def __init__(self, path: Path, manifest: Manifest, providers: Sequence[str], threads: int) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise BundleError("onnxruntime is not installed; set model.runtime: opencv") from None
        available = ort.get_available_providers()
        wanted: list[str | tuple[str, dict[str, object]]] = [
            _with_options(PROVIDER_NAMES[p]) for p in providers if PROVIDER_NAMES[p] in available]
        missing = [p for p in providers if PROVIDER_NAMES[p] not in available]
        if missing:
            log.warning("execution provider(s) %s not available here (available: %s)",
                        ", ".join(missing), ", ".join(available))
        if not any(w == "CPUExecutionProvider" for w in wanted):
            wanted.append("CPUExecutionProvider")  # always a fallback rather than no inference
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3
        # Idle intra-op threads spin by default, burning the core another worker (or the capture
        # thread) needs on a small shared CPU; with one thread per session there is no pool at all.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=wanted)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise BundleError(f"model {path}: ONNX Runtime cannot load it: {exc}") from None
        self.provider = self.session.get_providers()[0]
        self.input_name = manifest.input.name
        names = [o.name for o in self.session.get_outputs()]
        if manifest.outputs.score not in names:
            raise BundleError(f"model {path}: no output named {manifest.outputs.score!r} (has {names})")
        self.outputs = [manifest.outputs.score]
        if manifest.outputs.map:
            if manifest.outputs.map not in names:
                raise BundleError(f"model {path}: no output named {manifest.outputs.map!r} (has {names})")
            self.outputs.append(manifest.outputs.map)
        inputs = {i.name: i for i in self.session.get_inputs()}
        if self.input_name not in inputs:
            raise BundleError(f"model {path}: no input named {self.input_name!r}")
        self._input = inputs[self.input_name]

    def check_input(self, row_shape: tuple[int, ...]) -> None:
        """The graph's declared input (type, rank, fixed sizes) against the manifest's, as prepared."""
        declared = self._input
        if declared.type != "tensor(float)":
            raise BundleError(f"its input {declared.name!r} is {declared.type}, but the daemon feeds float32 "
                              "(tensor(float))")
        shape = list(declared.shape or [])
        wanted = ["N", *row_shape]
        if len(shape) != len(wanted):
            raise BundleError(f"its input {declared.name!r} has shape {shape}, the manifest says {wanted}")
        for axis, (have, want) in enumerate(zip(shape[1:], row_shape, strict=True), start=1):
            if isinstance(have, int) and have > 0 and have != want:
                raise BundleError(f"its input {declared.name!r} has shape {shape}, the manifest says {wanted} "
                                  f"(axis {axis}: {have} != {want}): input size, channels or features do not "
                                  "match the model")

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        result = self.session.run(self.outputs, {self.input_name: batch})
        scores = np.asarray(result[0], dtype=np.float32).reshape(batch.shape[0], -1)[:, 0]
        maps = np.asarray(result[1], dtype=np.float32) if len(result) > 1 else None
        return scores, maps


def _with_options(provider: str) -> str | tuple[str, dict[str, object]]:
    """TensorRT builds its engine at session start (minutes on a Jetson): cache it between restarts."""
    if provider != "TensorrtExecutionProvider":
        return provider
    import os
    import tempfile

    cache = os.environ.get("CACHE_DIRECTORY", "").split(":")[0] or os.path.join(tempfile.gettempdir(), "edged-trt")
    return provider, {"trt_engine_cache_enable": True, "trt_engine_cache_path": cache, "trt_fp16_enable": True}


class _OpenCVBackend(_Backend):
    """cv2.dnn: a deployment that needs nothing but OpenCV. Not thread-safe, so calls are serialized."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
        import threading

        import cv2

        try:
            self.net = cv2.dnn.readNetFromONNX(str(path))
        except cv2.error as exc:
            raise BundleError(f"model {path}: OpenCV DNN cannot load it: {exc}") from None
        self.net.setPreferableBackend(cv2.dnn.DNN_BACKEND_OPENCV)
        self.net.setPreferableTarget(cv2.dnn.DNN_TARGET_CPU)
        self.provider = "opencv-dnn-cpu"
        self.outputs = [manifest.outputs.score] + ([manifest.outputs.map] if manifest.outputs.map else [])
        self.input_name = manifest.input.name
        self._lock = threading.Lock()
        # cv2.dnn imports graphs it cannot run and fails only at the first forward: try one now, so a
        # bundle that needs ONNX Runtime is refused at start (exit 2), not at the first part.
        spec = manifest.input
        if spec.kind == "features":
            return  # the feature width belongs to the extractor; the first frame checks it
        try:
            self.run(np.zeros((1, spec.channels, spec.height, spec.width), np.float32))
        except cv2.error as exc:
            raise BundleError(f"model {path}: OpenCV DNN cannot run this graph ({str(exc).strip().splitlines()[-1]}); "
                              "use model.runtime: onnxruntime") from None

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        with self._lock:
            self.net.setInput(batch, self.input_name)
            result = self.net.forward(self.outputs)
        scores = np.asarray(result[0], dtype=np.float32).reshape(batch.shape[0], -1)[:, 0]
        maps = np.asarray(result[1], dtype=np.float32) if len(result) > 1 else None
        return scores, maps
