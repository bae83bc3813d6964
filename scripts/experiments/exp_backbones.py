"""Which backbone, stages, size and image score find MTD's defects (torch fp32, cached features).

    nice python scripts/experiments/exp_backbones.py --variants lite0 lite1 lite2 --sizes 160 224 \
        --combos s5,s6 s3,s5,s6 --ratio 0.1 --topk 1 10

Fits on all train/good images, scores the whole test split. Image score: max of the smoothed map, or the
mean of its top-k grid cells. Features are cached in /tmp/pc per variant and size. Benchmark aid only.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from exp_patchcore import load
from exp_patchcore_diag import combine, nn_dist

from edged.bundle import InputSpec
from tools.backbones import Normalize, efficientnet_lite
from tools.methods.base import FitOptions
from tools.methods.components.blur import gaussian_kernel
from tools.methods.components.sampling import greedy_coreset
from tools.methods.components.tensors import images_to_tensor
from tools.methods.patchcore import METHOD

STAGES = ["s2", "s3", "s4", "s5", "s6", "s7"]


@torch.no_grad()
def stage_features(images: list[np.ndarray], variant: str, batch: int = 16) -> dict[str, torch.Tensor]:
    net, norm = efficientnet_lite(variant), Normalize()
    out: dict[str, list[torch.Tensor]] = {s: [] for s in STAGES}
    for i in range(0, len(images), batch):
        for s, f in zip(STAGES, net.features(norm(images_to_tensor(images[i:i + batch])), STAGES), strict=True):
            out[s].append(f.half())
    return {s: torch.cat(v) for s, v in out.items()}


def cached_stage_features(data: Path, variant: str, size: str,
                          ) -> tuple[InputSpec, dict[str, torch.Tensor], dict[str, torch.Tensor], np.ndarray]:
    """The input spec for `size` (WxH or N), the train and test images' stage features (cached in /tmp/pc), and
    the test labels: what the fusion experiments (exp_global, exp_pooling) start from."""
    width, _, height = size.partition("x")
    spec = METHOD.input_spec(FitOptions(size=int(width), height=int(height) if height else None))
    train, test, labels, _ = load(data, spec)
    cache = Path(f"/tmp/pc/bb_{data.name}_{variant}_{size}.pt")
    cache.parent.mkdir(exist_ok=True)
    if cache.exists():
        ftr, fte = torch.load(cache)
    else:
        ftr, fte = stage_features(train, variant), stage_features(test, variant)
        torch.save((ftr, fte), cache)
    return spec, ftr, fte, labels


def scores(dist: torch.Tensor, sigma_cells: float, size: tuple[int, int], topk: int) -> tuple[np.ndarray, torch.Tensor]:
    k1 = gaussian_kernel(sigma_cells)
    p = (k1.numel() - 1) // 2
    m = F.conv2d(F.pad(dist, [p, p, 0, 0], mode="replicate"), k1.view(1, 1, 1, -1))
    m = F.conv2d(F.pad(m, [0, 0, p, p], mode="replicate"), k1.view(1, 1, -1, 1))
    flat = m.flatten(1)
    s = flat.topk(min(topk, flat.shape[1]), dim=1).values.mean(1) if topk > 1 else flat.max(1).values
    return s.numpy(), F.interpolate(m, size=size, mode="bilinear", align_corners=False)[:, 0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("/work/shared/datasets/mtd"))
    ap.add_argument("--variants", nargs="+", default=["lite0"])
    ap.add_argument("--sizes", nargs="+", default=["160"], help="N (square) or WxH")
    ap.add_argument("--combos", nargs="+", default=["s5,s6"])
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--topk", nargs="+", type=int, default=[1])
    ap.add_argument("--sigma", type=float, default=4.0)
    a = ap.parse_args()
    torch.set_num_threads(1)
    for size in a.sizes:
        width, _, height = size.partition("x")
        spec = METHOD.input_spec(FitOptions(size=int(width), height=int(height) if height else None))
        train, test, labels, masks = load(a.data, spec)
        for variant in a.variants:
            cache = Path(f"/tmp/pc/bb_{a.data.name}_{variant}_{size}.pt")
            t0 = time.perf_counter()
            if cache.exists():
                ftr, fte = torch.load(cache)
            else:
                ftr, fte = stage_features(train, variant), stage_features(test, variant)
                torch.save((ftr, fte), cache)
            print(f"{variant} {size}: features {time.perf_counter() - t0:.0f}s", flush=True)
            for combo_s in a.combos:
                combo = combo_s.split(",")
                tr, te = combine(ftr, combo, {}, 3), combine(fte, combo, {}, 3)
                sd = tr.std((0, 2, 3), keepdim=True).clamp_min(1e-3)
                tr, te = tr / sd, te / sd
                d = tr.shape[1]
                patches = tr.permute(0, 2, 3, 1).reshape(-1, d)
                idx = greedy_coreset(patches, round(a.ratio * patches.shape[0]), dims=64) if a.ratio < 1 else \
                    torch.arange(patches.shape[0])
                dist = nn_dist(te, patches[idx])
                stride = spec.width // tr.shape[-1]
                for k in a.topk:
                    s, amap = scores(dist, a.sigma / stride, (spec.height, spec.width), k)
                    img = roc_auc_score(labels, s)
                    pix = roc_auc_score(masks.ravel(), amap.numpy().ravel()) if k == a.topk[0] else float("nan")
                    print(f"{variant} {size} {combo_s:12s} d={d:4d} grid={tr.shape[-1]} bank={len(idx):6d} "
                          f"top{k:<3d} image={img:.4f} pixel={pix:.4f}", flush=True)


if __name__ == "__main__":
    main()
