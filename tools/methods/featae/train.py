"""Fitting featae: standardized backbone features of the good images, then the autoencoder on them;
`FeatAEMethod` is what ``--method featae`` runs."""

from __future__ import annotations

import logging
import time

import numpy as np

from tools.backbones import efficientnet_lite, stage_outputs
from tools.methods.base import FitOptions
from tools.methods.components.feature_ae import train_ae
from tools.methods.components.features import BackboneMethod, PatchFeatures
from tools.methods.featae.export import FeatAETrained
from tools.methods.featae.model import FeatAEGraph
from tools.methods.featae.options import OPTIONS, parse_options

log = logging.getLogger(__name__)


class FeatAEMethod(BackboneMethod):
    """An autoencoder of frozen-backbone patch features; its reconstruction error is the anomaly map."""

    name = "featae"
    options = OPTIONS

    def fit(self, images: list[np.ndarray], opts: FitOptions) -> FeatAETrained:
        """Extract (or reuse) patch features, standardize them, train the autoencoder on them."""
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
