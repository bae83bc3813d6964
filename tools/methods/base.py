"""The contract between the shared training pipeline (`tools/fit.py`) and each detector method.

The pipeline loads and splits the data, prepares every image with `edged.preprocess.prepare_uint8`
(the daemon's own code) using the method's `InputSpec`, then calls `Method.fit`. What comes back can
export itself as ONE fp32 ONNX graph whose outputs are the image score (higher = more anomalous) and,
for image models, the anomaly map at input size. Quantization, calibration, the manifest and the
evaluation are shared code and never method-specific except through `QuantizeOptions`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edged.bundle import InputSpec, OutputSpec

# What every method accepts unless it declares its own limits (attributes of the method object):
# ``min_size``/``max_size``/``size_multiple`` (--size), ``min_images`` (training images after the hold-out).
MIN_SIZE = 16  # below this no method sees more than a blur: a 7 px model is a degenerate one
MAX_SIZE = 2048  # the manifest allows 4096; beyond 2048 px every method runs out of memory or time on a CPU
MIN_IMAGES = 8  # good images to train on; fewer gives a model of a handful of parts, not of the product


@dataclass
class FitOptions:
    """The options every method takes (`--size`, `--seed`, `--epochs`, `--opt`), passed to `Method.fit`."""

    size: int = 128  # model input width in pixels (and height, unless `height` is given)
    height: int | None = None  # model input height; None: square (size x size)
    seed: int = 0
    epochs: int | None = None  # None: the method's default
    extra: dict[str, Any] = field(default_factory=dict)  # method options from --opt KEY=VALUE
    progress: bool = True  # show a progress bar (tqdm)
    # the images passed hold this many copies of each original after the originals (`tools.fit.with_copies`:
    # `--augment-light`'s light copies, then `--augment-jpeg`'s encoded one)
    copies: int = 0
    # original training image i as each other way the camera may deliver it (the fit's calibration variants:
    # through JPEG, under the light corners), prepared like the images passed; None: the fit calibrates as stored.
    # For methods whose score units come from training images: units of good parts as they will arrive
    camera_copies: Callable[[int], list[np.ndarray]] | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(width, height) of the model input."""
        return self.size, self.height if self.height is not None else self.size


@dataclass
class QuantizeOptions:
    """How `tools/quantize.py` should make the int8 model of this method."""

    enabled: bool = True
    per_channel: bool = True
    op_types: list[str] | None = None  # None: onnxruntime's default set
    nodes_to_exclude: list[str] = field(default_factory=list)
    calibrate_method: str = "MinMax"  # MinMax | Entropy | Percentile
    # 7-bit weights. ONNX Runtime's int8 convolutions on x86 CPUs without VNNI (AVX2 only, as many industrial PCs)
    # add pairs of products into 16 bits (VPMADDUBSW), which saturates when inputs and weights both use their full
    # range. Measured on such a CPU: the tiles' default bundle int8 image AUROC 0.871 with 8-bit weights (fp32
    # 0.965), 0.964 with 7; rail 0.990 / 0.984. A bundle is quantized once and must score alike on every station
    reduce_range: bool = True
    extra_options: dict[str, Any] = field(default_factory=dict)


class Trained(Protocol):
    """A fitted detector, ready for export."""

    spec: InputSpec
    outputs: OutputSpec
    params: dict[str, Any]  # what the manifest records about training (epochs, loss, ...)
    quantize: QuantizeOptions

    def export_onnx(self, path: Path) -> None:
        """Write the fp32 graph: input `spec.name` (N x ...) -> outputs named in `outputs`."""
        ...


class Method(Protocol):
    """A detector method as `--method NAME` runs it (tools/methods/registry.py lists them).

    Optional attributes the pipeline reads with defaults: ``min_size``/``max_size``, ``min_images``,
    ``default_size``, ``non_square``, ``options`` (its ``--opt`` table), ``auto_light_copies`` (the light copies
    `--augment-light auto` gives it where the light is not normalized; 0 unless measured worth its fit time),
    ``auto_encoded_copies`` (whether `--augment-jpeg auto` gives it an encoded copy of lossless images; False)."""

    name: str

    def input_spec(self, opts: FitOptions) -> InputSpec:
        """How images must be prepared for this method at these options."""
        ...

    def fit(self, images: list[np.ndarray], opts: FitOptions) -> Trained:
        """Learn from good images, already prepared as uint8 HxW(xC) at `input_spec(opts)`."""
        ...
