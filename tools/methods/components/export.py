"""The fp32 ONNX export of an image -> (score, map) module, shared by the feature-based methods."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from edged.bundle import InputSpec, OutputSpec


def export_graph(graph: nn.Module, spec: InputSpec, outputs: OutputSpec, path: Path) -> None:
    """Write `graph` (image batch -> (score, map)) as ONNX with a dynamic batch (opset 17, one file)."""
    x = torch.zeros(1, 3, spec.height, spec.width)
    amap = outputs.map or "anomaly_map"
    with torch.no_grad():
        torch.onnx.export(graph, (x,), str(path), input_names=[spec.name], output_names=[outputs.score, amap],
                          dynamic_axes={spec.name: {0: "n"}, outputs.score: {0: "n"}, amap: {0: "n"}},
                          opset_version=17, dynamo=False, external_data=False)


def stem_stage_nodes(model: Any) -> list[str]:
    """The backbone's convolutions before its second stride-2 one (the stem and every convolution at half the
    input's resolution after it), for int8 to leave in fp32.

    Their activations get one uint8 scale each, set on 64 calibration images; the darkest parts then use a few of
    its levels, and that rounding shifts every patch of the image alike, which the map's mean keeps. Measured
    (`scripts/experiments/exp_int8_exclude.py`, fused pooling, image AUROC fp32 / int8 / int8 with these in fp32):
    tiles 0.972 / 0.967 / 0.971, `rail` 1.000 / 0.969 / 1.000, `stones` 0.689 / 0.706 / 0.699; at 2% of the
    latency (tiles 9.6 -> 9.8 ms on one thread): a stride-2 layer has few channels.
    """
    names: list[str] = []
    downsampling = 0
    for node in (n for n in model.graph.node if n.op_type == "Conv"):
        strides = next((list(a.ints) for a in node.attribute if a.name == "strides"), [1])
        downsampling += max(strides, default=1) > 1
        if downsampling > 1:
            break
        names.append(node.name)
    if any(not name for name in names):
        raise RuntimeError("stem_stage_nodes: unnamed convolutions cannot be excluded from int8")
    return names
