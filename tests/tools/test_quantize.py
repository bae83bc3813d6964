"""int8 QDQ quantization of a small conv model: int8 scores track fp32 scores."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from tools.methods.base import QuantizeOptions
from tools.quantize import op_summary, quantize


def _conv_model(path: Path, size: int = 24) -> None:
    """input -> Conv(4, 3x3) -> Relu -> Conv(1, 1x1) -> map; score = mean of the map."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.5, (1, 4, 1, 1)).astype(np.float32)
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, size, size])
    amap = helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["N", 1, size, size])
    score = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])
    nodes = [
        helper.make_node("Conv", ["input", "w1"], ["h"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Conv", ["r", "w2"], ["anomaly_map"]),
        helper.make_node("ReduceMean", ["anomaly_map"], ["score"], keepdims=0, axes=[1, 2, 3]),
    ]
    graph = helper.make_graph(nodes, "conv", [x], [score, amap],
                              [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _images(n: int, seed: int, size: int = 24) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.uniform(0.2, 0.8, (n, 1, 1, 1)).astype(np.float32)  # brightness varies: scores spread
    return np.clip(base + rng.normal(0, 0.1, (n, 1, size, size)), 0, 1).astype(np.float32)


def test_int8_scores_track_fp32(tmp_path: Path) -> None:
    fp32, int8 = tmp_path / "m.fp32.onnx", tmp_path / "m.onnx"
    _conv_model(fp32)
    info = quantize(fp32, int8, _images(32, 1), "input", QuantizeOptions())
    assert info["format"] == "QDQ" and info["per_channel"] and info["calibration_images"] == 32
    assert info["ops"]["int8"].get("Conv") == 2  # both convolutions run on int8 inputs
    kinds = {n.op_type for n in onnx.load(str(int8)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= kinds
    test = _images(40, 2)
    a = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(["score"], {"input": test})[0]
    b = ort.InferenceSession(str(int8), providers=["CPUExecutionProvider"]).run(["score"], {"input": test})[0]
    assert np.std(a) > 0.01
    assert np.corrcoef(a, b)[0, 1] > 0.99
    assert not np.array_equal(a, b)  # it really is another model


def test_options_exclude_nodes(tmp_path: Path) -> None:
    fp32, int8 = tmp_path / "m.fp32.onnx", tmp_path / "m.onnx"
    _conv_model(fp32)
    quantize(fp32, int8, _images(8, 1), "input", QuantizeOptions(op_types=["Conv"], per_channel=False))
    summary = op_summary(int8)
    assert summary["int8"].get("Conv") == 2
    assert "ReduceMean" in summary["fp32"]
