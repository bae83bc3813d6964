"""fp32 ONNX -> int8 ONNX: static QDQ quantization with onnxruntime.quantization.

Static (not dynamic) so activations get fixed scales from real data: a calibration reader feeds prepared
training images (the same pixels the daemon computes). QDQ format, per-channel weights, what the method's
`QuantizeOptions` asks for. ``quant_pre_process`` (shape inference + graph optimization) runs first
because the quantizer needs shapes to choose what it can quantize; when it fails on a graph, the
quantizer runs on the plain graph instead and the summary says so. Then `fold_pads` moves zero Pads into
the convolutions they feed (TensorFlow's SAME padding of a strided convolution is asymmetric, which
PyTorch's conv cannot express, so it is exported as Pad + Conv): left alone, each such Pad runs in fp32
between a DequantizeLinear and a QuantizeLinear.
"""

from __future__ import annotations

import logging
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from tools.methods.base import QuantizeOptions

log = logging.getLogger(__name__)

QDQ_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"})


class _CalibrationReader:
    """Feeds calibration batches to onnxruntime's calibrator (a `CalibrationDataReader`)."""

    def __init__(self, input_name: str, data: np.ndarray, batch_size: int) -> None:
        self.input_name = input_name
        self.batches = [np.ascontiguousarray(data[i:i + batch_size], dtype=np.float32)
                        for i in range(0, len(data), batch_size)]
        self._next = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        """The next batch as {input name: float32 array}; None when all were given (onnxruntime's protocol)."""
        if self._next >= len(self.batches):
            return None
        batch = self.batches[self._next]
        self._next += 1
        return {self.input_name: batch}


def _fixed_batch(model_path: Path, input_name: str) -> int | None:
    """The graph's batch size when it is a fixed number (the reader must then feed exactly that many)."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    for inp in model.graph.input:
        if inp.name == input_name:
            dims = inp.type.tensor_type.shape.dim
            if dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
                return int(dims[0].dim_value)
    return None


def op_summary(model_path: Path) -> dict[str, dict[str, int]]:
    """Which op types run in int8 and which stay fp32.

    An op runs in int8 when it is a QDQ "node unit": its inputs come from DequantizeLinear and every
    output goes into QuantizeLinear, which is what ONNX Runtime fuses into an integer kernel.
    """
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    produced_by = {out: node.op_type for node in model.graph.node for out in node.output}
    consumers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node.op_type)
    quantized: Counter[str] = Counter()
    floating: Counter[str] = Counter()
    for node in model.graph.node:
        if node.op_type in QDQ_OPS:
            continue
        fed = any(produced_by.get(i) == "DequantizeLinear" for i in node.input)
        feeds = all(consumers.get(o) and all(c == "QuantizeLinear" for c in consumers[o]) for o in node.output)
        (quantized if fed and feeds else floating)[node.op_type] += 1
    return {"int8": dict(sorted(quantized.items())), "fp32": dict(sorted(floating.items()))}


def _zero_pad_of(pad: Any, constants: dict[str, np.ndarray]) -> list[int] | None:
    """A Pad node's [top, left, bottom, right] when it adds zeros around H and W only; None otherwise."""
    import onnx

    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in pad.attribute}
    if attrs.get("mode", b"constant") != b"constant" or len(pad.input) < 2 or pad.input[1] not in constants:
        return None
    if len(pad.input) > 3 and pad.input[3]:  # explicit axes: not the plain NCHW form
        return None
    if len(pad.input) > 2 and pad.input[2]:
        value = constants.get(pad.input[2])
        if value is None or np.any(value != 0):
            return None
    pads = [int(v) for v in constants[pad.input[1]].ravel()]
    if len(pads) != 8 or any(v < 0 for v in pads) or any(pads[i] for i in (0, 1, 4, 5)):
        return None
    return [pads[2], pads[3], pads[6], pads[7]]


def _add_pads(conv: Any, extra: list[int]) -> bool:
    """Add [top, left, bottom, right] to a 2-D Conv's explicit pads; False (unchanged) for any other Conv."""
    import onnx

    attrs = {a.name: a for a in conv.attribute}
    auto_pad = onnx.helper.get_attribute_value(attrs["auto_pad"]) if "auto_pad" in attrs else b"NOTSET"
    own = list(onnx.helper.get_attribute_value(attrs["pads"])) if "pads" in attrs else [0, 0, 0, 0]
    if auto_pad not in (b"NOTSET", b"") or len(own) != 4:
        return False
    if "pads" in attrs:
        conv.attribute.remove(attrs["pads"])
    conv.attribute.append(onnx.helper.make_attribute("pads", [a + b for a, b in zip(own, extra, strict=True)]))
    return True


def fold_pads(path: Path) -> int:
    """Fold each zero Pad whose only reader is a Conv (as its data input) into that Conv's own pads; the graph
    computes the same, with fewer nodes. Returns how many were folded; the file is rewritten only then."""
    import onnx

    model = onnx.load(str(path))
    graph = model.graph
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    readers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    folded = []
    for pad in graph.node:
        if pad.op_type != "Pad" or pad.output[0] in outputs:
            continue
        extra = _zero_pad_of(pad, constants)
        users = readers.get(pad.output[0], [])
        if extra is None or len(users) != 1 or users[0].op_type != "Conv" or users[0].input[0] != pad.output[0]:
            continue
        if _add_pads(users[0], extra):
            users[0].input[0] = pad.input[0]
            folded.append(pad)
    for pad in folded:
        graph.node.remove(pad)
    if folded:
        onnx.save(model, str(path))
    return len(folded)


def quantize(fp32_path: Path, int8_path: Path, calibration: np.ndarray, input_name: str,
             options: QuantizeOptions, batch_size: int = 8) -> dict[str, Any]:
    """Write the int8 (QDQ) model of `fp32_path` calibrated on `calibration` (N x model input, float32).

    Returns what was done, for the manifest's ``quantization`` field.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if len(calibration) == 0:
        raise ValueError("no calibration data for quantization")
    fixed = _fixed_batch(fp32_path, input_name)
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    try:
        calibrate_method = methods[options.calibrate_method.lower()]
    except KeyError:
        raise ValueError(f"unknown calibrate_method {options.calibrate_method!r} "
                         f"(use {', '.join(m for m in ('MinMax', 'Entropy', 'Percentile'))})") from None
    extra = dict(options.extra_options)
    activation_type = QuantType[str(extra.pop("ActivationType", "QInt8"))]
    weight_type = QuantType[str(extra.pop("WeightType", "QInt8"))]
    summary: dict[str, Any] = {
        "enabled": True, "format": "QDQ", "per_channel": options.per_channel,
        "calibrate_method": options.calibrate_method, "calibration_images": len(calibration),
        "reduce_range": options.reduce_range,
        "activation_type": activation_type.name, "weight_type": weight_type.name,
        "op_types": options.op_types, "nodes_to_exclude": list(options.nodes_to_exclude),
    }
    with tempfile.TemporaryDirectory(prefix="edged-quant-") as tmp:
        source = fp32_path
        try:
            from onnxruntime.quantization.shape_inference import quant_pre_process

            pre = Path(tmp) / "pre.onnx"
            quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
            source = pre
            summary["pre_process"] = "quant_pre_process"
        except Exception as exc:  # the pre-processing is an optimization; quantize the plain graph instead
            log.warning("quant_pre_process failed (%s); quantizing the graph as exported", exc)
            summary["pre_process"] = f"skipped: {type(exc).__name__}"
        if source == pre:  # constants folded by the pre-processing: the Pads' amounts are now initializers
            try:
                summary["pads_folded"] = fold_pads(pre)
            except Exception as exc:  # an optimization too: a graph it cannot read is quantized as it is
                log.warning("folding Pads into convolutions failed (%s); quantizing with them", exc)
                summary["pads_folded"] = f"skipped: {type(exc).__name__}"
        reader = _CalibrationReader(input_name, calibration, fixed or batch_size)
        if fixed:  # drop a short last batch the graph cannot take
            reader.batches = [b for b in reader.batches if len(b) == fixed] or reader.batches[:1]
        quantize_static(
            str(source), str(int8_path), reader, quant_format=QuantFormat.QDQ, per_channel=options.per_channel,
            activation_type=activation_type, weight_type=weight_type, op_types_to_quantize=options.op_types,
            reduce_range=options.reduce_range,
            nodes_to_exclude=list(options.nodes_to_exclude) or None, calibrate_method=calibrate_method,
            extra_options=extra or None,
        )
    summary["ops"] = op_summary(int8_path)
    log.info("int8 model: quantized ops %s; left in fp32: %s", summary["ops"]["int8"] or "none",
             summary["ops"]["fp32"] or "none")
    return summary
