"""How the grid of patch distances becomes one image score: single poolings and fused ones (torch fp32).

    nice python scripts/experiments/exp_pooling.py --data /work/shared/datasets/mtd --size 144x176

The default bank (Lite1 s4+s5+s6, 10% coreset) is fitted on 80% of train/good; the other 20% are the
held-out good images whose pooled scores set each statistic's scale (mean and spread), as a bundle's
calibration would, so that fusions add statistics in comparable units. Reports image AUROC and recall at
1% false rejects on the test split (threshold: the 99th percentile of its good scores). Benchmark aid only.
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
from exp_backbones import cached_stage_features
from exp_patchcore_diag import combine, nn_dist

from tools.methods.components.blur import gaussian_kernel
from tools.methods.components.sampling import greedy_coreset

FRACTIONS = {"max": 0.0, "top1%": 0.01, "top5%": 0.05, "top10%": 0.10, "top25%": 0.25, "top50%": 0.5, "mean": 1.0}
FUSIONS = {
    "z(max)+z(top10%)": ["max", "top10%"],
    "z(top10%)+z(mean)": ["top10%", "mean"],
    "z(max)+z(top10%)+z(mean)": ["max", "top10%", "mean"],
    "z(top1%)+z(top10%)+z(top50%)": ["top1%", "top10%", "top50%"],
}


def smooth(dist: torch.Tensor, sigma_cells: float) -> torch.Tensor:
    k1 = gaussian_kernel(sigma_cells)
    p = (k1.numel() - 1) // 2
    m = F.conv2d(F.pad(dist, [p, p, 0, 0], mode="replicate"), k1.view(1, 1, 1, -1))
    return F.conv2d(F.pad(m, [0, 0, p, p], mode="replicate"), k1.view(1, 1, -1, 1)).flatten(1)


def pooled(flat: torch.Tensor) -> dict[str, np.ndarray]:
    out = {}
    for name, frac in FRACTIONS.items():
        k = max(1, round(frac * flat.shape[1]))
        out[name] = (flat.max(1).values if frac == 0 else flat.topk(k, dim=1).values.mean(1)).numpy()
    return out


def recall_at(labels: np.ndarray, s: np.ndarray, frr: float = 0.01) -> float:
    thr = np.quantile(s[labels == 0], 1 - frr)
    return float((s[labels == 1] > thr).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("/work/shared/datasets/mtd"))
    ap.add_argument("--size", default="144x176", help="WxH")
    ap.add_argument("--variant", default="lite1")
    ap.add_argument("--combo", default="s4,s5,s6")
    ap.add_argument("--sigma", type=float, default=4.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    torch.set_num_threads(2)
    t0 = time.perf_counter()
    spec, ftr, fte, labels = cached_stage_features(a.data, a.variant, a.size)
    print(f"features {time.perf_counter() - t0:.0f}s", flush=True)
    combo = a.combo.split(",")
    tr, te = combine(ftr, combo, {}, 3), combine(fte, combo, {}, 3)
    order = np.random.default_rng(a.seed).permutation(tr.shape[0])
    cut = round(0.8 * len(order))
    fit, held = tr[torch.from_numpy(order[:cut])], tr[torch.from_numpy(order[cut:])]
    sd = fit.std((0, 2, 3), keepdim=True).clamp_min(1e-3)
    fit, held, te = fit / sd, held / sd, te / sd
    patches = fit.permute(0, 2, 3, 1).reshape(-1, fit.shape[1])
    bank = patches[greedy_coreset(patches, round(0.1 * patches.shape[0]), dims=64)]
    stride = spec.width // tr.shape[-1]
    ph, pt = pooled(smooth(nn_dist(held, bank), a.sigma / stride)), pooled(smooth(nn_dist(te, bank), a.sigma / stride))
    print(f"{a.data.name} {a.size}: fit {cut}, held-out {len(order) - cut}, test {len(labels)}, grid "
          f"{tuple(tr.shape[-2:])}", flush=True)
    for name in FRACTIONS:
        print(f"  {name:30s} AUROC {roc_auc_score(labels, pt[name]):.4f}  recall@1%FRR "
              f"{recall_at(labels, pt[name]):.3f}", flush=True)
    z = {n: (pt[n] - ph[n].mean()) / max(ph[n].std(), 1e-9) for n in FRACTIONS}
    for fname, parts in FUSIONS.items():
        s = np.sum([z[p] for p in parts], axis=0)
        print(f"  {fname:30s} AUROC {roc_auc_score(labels, s):.4f}  recall@1%FRR {recall_at(labels, s):.3f}",
              flush=True)
    for fname, parts in FUSIONS.items():
        s = np.max([z[p] for p in parts], axis=0)
        label = "max of " + fname.replace("+", ",")
        print(f"  {label:30s} AUROC {roc_auc_score(labels, s):.4f}  recall@1%FRR {recall_at(labels, s):.3f}",
              flush=True)


if __name__ == "__main__":
    main()
