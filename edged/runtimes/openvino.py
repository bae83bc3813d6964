"""OpenVINO (the `openvino` package, CPU plugin): on many x86 CPUs the fastest for convolutional bundles.

It reads the bundle's ONNX files as they are, int8 (QDQ) and fp32, so the daemon's preprocessing and
thresholds are unchanged. Numerics are pinned to fp32 (INFERENCE_PRECISION_HINT f32): on CPUs with bf16
units OpenVINO would otherwise run fp32 graphs in bf16 and the calibrated threshold would no longer hold.
One stream per calling thread's request, `threads` threads each, and no core pinning: the daemon's
capture and inference threads share the cores with it.
"""

from __future__ import annotations

import importlib.util
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from edged.bundle import BundleError, Manifest
from edged.runtimes.base import Backend, RuntimeUnavailable, check_declared_shape, split_outputs

STREAMS = 2  # concurrent inferences (one per worker thread, two workers by default); more only queue


def installed() -> bool:
    """Whether the openvino package is here (the optional extra `edged[openvino]`): found, not imported, so a
    daemon that runs another runtime does not carry OpenVINO's libraries (about 25 MB of RSS)."""
    if "openvino" in sys.modules:
        return True
    try:
        return importlib.util.find_spec("openvino") is not None
    except (ImportError, ValueError):
        return False


def version() -> str:
    """The installed OpenVINO version, for the manifest's verification record."""
    import openvino

    return str(openvino.__version__)


def cpu_name() -> str:
    """The CPU as OpenVINO's CPU plugin names it (the manifest compares timings only on the same CPU)."""
    import openvino

    return str(openvino.Core().get_property("CPU", "FULL_DEVICE_NAME"))


class OpenVINOBackend(Backend):
    """One CompiledModel on the CPU plugin; each calling thread gets its own InferRequest (not thread-safe)."""

    def __init__(self, path: Path, manifest: Manifest, threads: int) -> None:
        try:
            import openvino
        except ImportError:
            raise RuntimeUnavailable("openvino is not installed here (pip install 'edged[openvino]')") from None
        core = openvino.Core()
        config: dict[str, Any] = {
            "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": STREAMS, "INFERENCE_PRECISION_HINT": "f32",
            "ENABLE_CPU_PINNING": False,
        }
        if threads > 0:
            config["INFERENCE_NUM_THREADS"] = threads * STREAMS
        try:
            self.compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with its own text
            raise BundleError(f"model {path}: OpenVINO cannot load it: {_last_line(exc)}") from None
        self.provider = "openvino-cpu"
        self.input_name = manifest.input.name
        names = {name for port in self.compiled.outputs for name in port.get_names()}
        self.outputs = [manifest.outputs.score] + ([manifest.outputs.map] if manifest.outputs.map else [])
        for name in self.outputs:
            if name not in names:
                raise BundleError(f"model {path}: no output named {name!r} (has {sorted(names)})")
        inputs = {name: port for port in self.compiled.inputs for name in port.get_names()}
        if self.input_name not in inputs:
            raise BundleError(f"model {path}: no input named {self.input_name!r}")
        self._input = inputs[self.input_name]
        self._local = threading.local()

    def check_input(self, row_shape: tuple[int, ...]) -> None:
        """The graph's declared input (element type, rank, static sizes) against the manifest's, as prepared."""
        kind = self._input.get_element_type().get_type_name()
        if kind != "f32":
            raise BundleError(f"its input {self.input_name!r} is {kind}, but the daemon feeds float32")
        shape: list[object] = [d.get_length() if d.is_static else "?" for d in self._input.get_partial_shape()]
        check_declared_shape(self.input_name, shape, row_shape)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """One synchronous inference on this thread's own request."""
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        result = request.infer({self.input_name: batch})
        return split_outputs([np.array(result[name]) for name in self.outputs], batch.shape[0])


def _last_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(exc).__name__
