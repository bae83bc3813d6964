"""OpenCV DNN: a deployment that needs nothing but OpenCV (fp32 graphs it was verified to run)."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np

from edged.bundle import BundleError, Manifest
from edged.runtimes.base import Backend, split_outputs


def version() -> str:
    """The installed OpenCV version, for the manifest's verification record."""
    return str(cv2.__version__)


class OpenCVBackend(Backend):
    """cv2.dnn. Not thread-safe, so calls are serialized."""

    def __init__(self, path: Path, manifest: Manifest) -> None:
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
        """One forward pass, under the lock."""
        with self._lock:
            self.net.setInput(batch, self.input_name)
            result = self.net.forward(self.outputs)
        return split_outputs(list(result), batch.shape[0])
