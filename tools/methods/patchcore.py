"""PatchCore on EfficientNet-Lite features, exported as ONE ONNX graph the daemon runs like any bundle.

Why this shape: PatchCore-class detectors are far more accurate than autoencoders on real parts, but
are usually a big backbone plus a Python/faiss kNN. Here the backbone is an edge-friendly EfficientNet-Lite
and the nearest-neighbour search is two matrix ops inside the graph (||a||^2 - 2ab + ||b||^2, then min),
so a bundle is one int8 file with no extra runtime dependency.

Graph: RGB/255 -> the backbone's input normalization ((x-127)/128) -> its stages -> 3x3 local average ->
upsample to the finest grid -> concat (-> optional linear projection) -> per-channel scale -> squared
distance to every memory-bank patch -> min -> sqrt -> light Gaussian smoothing on the patch grid ->
bilinear upsample to the input size = anomaly map; image score = mean of the top 10% grid cells.

Options (`--opt KEY=VALUE`, table `OPTIONS`): backbone (default lite1), layers (default "s4,s5,s6":
stride 16 + 16 + 32, 80 + 112 + 192 channels, on the stride-16 grid), standardize (default true: each
feature channel divided by its spread on the good patches, so every channel weighs the same in the
distance), coreset (fraction of the training patches kept in the memory bank, default 0.1), top (the
image score's fraction of highest cells, default 0.1), proj, max_patches, coreset_dims, sigma, batch.
The input may be any width x height (the pipeline picks it from the training images).
The choice of defaults and the sweep behind them: docs/patchcore.md.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edged.bundle import InputSpec, OutputSpec
from tools.backbones import STAGE_OUTPUTS, VARIANTS, EfficientNetLite, Normalize, efficientnet_lite, stage_outputs
from tools.methods.base import FitOptions, Option, QuantizeOptions
from tools.methods.base import parse_options as base_parse_options
from tools.methods.components import MapHead, export_graph, gaussian_kernel  # noqa: F401 (gaussian_kernel re-exported)

log = logging.getLogger(__name__)

def _layers(value: Any) -> str | None:
    layers = [s.strip() for s in str(value).split(",") if s.strip()]
    if not layers or any(s not in STAGE_OUTPUTS for s in layers):
        return f"layers must be names from {', '.join(STAGE_OUTPUTS)}, comma-separated"
    return None


OPTIONS: dict[str, Option] = {
    "backbone": Option("lite1", "ImageNet backbone: EfficientNet-Lite0, -Lite1 or -Lite2", choices=tuple(VARIANTS)),
    "layers": Option("s4,s5,s6", "backbone stages whose features are compared", check=_layers),
    "coreset": Option(0.1, "fraction of the training patches kept in the memory bank", low=0.0, low_open=True,
                      high=1.0),
    "top": Option(0.1, "image score = mean of this fraction of the highest map cells (0: the maximum)", low=0.0,
                  high=1.0),
    "proj": Option(0, "0 = none, else PCA to that many dims", low=0, high=4096),
    "max_patches": Option(200_000, "random cap on training patches before the coreset", low=1, high=50_000_000),
    "sigma": Option(4.0, "smoothing of the map in input pixels", low=0.0, high=256.0),
    "batch": Option(16, "feature extraction batch", low=1, high=1024),
    "coreset_dims": Option(64, "random projection for the coreset distances", low=1, high=4096),
    "standardize": Option(True, "divide each feature channel by its spread on the good patches"),
}
DEFAULTS: dict[str, Any] = {k: o.default for k, o in OPTIONS.items()}


def parse_options(extra: dict[str, Any]) -> dict[str, Any]:
    """`--opt` values (strings or CLI-typed) under the rules every method shares (tools.methods.base)."""
    out = base_parse_options("patchcore", OPTIONS, extra)
    out["layers"] = ",".join(s.strip() for s in str(out["layers"]).split(",") if s.strip())
    return out


class PatchFeatures(nn.Module):
    """Image batch in [0, 1] RGB -> locally aware patch features on the finest chosen grid (N, D, h, w)."""

    def __init__(self, backbone: EfficientNetLite, layers: list[str], proj: torch.Tensor | None = None,
                 scale: torch.Tensor | None = None) -> None:
        super().__init__()
        self.norm = Normalize()
        self.backbone = backbone
        self.layers = layers
        self.register_buffer("scale", None if scale is None else scale.view(1, -1, 1, 1).clone())
        self.proj: nn.Conv2d | None = None
        if proj is not None:  # (D_out, D_in) projection, centred data -> a 1x1 conv with bias
            w, b = proj[:, :-1], proj[:, -1]
            self.proj = nn.Conv2d(w.shape[1], w.shape[0], 1)
            self.proj.weight.data.copy_(w[:, :, None, None])
            self.proj.bias.data.copy_(b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone.features(self.norm(x), self.layers)
        grid = max((f.shape[-2], f.shape[-1]) for f in feats)
        out = []
        for f in feats:
            f = F.avg_pool2d(f, 3, stride=1, padding=1, count_include_pad=False)
            if (f.shape[-2], f.shape[-1]) != grid:
                f = F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
            out.append(f)
        y = torch.cat(out, dim=1)
        if self.proj is not None:
            y = self.proj(y)
        return y * self.scale if self.scale is not None else y


class PatchCoreGraph(nn.Module):
    """The whole inference path (what `export_onnx` writes): image -> (score [N], map [N, 1, H, W])."""

    def __init__(self, features: PatchFeatures, bank: torch.Tensor, sigma_cells: float, size: tuple[int, int],
                 top: float = 0.0) -> None:
        super().__init__()
        self.features = features
        # ||b||^2 - 2 a.b as one MatMul + Add: the -2 is folded into the bank constant.
        self.register_buffer("bank_t", (-2.0 * bank).t().contiguous())  # (D, M)
        self.register_buffer("bank_sq", (bank * bank).sum(1))  # (M,)
        self.head = MapHead(sigma_cells, size, top)

    def patch_distances(self, x: torch.Tensor) -> torch.Tensor:
        """Distance of every patch to its nearest memory-bank patch, (N, 1, h, w)."""
        f = self.features(x)
        n, _, h, w = f.shape
        a = f.flatten(2).transpose(1, 2)  # (N, hw, D)
        partial = torch.matmul(a, self.bank_t) + self.bank_sq  # (N, hw, M)
        nearest = partial.min(dim=2).values + (a * a).sum(2)  # (N, hw)
        return torch.sqrt(torch.clamp(nearest, min=0.0)).view(n, 1, h, w)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.patch_distances(x))


def reference_patch_distances(graph: PatchCoreGraph, x: torch.Tensor) -> torch.Tensor:
    """Independent check of the graph's kNN step: plain torch.cdist + min over the bank, (N, 1, h, w)."""
    with torch.no_grad():
        f = graph.features(x)
        n, d, h, w = f.shape
        bank = (-0.5 * graph.bank_t).t()
        a = f.flatten(2).transpose(1, 2).reshape(-1, d).double()
        dist = torch.cdist(a, bank.double()).min(dim=1).values
        return dist.view(n, 1, h, w).float()


def greedy_coreset(x: torch.Tensor, k: int, dims: int = 128, seed: int = 0, chunk: int = 65536,
                   progress: bool = False) -> torch.Tensor:
    """Approximate greedy k-center subsampling (PatchCore): distances on a random projection to `dims`.

    Each pick costs one matrix-vector product over all patches, so k picks over N patches are
    O(k N dims); the projection keeps that practical on a CPU.
    """
    n, d = x.shape
    k = max(1, min(k, n))
    g = torch.Generator().manual_seed(seed)
    if d > dims:
        r = torch.randn(d, dims, generator=g) / math.sqrt(dims)
        z = torch.cat([x[i:i + chunk] @ r for i in range(0, n, chunk)])
    else:
        z = x.contiguous()
    sq = (z * z).sum(1)
    mind = torch.full((n,), float("inf"))
    picked = torch.empty(k, dtype=torch.long)
    cur = int(torch.randint(n, (1,), generator=g))
    steps: Any = range(k)
    if progress:
        from tqdm import tqdm

        steps = tqdm(steps, desc="patchcore coreset", unit="pick", mininterval=1.0)
    for i in steps:
        picked[i] = cur
        dist = torch.addmv(sq + sq[cur], z, z[cur], alpha=-2.0)
        torch.minimum(mind, dist, out=mind)
        mind[cur] = 0.0
        cur = int(torch.argmax(mind))
    return picked


def pca_projection(x: torch.Tensor, dims: int) -> torch.Tensor:
    """(dims, D+1): rows = top principal directions, last column = -direction . mean (so y = W x + b)."""
    mean = x.mean(0)
    xc = x - mean
    cov = xc.t() @ xc / max(1, x.shape[0] - 1)
    _, vecs = torch.linalg.eigh(cov.double())
    w = vecs[:, -dims:].flip(1).t().float()
    return torch.cat([w, (-(w @ mean))[:, None]], dim=1)


def images_to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 HxWx3 RGB (as `edged.preprocess.prepare_uint8` gives) -> float (N, 3, H, W) in [0, 1]."""
    arr = np.stack([im if im.ndim == 3 else np.repeat(im[:, :, None], 3, axis=2) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div_(255.0)


@torch.no_grad()
def extract(features: PatchFeatures, images: list[np.ndarray], batch: int, progress: bool = False) -> torch.Tensor:
    """Patch features of all images, (N, D, h, w)."""
    chunks = []
    it = range(0, len(images), batch)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="patchcore features", unit="batch")
    for i in it:
        chunks.append(features(images_to_tensor(images[i:i + batch])))
    return torch.cat(chunks)


@dataclass
class PatchCoreTrained:
    spec: InputSpec
    graph: PatchCoreGraph
    params: dict[str, Any]
    outputs: OutputSpec = field(default_factory=lambda: OutputSpec(score="score", map="anomaly_map"))
    # uint8 activations (U8S8): on x86 CPUs without VNNI int8 activations (S8S8) ran this graph at half the
    # speed (23 vs 10 ms at 224 px); accuracy is the same. The kNN tail is excluded at export (tail_nodes).
    quantize: QuantizeOptions = field(default_factory=lambda: QuantizeOptions(
        extra_options={"ActivationType": "QUInt8"}))

    def export_onnx(self, path: Path) -> None:
        """fp32 graph with a dynamic batch; also records which tail nodes int8 must leave alone."""
        import onnx

        path = Path(path)
        export_graph(self.graph, self.spec, self.outputs, path)
        model = onnx.load(str(path))
        self.quantize.nodes_to_exclude = tail_nodes(model)
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


FEATURE_CACHE_BYTES = 1_500_000_000  # features kept between fits of one process (cross-fitting's folds)


class FeatureCache:
    """Backbone features of the images one process has seen, so cross-fitting's k fold fits and the final
    fit extract each image's features once (the backbone is frozen: same image, same features).

    Keyed by the image bytes' digest and the backbone settings; float16, up to `FEATURE_CACHE_BYTES`.
    """

    def __init__(self) -> None:
        self.key: tuple[Any, ...] | None = None
        self.items: dict[bytes, torch.Tensor] = {}
        self.bytes = 0

    def features(self, net: PatchFeatures, key: tuple[Any, ...], images: list[np.ndarray], batch: int,
                 progress: bool) -> torch.Tensor:
        """(N, D, h, w) float32 features of `images`, computing only those not cached under `key`."""
        import hashlib

        if key != self.key:
            self.key, self.items, self.bytes = key, {}, 0
        digests = [hashlib.blake2b(np.ascontiguousarray(im).tobytes(), digest_size=16).digest()
                   + repr(im.shape).encode() for im in images]
        missing = [i for i, d in enumerate(digests) if d not in self.items]
        fresh = extract(net, [images[i] for i in missing], batch, progress=progress) if missing else None
        if fresh is not None:
            for j, i in enumerate(missing):
                if self.bytes + fresh[j].numel() * 2 > FEATURE_CACHE_BYTES:
                    break
                self.items[digests[i]] = fresh[j].half()
                self.bytes += fresh[j].numel() * 2
        where = {i: j for j, i in enumerate(missing)}
        return torch.stack([fresh[where[i]] if i in where and fresh is not None else self.items[d].float()
                            for i, d in enumerate(digests)])


class PatchCoreMethod:
    name = "patchcore"
    default_size = 160  # the pixel budget (160 x 160 = 25600 px, at the image aspect): docs/patchcore.md
    min_size = 64  # the stride-32 stage needs a 2x2 grid at least
    max_size = 1024  # 64x64 patches per image: beyond that the feature bank and the kNN outgrow a CPU
    options = OPTIONS
    non_square = True  # any width x height (convolutions and a kNN per patch)

    def __init__(self) -> None:
        self.cache = FeatureCache()

    def input_spec(self, opts: FitOptions) -> InputSpec:
        # The backbone's normalization is inside the graph, so the input stays plain RGB / 255.
        width, height = opts.shape
        return InputSpec(width=width, height=height, channels=3, color_order="rgb",
                         scale=1.0 / 255.0, mean=(0.0,), std=(1.0,))

    def fit(self, images: list[np.ndarray], opts: FitOptions) -> PatchCoreTrained:
        o = parse_options(opts.extra)
        torch.manual_seed(opts.seed)
        spec = self.input_spec(opts)
        layers = o["layers"].split(",")
        t0 = time.perf_counter()
        features = PatchFeatures(efficientnet_lite(o["backbone"]), layers).eval()
        key = (o["backbone"], o["layers"], spec.width, spec.height)
        feats = self.cache.features(features, key, images, o["batch"], opts.progress)
        n, d, h, w = feats.shape
        patches = feats.permute(0, 2, 3, 1).reshape(-1, d)
        del feats
        t_feat = time.perf_counter() - t0
        total = patches.shape[0]
        g = torch.Generator().manual_seed(opts.seed)
        if total > o["max_patches"]:
            patches = patches[torch.randperm(total, generator=g)[: o["max_patches"]]]
        proj = None
        if o["proj"] and o["proj"] < d:
            proj = pca_projection(patches, o["proj"])
            patches = patches @ proj[:, :-1].t() + proj[:, -1]
            features = PatchFeatures(features.backbone, layers, proj).eval()
        if o["standardize"]:
            # Channel spreads differ 2-3x (MTD: std 2.0-5.5); unscaled, the widest channels decide the
            # distance. Dividing each by its spread over the good patches weighs them evenly (+1 point
            # image AUROC on MTD); a mean shift would not change any distance, so only the scale is applied.
            scale = 1.0 / patches.std(dim=0).clamp_min(1e-3)
            patches = patches * scale
            features = PatchFeatures(features.backbone, layers, proj, scale).eval()
        k = max(1, round(o["coreset"] * total))
        t1 = time.perf_counter()
        idx = greedy_coreset(patches, k, dims=o["coreset_dims"], seed=opts.seed, progress=opts.progress)
        bank = patches[idx].clone()
        t_core = time.perf_counter() - t1
        stride = min(stage_outputs(o["backbone"])[s][1] for s in layers)
        graph = PatchCoreGraph(features, bank, o["sigma"] / stride, (spec.height, spec.width), o["top"]).eval()
        params = {**o, "grid": [h, w], "feature_dims": int(bank.shape[1]), "train_patches": int(total),
                  "bank_size": int(bank.shape[0]), "backbone": f"efficientnet-{o['backbone']} (ImageNet)",
                  "feature_seconds": round(t_feat, 1), "coreset_seconds": round(t_core, 1)}
        log.info("patchcore: %d images, %d patches of %d dims on a %dx%d grid -> bank of %d (features %.0f s, "
                 "coreset %.0f s)", n, total, bank.shape[1], h, w, bank.shape[0], t_feat, t_core)
        return PatchCoreTrained(spec=spec, graph=graph, params=params)


METHOD = PatchCoreMethod()
