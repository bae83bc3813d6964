"""ONNX Runtime: the reference runtime (every bundle's thresholds are calibrated on its scores)."""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edged.bundle import BundleError, Manifest
from edged.runtimes.base import Backend, RuntimeUnavailable, check_declared_shape, split_outputs

log = logging.getLogger("edged.detector")

PROVIDER_NAMES = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "cpu": "CPUExecutionProvider",
}


def installed() -> bool:
    """Whether the onnxruntime package imports here."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def version() -> str:
    """The installed onnxruntime version, for the manifest's verification record."""
    import onnxruntime

    return str(onnxruntime.__version__)


class OrtBackend(Backend):
    """One InferenceSession; ONNX Runtime lets several threads call run() on it at once."""

    def __init__(self, path: Path, manifest: Manifest, providers: Sequence[str], threads: int) -> None:
        try:
            import onnxruntime as ort
        except ImportError:
            raise RuntimeUnavailable("onnxruntime is not installed (pip install onnxruntime); or set "
                                     "model.runtime: opencv") from None
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
        check_declared_shape(declared.name, list(declared.shape or []), row_shape)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """One session.run over the batch."""
        return split_outputs(self.session.run(self.outputs, {self.input_name: batch}), batch.shape[0])


def _with_options(provider: str) -> str | tuple[str, dict[str, object]]:
    """TensorRT builds its engine at session start (minutes on a Jetson): cache it between restarts."""
    if provider != "TensorrtExecutionProvider":
        return provider
    cache = os.environ.get("CACHE_DIRECTORY", "").split(":")[0] or os.path.join(tempfile.gettempdir(), "edged-trt")
    return provider, {"trt_engine_cache_enable": True, "trt_engine_cache_path": cache, "trt_fp16_enable": True}
