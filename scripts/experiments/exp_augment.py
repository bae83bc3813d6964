"""Does a memory bank that also holds flipped/rotated copies of the good images rank MTD better?

    nice python scripts/experiments/exp_augment.py --variant lite1 --size 160 --combo s4,s5,s6

Torch fp32, cached features (/tmp/pc), fitted on all train/good images, scored on the test split. Benchmark aid.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from exp_backbones import scores, stage_features
from exp_patchcore import load
from exp_patchcore_diag import combine, nn_dist

from tools.methods.base import FitOptions
from tools.methods.components.sampling import greedy_coreset
from tools.methods.patchcore import METHOD

AUGMENTS = {
    "hflip": lambda im: np.ascontiguousarray(im[:, ::-1]),
    "vflip": lambda im: np.ascontiguousarray(im[::-1]),
    "rot180": lambda im: np.ascontiguousarray(im[::-1, ::-1]),
}


def recall_at(s: np.ndarray, labels: np.ndarray, frr: float) -> float:
    t = np.quantile(s[labels == 0], 1 - frr)
    return float(np.mean(s[labels == 1] > t))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("/work/shared/datasets/mtd"))
    ap.add_argument("--variant", default="lite1")
    ap.add_argument("--size", type=int, default=160)
    ap.add_argument("--combo", default="s4,s5,s6")
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--sets", nargs="+", default=["none", "hflip", "hflip,vflip,rot180"])
    a = ap.parse_args()
    torch.set_num_threads(1)
    spec = METHOD.input_spec(FitOptions(size=a.size))
    train, _test, labels, _masks = load(a.data, spec)
    ftr, fte = torch.load(f"/tmp/pc/bb_{a.data.name}_{a.variant}_{a.size}.pt")
    combo = a.combo.split(",")
    base_tr, te = combine(ftr, combo, {}, 3), combine(fte, combo, {}, 3)
    aug_feats = {}
    for name, fn in AUGMENTS.items():
        cache = Path(f"/tmp/pc/aug_{name}_{a.variant}_{a.size}.pt")
        if not cache.exists():
            torch.save(stage_features([fn(im) for im in train], a.variant), cache)
        aug_feats[name] = combine(torch.load(cache), combo, {}, 3)
    for set_s in a.sets:
        parts = [base_tr] + [aug_feats[n] for n in set_s.split(",") if n != "none"]
        tr = torch.cat(parts)
        sd = base_tr.std((0, 2, 3), keepdim=True).clamp_min(1e-3)
        d = tr.shape[1]
        patches = (tr / sd).permute(0, 2, 3, 1).reshape(-1, d)
        k = round(a.ratio * base_tr.shape[0] * base_tr.shape[2] * base_tr.shape[3]) * len(parts)
        idx = greedy_coreset(patches, k, dims=64)
        dist = nn_dist(te / sd, patches[idx])
        for topk in (1, 16):
            s, _ = scores(dist, 0.25, a.size, topk)
            print(f"{set_s:22s} bank={len(idx):6d} top{topk:<3d} image={roc_auc_score(labels, s):.4f} "
                  f"recall@1%={recall_at(s, labels, 0.01):.3f}", flush=True)


if __name__ == "__main__":
    main()
