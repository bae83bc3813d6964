"""Fixtures for tools/ tests: small generated datasets and a tiny image method that quantizes.

`BandMethod` is a real, if simple, anomaly detector (how far a smoothed image leaves the band of values
good parts take near each pixel) exported as an ONNX graph with a Conv, so the whole pipeline (fit, int8
QDQ quantization, thresholds, maps, evaluation) runs in about a second without torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edged.bundle import InputSpec, OutputSpec
from edged.preprocess import to_tensor
from tools import synth
from tools.methods.base import FitOptions, QuantizeOptions
from tools.methods.registry import register_method


def _smooth_kernel() -> np.ndarray:
    k = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32)
    return (k / k.sum()).reshape(1, 1, 3, 3)


@dataclass
class BandTrained:
    spec: InputSpec
    low: np.ndarray  # 1xHxW: lowest smoothed value good parts reach near each pixel
    high: np.ndarray
    outputs: OutputSpec = field(default_factory=lambda: OutputSpec(score="score", map="anomaly_map"))
    params: dict[str, Any] = field(default_factory=lambda: {"kind": "band"})
    quantize: QuantizeOptions = field(default_factory=QuantizeOptions)

    def export_onnx(self, path: Path) -> None:
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        c, h, w = self.spec.channels, self.spec.height, self.spec.width
        x = helper.make_tensor_value_info(self.spec.name, TensorProto.FLOAT, ["N", c, h, w])
        amap = helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["N", 1, h, w])
        score = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])
        inits = [numpy_helper.from_array(_smooth_kernel(), "kernel"),
                 numpy_helper.from_array(self.low[None].astype(np.float32), "low"),
                 numpy_helper.from_array(self.high[None].astype(np.float32), "high")]
        nodes = [
            helper.make_node("Conv", [self.spec.name, "kernel"], ["smooth"], pads=[1, 1, 1, 1]),
            helper.make_node("Sub", ["smooth", "high"], ["above"]),
            helper.make_node("Sub", ["low", "smooth"], ["below"]),
            helper.make_node("Relu", ["above"], ["above_pos"]),
            helper.make_node("Relu", ["below"], ["below_pos"]),
            helper.make_node("Add", ["above_pos", "below_pos"], ["anomaly_map"]),
            helper.make_node("ReduceMax", ["anomaly_map"], ["score"], keepdims=0, axes=[1, 2, 3]),
        ]
        model = helper.make_model(helper.make_graph(nodes, "band", [x], [score, amap], inits),
                                  opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        onnx.checker.check_model(model)
        onnx.save(model, str(path))


class BandMethod:
    """Good parts' per-pixel band (mean -/+ 3 std, widened over 5x5 to tolerate position jitter)."""

    name = "band-test"

    def input_spec(self, opts: FitOptions) -> InputSpec:
        return InputSpec(width=opts.size, height=opts.size, channels=1, color_order="gray")

    def fit(self, images: list[np.ndarray], opts: FitOptions) -> BandTrained:
        import cv2

        spec = self.input_spec(opts)
        smooth = np.stack([cv2.filter2D(to_tensor(im, spec)[0], -1, _smooth_kernel()[0, 0],
                                        borderType=cv2.BORDER_CONSTANT) for im in images])
        mean, std = smooth.mean(axis=0), smooth.std(axis=0) + 0.01
        box = np.ones((5, 5), np.uint8)
        high = cv2.dilate((mean + 3 * std).astype(np.float32), box)
        low = cv2.erode((mean - 3 * std).astype(np.float32), box)
        return BandTrained(spec=spec, low=low[None], high=high[None])


BAND = BandMethod()
register_method(BAND)


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MVTec-layout dataset of 64 px color parts (30 train, 8 good and 9 defective test images)."""
    return synth.write_dataset(tmp_path_factory.mktemp("synth") / "data", n_train=30, n_test_good=8,
                               n_test_defect=9, size=(64, 64), seed=0)


class MeanDistanceMethod(BandMethod):
    """How far a part leaves the mean good part (a zero-width band): every score is positive and they
    differ from image to image, as real methods' do (the band's are mostly exactly 0), so the outlier
    checks of fit and calibrate have a spread to judge by."""

    name = "mean-distance-test"

    def fit(self, images: list[np.ndarray], opts: FitOptions) -> BandTrained:
        band = super().fit(images, opts)
        middle = (band.low + band.high) / 2
        return BandTrained(spec=band.spec, low=middle, high=middle)


register_method(MeanDistanceMethod())


def write_good(folder: Path, n: int, size: int = 48, seed: int = 0, odd: int = 0) -> Path:
    """`n` good parts, and `odd` parts of another product (the good part's negative) named ``odd_*.png``."""
    import cv2

    synth.write_folder(folder, n, [], size=(size, size), seed=seed)
    rng = np.random.default_rng(seed + 1000)
    for i in range(odd):
        cv2.imwrite(str(folder / f"odd_{i}.png"), 255 - synth.make_part(rng, (size, size))[0])
    return folder
