"""A fitted PatchCore and its export: the fp32 graph, with the kNN tail named for int8 to leave alone."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edged.bundle import InputSpec, OutputSpec
from tools.methods.base import QuantizeOptions
from tools.methods.components.export import export_graph, stem_stage_nodes
from tools.methods.components.tensors import images_to_tensor
from tools.methods.patchcore.model import PatchCoreGraph


@dataclass
class PatchCoreTrained:
    """A fitted PatchCore: the whole inference graph (features, memory bank, map head), ready to export."""

    spec: InputSpec
    graph: PatchCoreGraph
    params: dict[str, Any]
    outputs: OutputSpec = field(default_factory=lambda: OutputSpec(score="score", map="anomaly_map"))
    # uint8 activations (U8S8): on x86 CPUs without VNNI int8 activations (S8S8) ran this graph at half the
    # speed (23 vs 10 ms at 224 px); accuracy is the same. The kNN tail is excluded at export (tail_nodes).
    quantize: QuantizeOptions = field(default_factory=lambda: QuantizeOptions(
        extra_options={"ActivationType": "QUInt8"}))

    def export_onnx(self, path: Path) -> None:
        """fp32 graph with a dynamic batch; also records which nodes int8 must leave alone (the kNN tail, what sits
        beside the bank, the backbone's stem stage)."""
        import onnx

        path = Path(path)
        export_graph(self.graph, self.spec, self.outputs, path)
        model = onnx.load(str(path))
        self.quantize.nodes_to_exclude = stem_stage_nodes(model) + tail_nodes(model) + beside_nodes(model)
        onnx.save(model, str(path))

    def __call__(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """The torch reference: (scores [N], maps [N, 1, H, W]) for prepared uint8 images."""
        with torch.no_grad():
            score, amap = self.graph(images_to_tensor(images))
        return score.numpy(), amap.numpy()


def tail_nodes(model: Any) -> list[str]:
    """Nodes after the nearest-neighbour MatMul's Min (sqrt, smoothing, upsampling, max): kept fp32,
    so the map and the score keep their full resolution; int8 there buys no speed."""
    nodes = list(model.graph.node)
    start = next((i for i, n in enumerate(nodes) if n.op_type == "ReduceMin"), None)
    if start is None:
        return []
    for i, node in enumerate(nodes):  # name unnamed nodes so they can be excluded
        if not node.name:
            node.name = f"patchcore_{node.op_type}_{i}"
    return [n.name for n in nodes[start + 1:] if n.op_type != "Constant"]


def beside_nodes(model: Any) -> list[str]:
    """The feature autoencoder beside the bank (the ``featae`` option), kept fp32 like ``--method featae``'s: its
    error is the score, and int8 rounding of a reconstruction is as large as the errors it must measure; and the
    image Gaussian (``gaussian``): a Mahalanobis distance of 2D statistics is a small matrix product whose
    differences are the signal."""
    return [n.name for n in model.graph.node if n.name.startswith(("/beside/", "/ae/", "/gaussian/"))]
