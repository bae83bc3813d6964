"""The fp32 ONNX export of an image -> (score, map) module, shared by the feature-based methods."""

from __future__ import annotations

from pathlib import Path

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
