"""Fitting PatchCore: features of the good images, per-channel standardization, optional PCA, and the
greedy coreset that becomes the memory bank; `PatchCoreMethod` is what ``--method patchcore`` runs."""

from __future__ import annotations

import logging
import time

import numpy as np
import torch

from tools.backbones import efficientnet_lite, stage_outputs
from tools.methods.base import FitOptions
from tools.methods.components.features import BackboneMethod, PatchFeatures
from tools.methods.components.sampling import greedy_coreset
from tools.methods.patchcore.export import PatchCoreTrained
from tools.methods.patchcore.model import PatchCoreGraph
from tools.methods.patchcore.options import OPTIONS, parse_options

log = logging.getLogger(__name__)


def pca_projection(x: torch.Tensor, dims: int) -> torch.Tensor:
    """(dims, D+1): rows = top principal directions, last column = -direction . mean (so y = W x + b)."""
    mean = x.mean(0)
    xc = x - mean
    cov = xc.t() @ xc / max(1, x.shape[0] - 1)
    _, vecs = torch.linalg.eigh(cov.double())
    w = vecs[:, -dims:].flip(1).t().float()
    return torch.cat([w, (-(w @ mean))[:, None]], dim=1)


class PatchCoreMethod(BackboneMethod):
    """Frozen-backbone patch features against a coreset memory bank of the good patches (docs/patchcore.md)."""

    name = "patchcore"
    options = OPTIONS

    def fit(self, images: list[np.ndarray], opts: FitOptions) -> PatchCoreTrained:
        """Extract (or reuse) patch features, optionally standardize and project them, keep a coreset."""
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
