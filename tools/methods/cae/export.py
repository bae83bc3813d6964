"""A trained autoencoder and its export: one ONNX graph that computes the map and the score itself,
with the error head kept out of int8."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import nn

from edged.bundle import InputSpec, OutputSpec
from tools.methods.base import QuantizeOptions
from tools.methods.cae.model import Autoencoder, ErrorHead, ScoringModel
from tools.methods.cae.options import CaeConfig

HEAD_PREFIX = "/head/"  # ONNX node names of the error-map/score part (kept fp32 when quantizing)


_M = TypeVar("_M", bound=nn.Module)


def _fuse_batchnorm(model: _M) -> _M:
    """Fold eval-mode BatchNorm into the preceding (transposed) convolution: fewer ops, cleaner int8."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    for module in model.modules():
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.children())
        for i in range(len(children) - 1):
            conv, bn = children[i], children[i + 1]
            if isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and isinstance(bn, nn.BatchNorm2d):
                fused = fuse_conv_bn_eval(conv, bn, transpose=isinstance(conv, nn.ConvTranspose2d))
                module[i] = fused
                module[i + 1] = nn.Identity()
    return model


@dataclass
class CaeTrained:
    """A trained autoencoder with its error head; exports one ONNX graph (map and score inside)."""

    spec: InputSpec
    cfg: CaeConfig
    model: Autoencoder
    outputs: OutputSpec = field(default_factory=lambda: OutputSpec(score="score", map="anomaly_map"))
    params: dict[str, Any] = field(default_factory=dict)
    quantize: QuantizeOptions = field(default_factory=QuantizeOptions)
    position_stats: tuple[np.ndarray, np.ndarray] | None = None  # (mean, std) of the error map per pixel

    def scoring_model(self) -> ScoringModel:
        """A fresh eval-mode graph (BatchNorm folded into a copy of the autoencoder; the model is untouched)."""
        head = ErrorHead(self.cfg, self.spec.height, self.spec.width)
        if self.position_stats is not None:
            head.set_position_stats(*self.position_stats)
        return ScoringModel(_fuse_batchnorm(self.model), head).eval()

    @torch.no_grad()
    def score(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Torch scores of an NxCxHxW float32 batch: (anomaly maps [N,1,H,W], scores [N])."""
        amap, score = self.scoring_model()(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32)))
        return amap.numpy(), score.numpy()

    def export_onnx(self, path: Path) -> None:
        """fp32 graph with a dynamic batch; records the error head's nodes for int8 to leave alone."""
        import onnx

        model = self.scoring_model()
        dummy = torch.rand(2, self.spec.channels, self.spec.height, self.spec.width)
        names = [self.outputs.map or "anomaly_map", self.outputs.score]
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation and tracer chatter
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (dummy,), str(path), input_names=[self.spec.name], output_names=names,
                              dynamic_axes={self.spec.name: {0: "N"}, names[0]: {0: "N"}, names[1]: {0: "N"}},
                              opset_version=17, dynamo=False, do_constant_folding=True)
        graph = onnx.load(str(path)).graph
        self.quantize.nodes_to_exclude = [n.name for n in graph.node if n.name.startswith(HEAD_PREFIX)]


def quantize_options(cfg: CaeConfig) -> QuantizeOptions:
    """How the autoencoder's layers go int8; the error head's nodes are added at export (kept fp32)."""
    # Only the autoencoder's layers: the error head (SSIM statistics, blur, top-k) needs fp32 precision
    # for differences of nearly equal numbers, and is cheap. ConvTranspose has no int8 CPU kernel, but
    # listing it costs nothing when the decoder has none. uint8 activations: with them ONNX Runtime's CPU
    # provider runs every layer of the autoencoder in int8 (QLinearConv, QLinearLeakyRelu, uint8 Resize,
    # QLinearSigmoid); with int8 activations the first convolution, the Resizes, the Sigmoid and half the
    # LeakyRelus stayed float between Dequantize/Quantize pairs (measured, onnxruntime 1.32).
    ops = ["Conv", "ConvTranspose", "Resize", "Relu", "LeakyRelu", "Sigmoid"]
    return QuantizeOptions(enabled=True, per_channel=True, op_types=ops, calibrate_method="MinMax",
                           extra_options={"ActivationType": "QUInt8", "WeightType": "QInt8"})
