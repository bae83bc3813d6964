"""Score a model saved by exp_cae.py with many error/score heads (no retraining). Benchmark only.

    PYTHONPATH=. python scripts/experiments/exp_cae_heads.py NAME
"""

from __future__ import annotations

import sys
from dataclasses import replace

import numpy as np
import torch
from exp_cae import load_saved
from sklearn.metrics import roc_auc_score

from tools.methods.cae.model import ErrorHead
from tools.methods.components.blur import GaussianBlur


def main(name: str) -> None:
    torch.set_num_threads(1)
    cfg, model = load_saved(name)
    d = np.load("/tmp/cae_exp/mtd128.npz")
    x = torch.from_numpy(d["test"].astype(np.float32)[:, None] / 255)
    if cfg.channels == 3:
        x = x.repeat(1, 3, 1, 1)
    with torch.no_grad():
        y = torch.cat([model(x[i:i + 64]) for i in range(0, len(x), 64)])
    label, mask = d["label"], d["mask"].ravel()
    big = GaussianBlur(12.0, None, 1, 128, 128)
    for error in ("l1", "ssim", "ssim+l1"):
        for blur in (2.0, 4.0):
            head = ErrorHead(replace(cfg, error=error, blur=blur), 128, 128)
            with torch.no_grad():
                amap = head(x, y)[0]
                local = (amap - big(amap)).flatten(1)
            flat = amap.flatten(1)
            k = 164
            top = torch.topk(flat, k, 1).values.mean(1)
            scores = {"topk": top, "topk-mean": top - flat.mean(1), "topk/mean": top / (flat.mean(1) + 1e-3),
                      "topk-median": top - flat.median(1).values,
                      "local-topk": torch.topk(local, k, 1).values.mean(1)}
            pix = roc_auc_score(mask, amap.numpy().ravel())
            pix_local = roc_auc_score(mask, local.numpy().ravel())
            for sname, s in scores.items():
                per = {kd: round(roc_auc_score(np.r_[np.zeros(286), np.ones((d["kind"] == kd).sum())],
                                               np.r_[s.numpy()[label == 0], s.numpy()[d["kind"] == kd]]), 2)
                       for kd in ("blowhole", "break", "crack", "fray", "uneven")}
                print(f"{name} {error:8s} blur={blur} {sname:12s} img={roc_auc_score(label, s.numpy()):.4f} "
                      f"pix={pix_local if sname == 'local-topk' else pix:.4f} {per}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
