"""CAE experiments on a cached MTD (scripts/experiments/exp_cae_cache.py): train one config, score many heads.

    PYTHONPATH=. python scripts/experiments/exp_cae.py NAME [--base reference|default] [--onnx] KEY=VALUE ...

Appends one JSON line per (config, scoring head) to /tmp/cae_exp/results.jsonl. Benchmark only: the
shared pipeline (`edged-train fit/evaluate`) is what the reported figures come from.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import TypedDict

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from tools.methods.cae.model import Autoencoder, ErrorHead
from tools.methods.cae.options import DEFAULT, REFERENCE, CaeConfig
from tools.methods.cae.train import position_stats, train_autoencoder


class Head(TypedDict, total=False):
    """The scoring-head fields of a CaeConfig that one row of HEADS sets."""

    error: str
    blur: float
    score: str
    topk: float
    position_norm: bool


HEADS: list[Head] = [
    Head(error="l2", blur=0.0, score="mean", position_norm=False),
    Head(error="l1", blur=2.0, score="topk", topk=0.01, position_norm=False),
    Head(error="l1", blur=2.0, score="topk", topk=0.01, position_norm=True),
    Head(error="ssim", blur=2.0, score="topk", topk=0.01, position_norm=False),
    Head(error="ssim", blur=2.0, score="topk", topk=0.01, position_norm=True),
    Head(error="ssim+l1", blur=2.0, score="topk", topk=0.01, position_norm=False),
    Head(error="ssim+l1", blur=2.0, score="topk", topk=0.01, position_norm=True),
    Head(error="ssim+l1", blur=4.0, score="topk", topk=0.01, position_norm=True),
    Head(error="ssim+l1", blur=2.0, score="max", position_norm=True),
]


def load_saved(name: str) -> tuple[CaeConfig, Autoencoder]:
    """A model this script saved under /tmp/cae_exp, in eval mode (for the other exp_cae_* scripts)."""
    saved = torch.load(f"/tmp/cae_exp/{name}.pt", weights_only=False)
    model = Autoencoder(saved["cfg"])
    model.load_state_dict(saved["state"])
    return saved["cfg"], model.eval()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("--base", default="default")
    ap.add_argument("--onnx", action="store_true")
    ap.add_argument("--cache", default="/tmp/cae_exp/mtd128.npz")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("opts", nargs="*")
    a = ap.parse_args()
    torch.set_num_threads(1)
    base = REFERENCE if a.base == "reference" else DEFAULT
    cfg = CaeConfig.from_options(base, dict(o.split("=", 1) for o in a.opts), None)
    d = np.load(a.cache)
    def imgs(arr: np.ndarray) -> list[np.ndarray]:
        return [np.repeat(x[:, :, None], 3, 2) if cfg.channels == 3 else x for x in arr]
    t0 = time.time()
    model, hist = train_autoencoder(imgs(d["train"]), cfg, a.seed, progress=True, desc=a.name)
    fit_s = time.time() - t0
    torch.save({"cfg": cfg, "state": model.state_dict()}, f"/tmp/cae_exp/{a.name}.pt")
    test = torch.from_numpy(np.stack(imgs(d["test"])).astype(np.float32) / 255)
    test = test[:, None] if test.ndim == 3 else test.permute(0, 3, 1, 2)
    with torch.no_grad():
        recon = torch.cat([model(test[i:i + 64]) for i in range(0, len(test), 64)])
    label, mask = d["label"], d["mask"]
    out = Path("/tmp/cae_exp/results.jsonl")
    train = torch.from_numpy(np.stack(imgs(d["train"])).astype(np.float32) / 255)
    train = train[:, None] if train.ndim == 3 else train.permute(0, 3, 1, 2)
    for h in HEADS:
        hc = replace(cfg, **h)
        head = ErrorHead(hc, 128, 128)
        if hc.position_norm:
            head.set_position_stats(*position_stats(model, ErrorHead(hc, 128, 128), train))
        with torch.no_grad():
            amap, score = head(test, recon)
        amap = amap[:, 0].numpy()
        img = roc_auc_score(label, score.numpy())
        pix = roc_auc_score(mask.ravel(), amap.ravel())
        per = {k: round(roc_auc_score(np.r_[np.zeros((label == 0).sum()), np.ones((d["kind"] == k).sum())],
                                       np.r_[score.numpy()[label == 0], score.numpy()[d["kind"] == k]]), 3)
               for k in sorted(set(d["kind"])) if k != "good"}
        rec = dict(name=a.name, cfg=a.opts, base=a.base, head=h, image_auroc=round(img, 4), pixel_auroc=round(pix, 4),
                   per_defect=per, fit_s=round(fit_s), loss=round(hist[-1], 5), epochs=cfg.epochs)
        print(json.dumps(rec))
        with out.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
