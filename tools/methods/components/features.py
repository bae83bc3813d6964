"""Frozen-backbone patch features (patchcore and featae): the feature module, its extraction over a list
of images, the per-process feature cache, and the rule for the ``layers`` option."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edged.bundle import InputSpec
from tools.backbones import STAGE_OUTPUTS, EfficientNetLite, Normalize
from tools.methods.base import FitOptions
from tools.methods.components.tensors import images_to_tensor


def check_layers(value: Any) -> str | None:
    """The ``layers`` option's rule: comma-separated backbone stage names; what is wrong, or None."""
    layers = [s.strip() for s in str(value).split(",") if s.strip()]
    if not layers or any(s not in STAGE_OUTPUTS for s in layers):
        return f"layers must be names from {', '.join(STAGE_OUTPUTS)}, comma-separated"
    return None


class PatchFeatures(nn.Module):
    """Image batch in [0, 1] RGB -> locally aware patch features on the finest chosen grid (N, D, h, w)."""

    scale: torch.Tensor | None  # buffer: per-channel factor (1, D, 1, 1), or None

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
            conv = nn.Conv2d(w.shape[1], w.shape[0], 1)
            bias = conv.bias
            assert bias is not None  # nn.Conv2d has a bias unless told bias=False
            conv.weight.data.copy_(w[:, :, None, None])
            bias.data.copy_(b)
            self.proj = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, D, h, w): each stage 3x3-averaged, upsampled to the finest grid, concatenated,
        then projected and scaled when those were given."""
        feats = self.backbone.features(self.norm(x), self.layers)
        grid = max((f.shape[-2], f.shape[-1]) for f in feats)
        out = []
        for f in feats:
            f = F.avg_pool2d(f, 3, stride=1, padding=1, count_include_pad=False)
            if (f.shape[-2], f.shape[-1]) != grid:
                f = F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
            out.append(f)
        return self.project(torch.cat(out, dim=1))

    def project(self, y: torch.Tensor) -> torch.Tensor:
        """Raw concatenated stage features -> what the bank holds: projected and scaled when those were given.
        Its own step so that statistics of cached raw features see exactly what the graph sees."""
        if self.proj is not None:
            y = self.proj(y)
        return y * self.scale if self.scale is not None else y


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


class BackboneMethod:
    """What the frozen-backbone methods (patchcore, featae) share: their input and sizes, and a
    `FeatureCache`, so that cross-fitting's fold fits and the final fit extract each image's features once.

    The input is plain RGB / 255 at any width x height: the backbone's ImageNet normalization is inside the
    graph. Sizes: `default_size` is the pixel budget (160 x 160 = 25600 px at the images' aspect,
    docs/patchcore.md); the stride-32 stage needs a 2x2 grid at least (64); beyond 1024 the 64x64 patches
    per image outgrow a CPU's memory bank and kNN.
    """

    default_size = 160
    min_size = 64
    max_size = 1024
    non_square = True

    def __init__(self) -> None:
        self.cache = FeatureCache()

    def input_spec(self, opts: FitOptions) -> InputSpec:
        """RGB / 255 at --size (any width x height)."""
        width, height = opts.shape
        return InputSpec(width=width, height=height, channels=3, color_order="rgb",
                         scale=1.0 / 255.0, mean=(0.0,), std=(1.0,), resize="halve_area")
