"""What every runtime backend offers the Detector: run a float32 batch, check the graph's declared input."""

from __future__ import annotations

import numpy as np

from edged.bundle import BundleError


class RuntimeUnavailable(BundleError):
    """The runtime's library is not installed here (or cannot start); the message says what to install."""


class Backend:
    """One loaded model file in one inference library; `run` may be called from several threads at once."""

    provider: str  # what actually runs it, for logs and the health file (e.g. CPUExecutionProvider)

    def run(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """A contiguous float32 batch -> (scores [N], raw anomaly maps or None)."""
        raise NotImplementedError

    def check_input(self, row_shape: tuple[int, ...]) -> None:
        """Raise BundleError when the graph declares an input other than one prepared row (batch first)."""


def split_outputs(result: list[np.ndarray], n: int) -> tuple[np.ndarray, np.ndarray | None]:
    """The score and map outputs of one run as float32, whatever the library handed back."""
    scores = np.asarray(result[0], dtype=np.float32).reshape(n, -1)[:, 0]
    maps = np.asarray(result[1], dtype=np.float32) if len(result) > 1 else None
    return scores, maps


def check_declared_shape(name: str, shape: list[object], row_shape: tuple[int, ...]) -> None:
    """A graph input's declared shape (ints fixed, anything else dynamic) against one prepared row."""
    wanted = ["N", *row_shape]
    if len(shape) != len(wanted):
        raise BundleError(f"its input {name!r} has shape {shape}, the manifest says {wanted}")
    for axis, (have, want) in enumerate(zip(shape[1:], row_shape, strict=True), start=1):
        if isinstance(have, int) and have > 0 and have != want:
            raise BundleError(f"its input {name!r} has shape {shape}, the manifest says {wanted} "
                              f"(axis {axis}: {have} != {want}): input size, channels or features do not "
                              "match the model")
