"""The design card's autoencoder, made to work: it reconstructs pretrained features instead of pixels.

Why: a pixel autoencoder learns to copy texture and copies defects along with it (the reference
design's barely beat chance on real parts). Reconstructing the frozen ImageNet features of each patch
through a narrow bottleneck learns what good patches look like in a space where a scratch and a
texture differ; the anomaly map is the per-patch reconstruction error (as in DFR-style feature
reconstruction). It needs no memory bank, so its cost does not grow with the training set, and its
graph is convolutions only, which int8 handles well.

Graph: RGB/255 -> EfficientNet-Lite stages (frozen, as in patchcore) -> 3x3 local average -> concat ->
(x - mean) / std per channel -> 1x1-conv autoencoder D -> hidden -> bottleneck -> hidden -> D ->
squared error summed over channels -> sqrt -> Gaussian smoothing -> bilinear upsample = anomaly map;
image score = mean of the top 10% cells. Training: Adam on the cached features of the good images.

Options (`--opt`, table `OPTIONS`): backbone, layers, bottleneck, hidden, epochs (also --epochs), lr,
sigma, top, batch.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edged.bundle import InputSpec, OutputSpec
from tools.backbones import VARIANTS, efficientnet_lite, stage_outputs
from tools.methods.base import FitOptions, Option, QuantizeOptions
from tools.methods.base import parse_options as base_parse_options
from tools.methods.components import MapHead, export_graph
from tools.methods.patchcore import FeatureCache, PatchFeatures, _layers, images_to_tensor

log = logging.getLogger(__name__)

OPTIONS: dict[str, Option] = {
    "backbone": Option("lite1", "ImageNet backbone: EfficientNet-Lite0, -Lite1 or -Lite2", choices=tuple(VARIANTS)),
    "layers": Option("s5,s6", "backbone stages whose features are reconstructed", check=_layers),
    "bottleneck": Option(32, "channels at the narrowest point", low=1, high=4096),
    "hidden": Option(192, "channels of the layers around the bottleneck", low=1, high=8192),
    "epochs": Option(30, "passes over the training patches", low=1, high=10_000),
    "lr": Option(2e-3, "Adam learning rate", low=0.0, low_open=True, high=1.0),
    "sigma": Option(4.0, "smoothing of the map in input pixels", low=0.0, high=256.0),
    "top": Option(0.1, "image score = mean of this fraction of the highest map cells (0: the maximum)", low=0.0,
                  high=1.0),
    "batch": Option(16, "feature extraction batch", low=1, high=1024),
}


def parse_options(extra: dict[str, Any]) -> dict[str, Any]:
    return base_parse_options("featae", OPTIONS, extra)


class FeatureAE(nn.Module):
    """Per-patch autoencoder as 1x1 convolutions (so it runs on the whole grid in one graph)."""

    def __init__(self, dims: int, hidden: int, bottleneck: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(dims, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, bottleneck, 1), nn.ReLU(),
            nn.Conv2d(bottleneck, hidden, 1), nn.ReLU(), nn.Conv2d(hidden, dims, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FeatAEGraph(nn.Module):
    """image -> (score [N], map [N, 1, H, W]): what `export_onnx` writes."""

    def __init__(self, features: PatchFeatures, ae: FeatureAE, mean: torch.Tensor, inv_std: torch.Tensor,
                 sigma_cells: float, size: tuple[int, int], top: float) -> None:
        super().__init__()
        self.features, self.ae = features, ae
        self.head = MapHead(sigma_cells, size, top)
        self.register_buffer("mean", mean.view(1, -1, 1, 1).clone())
        self.register_buffer("inv_std", inv_std.view(1, -1, 1, 1).clone())

    def errors(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction error of every patch, (N, 1, h, w)."""
        f = (self.features(x) - self.mean) * self.inv_std
        d = f - self.ae(f)
        return torch.sqrt((d * d).sum(dim=1, keepdim=True) + 1e-12)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.errors(x))


@dataclass
class FeatAETrained:
    spec: InputSpec
    graph: FeatAEGraph
    params: dict[str, Any]
    outputs: OutputSpec = field(default_factory=lambda: OutputSpec(score="score", map="anomaly_map"))
    # The backbone's convolutions in int8. The autoencoder stays fp32: its error IS the score, and int8
    # rounding of a reconstruction is of the size of the errors it must measure (MTD: image AUROC 0.877
    # fp32 -> 0.800 with the autoencoder quantized); on ~100 patches its 1x1 convolutions cost nothing.
    quantize: QuantizeOptions = field(default_factory=lambda: QuantizeOptions(
        op_types=["Conv"], extra_options={"ActivationType": "QUInt8"}))

    def export_onnx(self, path: Path) -> None:
        """fp32 graph with a dynamic batch; records the autoencoder's nodes for int8 to leave alone."""
        import onnx

        export_graph(self.graph, self.spec, self.outputs, path)
        model = onnx.load(str(path))
        self.quantize.nodes_to_exclude = [n.name for n in model.graph.node if n.name.startswith("/ae/")]
        if not self.quantize.nodes_to_exclude:
            raise RuntimeError("featae export: no autoencoder nodes found to keep in fp32 (node names changed?)")

    def __call__(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            score, amap = self.graph(images_to_tensor(images))
        return score.numpy(), amap.numpy()


def train_ae(patches: torch.Tensor, o: dict[str, Any], seed: int) -> tuple[FeatureAE, list[float]]:
    """Fit the autoencoder to standardized patch vectors (P, D); returns it and the loss per epoch."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    ae = FeatureAE(patches.shape[1], o["hidden"], o["bottleneck"])
    opt = torch.optim.Adam(ae.parameters(), lr=o["lr"])
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=o["epochs"])
    x4 = patches[:, :, None, None]
    losses = []
    for _ in range(o["epochs"]):
        perm = torch.randperm(x4.shape[0], generator=g)
        total = 0.0
        for i in range(0, x4.shape[0], 1024):
            xb = x4[perm[i:i + 1024]]
            loss = F.mse_loss(ae(xb), xb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * xb.shape[0]
        sched.step()
        losses.append(total / x4.shape[0])
    return ae.eval(), losses


class FeatAEMethod:
    name = "featae"
    default_size = 160
    min_size = 64
    max_size = 1024
    options = OPTIONS
    non_square = True

    def __init__(self) -> None:
        self.cache = FeatureCache()

    def input_spec(self, opts: FitOptions) -> InputSpec:
        width, height = opts.shape
        return InputSpec(width=width, height=height, channels=3, color_order="rgb",
                         scale=1.0 / 255.0, mean=(0.0,), std=(1.0,))

    def fit(self, images: list[np.ndarray], opts: FitOptions) -> FeatAETrained:
        o = parse_options(opts.extra)
        if opts.epochs is not None:
            o["epochs"] = opts.epochs
        spec = self.input_spec(opts)
        layers = o["layers"].split(",")
        t0 = time.perf_counter()
        features = PatchFeatures(efficientnet_lite(o["backbone"]), layers).eval()
        feats = self.cache.features(features, (o["backbone"], o["layers"], spec.width, spec.height), images,
                                    o["batch"], opts.progress)
        n, d, h, w = feats.shape
        patches = feats.permute(0, 2, 3, 1).reshape(-1, d)
        mean, inv_std = patches.mean(0), 1.0 / patches.std(0).clamp_min(1e-3)
        t_feat = time.perf_counter() - t0
        t1 = time.perf_counter()
        ae, losses = train_ae((patches - mean) * inv_std, o, opts.seed)
        stride = min(stage_outputs(o["backbone"])[s][1] for s in layers)
        graph = FeatAEGraph(features, ae, mean, inv_std, o["sigma"] / stride, (spec.height, spec.width),
                            o["top"]).eval()
        params = {**o, "grid": [h, w], "feature_dims": d, "train_patches": int(patches.shape[0]),
                  "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
                  "backbone": f"efficientnet-{o['backbone']} (ImageNet)", "feature_seconds": round(t_feat, 1),
                  "train_seconds_ae": round(time.perf_counter() - t1, 1)}
        log.info("featae: %d images, %d patches of %d dims -> %d epochs, loss %.3f -> %.3f (%.0f s)", n,
                 patches.shape[0], d, o["epochs"], losses[0], losses[-1], time.perf_counter() - t1)
        return FeatAETrained(spec=spec, graph=graph, params=params)


METHOD = FeatAEMethod()
