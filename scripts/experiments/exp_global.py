"""Does an image-level Gaussian on pooled features catch what the patch bank misses (MTD's "uneven")?

    nice python scripts/experiments/exp_global.py --size 144x176 [--data DIR]

Needs (or makes) the feature cache of exp_backbones.py. Bank: the default patchcore (lite1 s4+s5+s6, 3x3
aggregation, 10% coreset, top-10% image score). Global: the mean (and standard deviation) of each pooled
stage over the grid, a Gaussian with Ledoit-Wolf shrinkage, Mahalanobis distance. Fusion: each score divided
by its mean on 20% of the good training images held out from that fit, then bank + W * global. Torch fp32,
benchmark aid only.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from exp_backbones import cached_stage_features, scores
from exp_patchcore import EXTS
from exp_patchcore_diag import combine, nn_dist

from tools.methods.components.sampling import greedy_coreset


def pooled(f: dict[str, torch.Tensor], stages: list[str], with_std: bool) -> np.ndarray:
    parts = []
    for s in stages:
        x = f[s].float()
        parts.append(x.mean((2, 3)))
        if with_std:
            parts.append(x.std((2, 3)))
    return torch.cat(parts, 1).numpy().astype(np.float64)


def bank_scores(ftr: dict[str, torch.Tensor], fte: dict[str, torch.Tensor], fit: np.ndarray, rest: np.ndarray,
                spec_w: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    combo = ["s4", "s5", "s6"]
    tr = combine({s: v[torch.from_numpy(fit)] for s, v in ftr.items()}, combo, {}, 3)
    ho = combine({s: v[torch.from_numpy(rest)] for s, v in ftr.items()}, combo, {}, 3)
    te = combine(fte, combo, {}, 3)
    sd = tr.std((0, 2, 3), keepdim=True).clamp_min(1e-3)
    tr, ho, te = tr / sd, ho / sd, te / sd
    patches = tr.permute(0, 2, 3, 1).reshape(-1, tr.shape[1])
    idx = greedy_coreset(patches, round(0.1 * patches.shape[0]), dims=64)
    stride = spec_w // tr.shape[-1]
    out = []
    for x in (te, ho):
        k = max(1, round(0.1 * x.shape[-1] * x.shape[-2]))  # top 10% of the grid cells
        s, _ = scores(nn_dist(x, patches[idx]), 4.0 / stride, (8, 8), k)
        out.append(s)
    return out[0], out[1], np.array([])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("/work/shared/datasets/mtd"))
    ap.add_argument("--variant", default="lite1")
    ap.add_argument("--size", default="144x176")
    ap.add_argument("--weights", nargs="+", type=float, default=[0.25, 0.5, 1.0])
    a = ap.parse_args()
    torch.set_num_threads(2)
    spec, ftr, fte, labels = cached_stage_features(a.data, a.variant, a.size)
    n = ftr["s5"].shape[0]
    perm = np.random.default_rng(0).permutation(n)
    rest, fit = np.sort(perm[: n // 5]), np.sort(perm[n // 5:])
    b_te, b_ho, _ = bank_scores(ftr, fte, fit, rest, spec.width)
    print(f"{a.data.name} {a.size}: bank (80% of train) image AUROC {roc_auc_score(labels, b_te):.4f}", flush=True)
    kinds = np.array([d.name for d in sorted((a.data / "test").iterdir())
                      for q in sorted(d.iterdir()) if q.suffix.lower() in EXTS])

    def per_kind(s: np.ndarray) -> str:
        """Image AUROC of each defect kind against the good test images."""
        out = []
        for k in sorted(set(kinds) - {"good"}):
            pick = (kinds == k) | (kinds == "good")
            out.append(f"{k}={roc_auc_score(labels[pick], s[pick]):.3f}")
        return " ".join(out)

    print(f"  bank per kind: {per_kind(b_te)}", flush=True)
    for stages in (["s6"], ["s7"], ["s5", "s6", "s7"], ["s4", "s5", "s6"]):
        for with_std in (False, True):
            xtr, xte = pooled(ftr, stages, with_std), pooled(fte, stages, with_std)
            lw = LedoitWolf().fit(xtr[fit])
            g_te, g_ho = lw.mahalanobis(xte), lw.mahalanobis(xtr[rest])
            g_auc = roc_auc_score(labels, g_te)
            fused = " ".join(f"W{w:g}={roc_auc_score(labels, b_te / b_ho.mean() + w * g_te / g_ho.mean()):.4f}"
                             for w in a.weights)
            print(f"  global {'+'.join(stages):10s} std={int(with_std)} d={xtr.shape[1]:4d}: alone {g_auc:.4f}; "
                  f"fused {fused}", flush=True)
            half = b_te / b_ho.mean() + 0.5 * g_te / g_ho.mean()
            print(f"    alone per kind: {per_kind(g_te)}; W0.5 per kind: {per_kind(half)}", flush=True)


if __name__ == "__main__":
    main()
