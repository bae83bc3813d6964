"""Fast torch-only diagnosis of PatchCore variants on cached features (no ONNX): which stages, coreset
size and scoring work on a dataset. Benchmark aid only; the bundle path is scripts/experiments/exp_patchcore.py.

    nice -n 10 python scripts/experiments/exp_patchcore_diag.py --size 224 --combos s5 s3,s5 s4,s5 --ratios 0.01,0.1
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from exp_patchcore import load

from tools.backbones import IMAGENET_MEAN, IMAGENET_STD, Normalize, SameConv2d, efficientnet_lite0
from tools.methods.base import FitOptions
from tools.methods.components.blur import gaussian_kernel
from tools.methods.components.sampling import greedy_coreset
from tools.methods.components.tensors import images_to_tensor
from tools.methods.patchcore import METHOD

STAGES = ["s2", "s3", "s4", "s5", "s6"]


@torch.no_grad()
def stage_features(images: list[np.ndarray], batch: int = 16, variant: str = "") -> dict[str, torch.Tensor]:
    net, norm = efficientnet_lite0(), Normalize()
    if "sym" in variant:  # symmetric padding instead of TensorFlow SAME
        for mod in net.modules():
            if isinstance(mod, SameConv2d):
                mod.__class__ = torch.nn.Conv2d  # type: ignore[assignment]  # a deliberate class swap, same weights
                mod.padding = (mod.kernel_size[0] // 2,) * 2
    if "inet" in variant:  # torchvision's ImageNet mean/std instead of Lite's (x*255 - 127) / 128
        norm = Normalize(mean=IMAGENET_MEAN, std=IMAGENET_STD)
    out: dict[str, list[torch.Tensor]] = {s: [] for s in STAGES}
    for i in range(0, len(images), batch):
        feats = net.features(norm(images_to_tensor(images[i:i + batch])), STAGES)
        for s, f in zip(STAGES, feats, strict=True):
            out[s].append(f.half())
    return {s: torch.cat(v) for s, v in out.items()}


def combine(feats: dict[str, torch.Tensor], combo: list[str], weights: dict[str, float], agg: int) -> torch.Tensor:
    grid = max(tuple(feats[s].shape[-2:]) for s in combo)
    parts = []
    for s in combo:
        f = feats[s].float() * weights.get(s, 1.0)
        if agg > 1:
            f = F.avg_pool2d(f, agg, 1, agg // 2, count_include_pad=False)
        if tuple(f.shape[-2:]) != grid:
            f = F.interpolate(f, size=grid, mode="bilinear", align_corners=False)
        parts.append(f)
    return torch.cat(parts, 1)


@torch.no_grad()
def nn_dist(test: torch.Tensor, bank: torch.Tensor, chunk: int = 8192) -> torch.Tensor:
    n, d, h, w = test.shape
    a = test.permute(0, 2, 3, 1).reshape(-1, d)
    bsq = (bank * bank).sum(1)
    out = []
    for i in range(0, a.shape[0], chunk):
        x = a[i:i + chunk]
        d2 = (x * x).sum(1, keepdim=True) - 2 * x @ bank.t() + bsq
        out.append(d2.min(1).values.clamp_min(0).sqrt())
    return torch.cat(out).view(n, 1, h, w)


def evaluate_maps(dist: torch.Tensor, k1: torch.Tensor, size: int, labels: np.ndarray,
                  masks: np.ndarray) -> tuple[float, float, float]:
    """Patch distances (N, 1, h, w) -> smoothed, upsampled maps -> (image AUROC of the map max, image
    AUROC of the raw patch max, pixel AUROC): what the bundle's graph does after the kNN."""
    p = (k1.numel() - 1) // 2
    m = F.conv2d(F.pad(dist, [p, p, 0, 0], mode="replicate"), k1.view(1, 1, 1, -1))
    m = F.conv2d(F.pad(m, [0, 0, p, p], mode="replicate"), k1.view(1, 1, -1, 1))
    amap = F.interpolate(m, size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    return (roc_auc_score(labels, amap.flatten(1).max(1).values.numpy()),
            roc_auc_score(labels, dist.flatten(1).max(1).values.numpy()),
            roc_auc_score(masks.ravel(), amap.numpy().ravel()))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("/work/shared/datasets/mtd"))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--combos", nargs="+", default=["s5", "s3,s5"])
    ap.add_argument("--ratios", default="0.01,0.1")
    ap.add_argument("--sigma", type=float, default=4.0)
    ap.add_argument("--cap", type=int, default=200_000)
    ap.add_argument("--dims", type=int, default=64)
    ap.add_argument("--agg", type=int, default=3)
    ap.add_argument("--variant", default="", help="backbone variant for the ablation: sym, inet, syminet")
    ap.add_argument("--weights", default="", help="per-stage feature weights, e.g. s3=2,s5=1")
    a = ap.parse_args()
    torch.set_num_threads(1)
    spec = METHOD.input_spec(FitOptions(size=a.size))
    train, test, labels, masks = load(a.data, spec)
    t0 = time.perf_counter()
    cache = Path(f"/tmp/pc/feat_{a.size}{a.variant}.pt")
    if cache.exists():
        ftr, fte = torch.load(cache)
    else:
        ftr, fte = stage_features(train, variant=a.variant), stage_features(test, variant=a.variant)
        torch.save((ftr, fte), cache)
    print(f"features {time.perf_counter() - t0:.0f}s", {s: tuple(v.shape[1:]) for s, v in ftr.items()}, flush=True)
    weights = {k: float(v) for k, v in (kv.split("=") for kv in a.weights.split(",") if kv)}
    for combo_s in a.combos:
        combo = combo_s.split(",")
        tr, te = combine(ftr, combo, weights, a.agg), combine(fte, combo, weights, a.agg)
        d = tr.shape[1]
        patches = tr.permute(0, 2, 3, 1).reshape(-1, d)
        total = patches.shape[0]
        if total > a.cap:
            patches = patches[torch.randperm(total, generator=torch.Generator().manual_seed(0))[: a.cap]]
        stride = a.size // tr.shape[-1]
        k1 = gaussian_kernel(a.sigma / stride)
        for r in [float(x) for x in a.ratios.split(",")]:
            t1 = time.perf_counter()
            idx = (greedy_coreset(patches, round(r * total), dims=a.dims) if r < 1
                   else torch.arange(patches.shape[0]))
            tc = time.perf_counter() - t1
            img_max, img_raw, pix = evaluate_maps(nn_dist(te, patches[idx]), k1, a.size, labels, masks)
            print(f"{combo_s:10s} d={d:4d} grid={tr.shape[-1]} ratio={r:.3f} bank={len(idx):6d} coreset {tc:5.0f}s  "
                  f"image(max map)={img_max:.4f} image(max raw)={img_raw:.4f} pixel={pix:.4f}", flush=True)


if __name__ == "__main__":
    main()
