"""int8 QDQ quantization of a small conv model: int8 scores track fp32 scores; zero Pads fold into convolutions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from tools.methods.base import QuantizeOptions
from tools.quantize import fold_pads, op_summary, quantize


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
    # 7-bit weights (the default, said here because it matters): this toy model's inputs span 0-1 and its weights
    # are large, so with 8 bits a CPU without VNNI saturates its 16-bit sums (correlation 0.971 there)
    info = quantize(fp32, int8, _images(32, 1), "input", QuantizeOptions(reduce_range=True))
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


def _padded_model(path: Path, size: int = 24, as_torch_exports: bool = False) -> None:
    """TensorFlow SAME padding of a strided conv: a zero Pad (bottom/right only) then a Conv without pads; beside
    it an edge-mode Pad (a smoothing's) that must stay. `as_torch_exports`: the amounts computed in the graph
    (here a Cast of a constant) with an empty constant_value, which ONNX Runtime's own PadFusion leaves alone."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.5, (4, 1, 3, 3)).astype(np.float32)
    w2 = rng.normal(0, 0.5, (1, 4, 3, 3)).astype(np.float32)
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, size, size])
    amap = helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, None)
    score = helper.make_tensor_value_info("score", TensorProto.FLOAT, None)
    same = np.array([0, 0, 0, 0, 0, 0, 1, 1], np.int64)
    computed = [helper.make_node("Constant", [], ["same32"], value=numpy_helper.from_array(same.astype(np.int32))),
                helper.make_node("Cast", ["same32"], ["same"], to=TensorProto.INT64)] if as_torch_exports else []
    nodes = [
        *computed,
        helper.make_node("Pad", ["input", "same", ""], ["padded"], mode="constant"),
        helper.make_node("Conv", ["padded", "w1"], ["h"], strides=[2, 2]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Pad", ["r", "edge"], ["r_edge"], mode="edge"),
        helper.make_node("Conv", ["r_edge", "w2"], ["anomaly_map"]),
        helper.make_node("ReduceMean", ["anomaly_map"], ["score"], keepdims=0, axes=[1, 2, 3]),
    ]
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2"),
             numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "edge")]
    if not as_torch_exports:
        inits.append(numpy_helper.from_array(same, "same"))
    graph = helper.make_graph(nodes, "padded", [x], [score, amap], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _run(path: Path, images: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(["anomaly_map"],
                                                                                  {"input": images})[0]


def test_a_zero_pad_folds_into_its_convolution_and_the_graph_computes_the_same(tmp_path: Path) -> None:
    """An asymmetric zero Pad before a strided Conv becomes the Conv's own pads (same output); an edge Pad,
    which a Conv cannot do, stays."""
    before, after = tmp_path / "before.onnx", tmp_path / "after.onnx"
    _padded_model(before)
    after.write_bytes(before.read_bytes())
    assert fold_pads(after) == 1
    nodes = onnx.load(str(after)).graph.node
    assert [n.attribute[0].s for n in nodes if n.op_type == "Pad"] == [b"edge"]
    conv = next(n for n in nodes if n.op_type == "Conv" and n.input[0] == "input")
    assert list(next(a for a in conv.attribute if a.name == "pads").ints) == [0, 0, 1, 1]
    test = _images(6, 3)
    np.testing.assert_allclose(_run(after, test), _run(before, test), rtol=0, atol=1e-6)
    assert fold_pads(after) == 0  # nothing left to fold: the file is not rewritten


def test_quantize_folds_the_pads_so_the_int8_graph_has_none_between_its_convolutions(tmp_path: Path) -> None:
    fp32, int8 = tmp_path / "m.fp32.onnx", tmp_path / "m.onnx"
    _padded_model(fp32, as_torch_exports=True)
    info = quantize(fp32, int8, _images(16, 1), "input", QuantizeOptions(reduce_range=True))  # as above
    assert info["pads_folded"] == 1
    assert [n.op_type for n in onnx.load(str(int8)).graph.node].count("Pad") == 1  # the edge Pad only
    assert [n.op_type for n in onnx.load(str(fp32)).graph.node].count("Pad") == 2  # the fp32 file as exported
    test = _images(40, 2)
    assert np.corrcoef(_run(fp32, test).ravel(), _run(int8, test).ravel())[0, 1] > 0.98


def test_reduce_range_quantizes_the_weights_to_7_bits(tmp_path: Path) -> None:
    """x86 CPUs without VNNI add int8 pairs into 16 bits (VPMADDUBSW) and can saturate with full 8-bit weights;
    7-bit weights cannot. The option does what it says, and the manifest records it."""
    fp32 = tmp_path / "m.fp32.onnx"
    _conv_model(fp32)
    for reduce_range, bound in ((True, 64), (False, 128)):
        int8 = tmp_path / f"m{reduce_range}.onnx"
        info = quantize(fp32, int8, _images(32, 1), "input", QuantizeOptions(reduce_range=reduce_range))
        assert info["reduce_range"] is reduce_range
        weights = [numpy_helper.to_array(i) for i in onnx.load(str(int8)).graph.initializer
                   if i.name.endswith("_quantized")]
        assert weights and all(w.dtype == np.int8 for w in weights)
        peak = max(int(np.abs(w.astype(np.int32)).max()) for w in weights)
        assert bound // 2 <= peak <= bound, (reduce_range, peak)  # the largest weight uses the range it has
    assert QuantizeOptions().reduce_range  # the default (measured in docs/patchcore.md)
