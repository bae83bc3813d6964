"""Fitting PatchCore: features of the good images, per-channel standardization, optional PCA, and the
greedy coreset that becomes the memory bank; `PatchCoreMethod` is what ``--method patchcore`` runs."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from tools.backbones import efficientnet_lite, stage_outputs
from tools.methods.base import FitOptions
from tools.methods.components.feature_ae import AE_DEFAULTS, train_ae
from tools.methods.components.features import BackboneMethod, PatchFeatures
from tools.methods.components.options import OptionError
from tools.methods.components.sampling import greedy_coreset
from tools.methods.patchcore.export import PatchCoreTrained
from tools.methods.patchcore.model import BesideBank, ImageGaussian, PatchCoreGraph, feature_statistics
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


SCALE_PATCHES = 20_000  # training patches whose mean bank distance and autoencoder error set the fusion's scales


def beside_bank(graph: PatchCoreGraph, patches: torch.Tensor, weight: float, seed: int,
                ) -> tuple[BesideBank, dict[str, Any]]:
    """The feature autoencoder (featae's defaults) trained on the bank's own (scaled) training patches, and the
    two scales: the mean bank distance and the mean autoencoder error over a seeded sample of those patches.
    In-sample, both a little optimistic (a patch's own image is in the bank and in the autoencoder's data),
    alike: the scales only weigh the two grids, the threshold comes from cross-fitting as ever."""
    t0 = time.perf_counter()
    ae_opts = dict(AE_DEFAULTS)
    mean, inv_std = patches.mean(0), 1.0 / patches.std(0).clamp_min(1e-3)
    ae, losses = train_ae((patches - mean) * inv_std, ae_opts, seed)
    beside = BesideBank(ae, mean, inv_std, weight).eval()
    g = torch.Generator().manual_seed(seed)
    sample = patches[torch.randperm(patches.shape[0], generator=g)[:SCALE_PATCHES]].t()[None, :, :, None]
    with torch.no_grad():
        bank_scale = float(graph.nearest(sample).mean())
        ae_scale = float(beside.errors(sample).mean())
    beside.bank_scale.fill_(max(bank_scale, 1e-6))
    beside.ae_scale.fill_(max(ae_scale, 1e-6))
    info = {"weight": weight, **ae_opts, "loss_first": round(losses[0], 4), "loss_last": round(losses[-1], 4),
            "bank_scale": round(bank_scale, 5), "ae_scale": round(ae_scale, 5),
            "seconds": round(time.perf_counter() - t0, 1)}
    log.info("patchcore: feature autoencoder beside the bank (weight %g): loss %.3f -> %.3f, scales bank %.3f / "
             "autoencoder %.3f (%.0f s)", weight, losses[0], losses[-1], bank_scale, ae_scale, info["seconds"])
    return beside, info


@torch.no_grad()
def image_gaussian(graph: PatchCoreGraph, feats: torch.Tensor, weight: float, chunk: int = 32,
                   ) -> tuple[ImageGaussian, dict[str, Any]]:
    """The image-level Gaussian of the training images' `feature_statistics` (raw features `feats` (N, D, h, w)
    taken through the graph's own projection and scale, so it sees what the graph sees), its covariance shrunk
    by Ledoit-Wolf (2D statistics from maybe fewer images: the plain inverse would be singular), and the factor
    ``weight`` x the mean bank score / the mean Mahalanobis distance, both over the training images in sample
    (alike optimistic; the threshold comes from cross-fitting as ever)."""
    from sklearn.covariance import LedoitWolf

    t0 = time.perf_counter()
    stats, bank_scores = [], []
    for i in range(0, feats.shape[0], chunk):
        f = graph.features.project(feats[i:i + chunk].float())
        stats.append(feature_statistics(f))
        bank_scores.append(graph.head(graph.distances_of(f))[0])
    x = torch.cat(stats).double()
    lw = LedoitWolf().fit(x.numpy())
    gaussian = ImageGaussian(torch.from_numpy(lw.location_), torch.from_numpy(lw.precision_), 1.0)
    mean_distance = float(gaussian.distance(x.float()).mean())
    mean_bank = float(torch.cat(bank_scores).mean())
    gaussian.factor.fill_(weight * mean_bank / max(mean_distance, 1e-6))
    info = {"weight": weight, "dims": int(x.shape[1]), "shrinkage": round(float(lw.shrinkage_), 4),
            "mean_distance": round(mean_distance, 4), "mean_bank_score": round(mean_bank, 4),
            "factor": round(float(gaussian.factor), 6), "seconds": round(time.perf_counter() - t0, 1)}
    log.info("patchcore: image Gaussian beside the bank (weight %g): %d statistics, shrinkage %.3f, factor %.4g "
             "(%.1f s)", weight, info["dims"], lw.shrinkage_, info["factor"], info["seconds"])
    return gaussian, info


POOL_IMAGES = 200  # training images scored without their own patches to set fused pooling's units


def bank_sources(n_images: int, copies: int, grid_cells: int, kept: torch.Tensor | None,
                 coreset: torch.Tensor) -> torch.Tensor:
    """The training image (original index, copies mapped to theirs) each memory-bank row came from, (M,).

    Patches are laid out image by image (`grid_cells` each), the originals first, then `copies` copies per
    original in order (`tools.fit.with_copies`); `kept` is the random cap's selection (None: all), `coreset`
    the rows the coreset kept of those."""
    rows = coreset if kept is None else kept[coreset]
    src = rows // grid_cells
    originals = n_images // (1 + copies)
    return torch.where(src < originals, src, (src - originals) // max(copies, 1))


def with_camera_copies(images: torch.Tensor, feats: torch.Tensor, opts: FitOptions,
                       extract: Callable[[list[np.ndarray]], torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused pooling's images (indices) and raw features, plus each one as the camera may deliver it
    (`FitOptions.camera_copies`: through JPEG, under the light corners), under the original's index.

    The pooled statistics of a PNG-trained model shift under JPEG far more than they vary between stored good
    parts (the grid's mean most: compression moves every cell), and in units of that spread alone a good part
    through JPEG scored 30 spreads; the fold models' spreads differ by a few percent, so their calibration
    scores did not cover the bundle's (22% false rejects through JPEG 50 in the test). In units that include
    the camera's copies, the threshold set through them carries over."""
    if opts.camera_copies is None:
        return images, feats
    copies, owners = [], []
    for index in images.tolist():
        for copy in opts.camera_copies(index):
            copies.append(copy)
            owners.append(index)
    if not copies:
        return images, feats
    return torch.cat([images, torch.tensor(owners, dtype=images.dtype)]), torch.cat([feats, extract(copies)])


@torch.no_grad()
def fused_pool_stats(graph: PatchCoreGraph, feats: torch.Tensor, images: torch.Tensor, sources: torch.Tensor,
                     ) -> dict[str, Any]:
    """Set fused pooling's units from training images (`images`: their indices; `feats`: their raw features) each
    scored against the bank without its own patches (nor its light copies'): what a good image the bank never saw
    scores, the statistics' spread included, without refitting. An image whose own patches are the whole bank
    (two tiny images) cannot be scored that way and is left out."""
    t0 = time.perf_counter()
    rows = []
    for i, index in enumerate(images.tolist()):
        ignore = sources == index
        if bool(ignore.all()):
            continue
        f = graph.features.project(feats[i:i + 1].float())
        rows.append(graph.head.statistics(graph.head.smoothed(graph.distances_of(f, ignore))))
    if len(rows) < 2:
        raise OptionError("patchcore: pool=fused needs at least two training images whose patches are not the "
                         "whole memory bank; use pool=top for this data")
    mean, std = graph.head.set_pool_stats(torch.cat(rows))
    info = {"statistics": ["max", f"top {graph.head.top:g}", "mean"], "images": len(rows),
            "mean": [round(v, 5) for v in mean], "std": [round(v, 5) for v in std],
            "seconds": round(time.perf_counter() - t0, 1)}
    log.info("patchcore: fused pooling from %d training images scored without their own patches: means %s, "
             "spreads %s (%.1f s)", len(rows), info["mean"], info["std"], info["seconds"])
    return info


class PatchCoreMethod(BackboneMethod):
    """Frozen-backbone patch features against a coreset memory bank of the good patches (docs/patchcore.md)."""

    name = "patchcore"
    options = OPTIONS
    # `--augment-light auto` where the light is not normalized: one copy under x1.3 (the tiles: x1.3 false rejects
    # 6.3% -> 2.8%, recall at the threshold 44.6% -> 51.8%; fit 1:52 -> 2:57, docs/input-health.md)
    auto_light_copies = 1
    # `--augment-jpeg auto` on lossless training images: one copy with sensor noise, then JPEG (rail through JPEG 50:
    # 95% -> 7.5% false rejects, recall at the threshold 91.7% -> 97.9%; docs/detection.md)
    auto_encoded_copies = True

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
        pool_images, pool_feats, stored = None, None, 0
        if o["pool"] == "fused":  # its own generator: the bank's random cap stays what it is with pool=top
            pick = torch.Generator().manual_seed(opts.seed + 1)
            pool_images = torch.randperm(n // (1 + opts.copies), generator=pick)[:POOL_IMAGES].sort().values
            stored = len(pool_images)
            pool_images, pool_feats = with_camera_copies(pool_images, feats[pool_images].clone(), opts,
                                                         lambda ims: self.cache.features(features, key, ims,
                                                                                         o["batch"], False))
        if not o["gaussian"]:
            del feats  # kept for the image Gaussian's per-image statistics only
        t_feat = time.perf_counter() - t0
        total = patches.shape[0]
        g = torch.Generator().manual_seed(opts.seed)
        kept = None
        if total > o["max_patches"]:
            kept = torch.randperm(total, generator=g)[: o["max_patches"]]
            patches = patches[kept]
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
        # the copies of `--augment-light`/`--augment-jpeg` enrich the bank (a clipped highlight, a JPEG block), not
        # enlarge it: its size, the bundle's and the kNN's cost follow the originals
        k = max(1, round(o["coreset"] * total / (1 + opts.copies)))
        t1 = time.perf_counter()
        idx = greedy_coreset(patches, k, dims=o["coreset_dims"], seed=opts.seed, progress=opts.progress)
        bank = patches[idx].clone()
        t_core = time.perf_counter() - t1
        stride = min(stage_outputs(o["backbone"])[s][1] for s in layers)
        graph = PatchCoreGraph(features, bank, o["sigma"] / stride, (spec.height, spec.width), o["top"],
                               pool=o["pool"]).eval()
        params = {**o, "grid": [h, w], "feature_dims": int(bank.shape[1]), "train_patches": int(total),
                  "bank_size": int(bank.shape[0]), "backbone": f"efficientnet-{o['backbone']} (ImageNet)",
                  "feature_seconds": round(t_feat, 1), "coreset_seconds": round(t_core, 1)}
        if o["featae"] > 0:
            graph.beside, params["beside_bank"] = beside_bank(graph, patches, o["featae"], opts.seed)
        if o["gaussian"] > 0:
            graph.gaussian, params["image_gaussian"] = image_gaussian(graph, feats, o["gaussian"])
            del feats
        if pool_images is not None and pool_feats is not None:  # after the autoencoder: the grid's own units
            sources = bank_sources(n, opts.copies, h * w, kept, idx)
            params["fused_pool"] = fused_pool_stats(graph, pool_feats, pool_images, sources)
            params["fused_pool"]["camera_copies"] = len(pool_images) - stored
        log.info("patchcore: %d images, %d patches of %d dims on a %dx%d grid -> bank of %d (features %.0f s, "
                 "coreset %.0f s)", n, total, bank.shape[1], h, w, bank.shape[0], t_feat, t_core)
        return PatchCoreTrained(spec=spec, graph=graph, params=params)
