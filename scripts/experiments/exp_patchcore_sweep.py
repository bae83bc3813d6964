"""PatchCore (torch, fp32) accuracy on MTD by image geometry x stages x standardization x coreset ratio.

    nice -n 10 python scripts/experiments/exp_patchcore_geom.py --geom squash --size 160 \
        --combos s5 s5:z s5,s6 s5,s6:z s5,s6,s7:z --ratios 0.03,0.1

A combo "s5,s6:z" standardizes the features (each channel divided by its spread over the training
patches, the `standardize` option of the method). Features are cached in /tmp/pc per geometry and size.

squash: resize to size x size (what edged.preprocess does); crop: shorter side -> size, centre crop;
crop256: shorter side -> size*256/224, centre crop (torchvision's ImageNet eval transform); pad: longer
side -> size, pad with the edge pixels. Masks get the same transform. Benchmark aid only.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
import exp_patchcore_diag
from exp_patchcore import imread
from exp_patchcore_diag import combine, evaluate_maps, nn_dist, stage_features

from tools.methods.components.blur import gaussian_kernel
from tools.methods.components.sampling import greedy_coreset

EXTS = {".png", ".jpg", ".jpeg", ".bmp"}


def geom(img: np.ndarray, size: int, how: str, nearest: bool = False) -> np.ndarray:
    interp = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    h, w = img.shape[:2]
    if how == "squash":
        return cv2.resize(img, (size, size), interpolation=interp)
    if how.startswith("crop"):
        short = size * 256 // 224 if how == "crop256" else size
        s = short / min(h, w)
        r = cv2.resize(img, (max(size, round(w * s)), max(size, round(h * s))), interpolation=interp)
        y, x = (r.shape[0] - size) // 2, (r.shape[1] - size) // 2
        return r[y:y + size, x:x + size]
    if how == "pad":
        s = size / max(h, w)
        r = cv2.resize(img, (max(1, round(w * s)), max(1, round(h * s))), interpolation=interp)
        py, px = size - r.shape[0], size - r.shape[1]
        mode = cv2.BORDER_CONSTANT if nearest else cv2.BORDER_REPLICATE
        return cv2.copyMakeBorder(r, py // 2, py - py // 2, px // 2, px - px // 2, mode, value=0)
    raise ValueError(how)


def load(data: Path, size: int, how: str) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
    def rgb(p: Path) -> np.ndarray:
        return cv2.cvtColor(geom(imread(p, cv2.IMREAD_COLOR), size, how), cv2.COLOR_BGR2RGB)
    train = [rgb(p) for p in sorted((data / "train" / "good").iterdir()) if p.suffix.lower() in EXTS]
    test: list[np.ndarray] = []
    labels: list[int] = []
    masks: list[np.ndarray] = []
    for d in sorted((data / "test").iterdir()):
        for p in sorted(q for q in d.iterdir() if q.suffix.lower() in EXTS):
            test.append(rgb(p))
            labels.append(0 if d.name == "good" else 1)
            mp = data / "ground_truth" / d.name / f"{p.stem}_mask.png"
            if d.name != "good" and mp.exists():
                m = geom(imread(mp, cv2.IMREAD_GRAYSCALE), size, how, nearest=True) > 127
            else:
                m = np.zeros((size, size), bool)
            masks.append(m)
    return train, test, np.array(labels), np.stack(masks)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("/work/shared/datasets/mtd"))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--geom", nargs="+", default=["squash", "crop", "pad"])
    ap.add_argument("--combos", nargs="+", default=["s5"])
    ap.add_argument("--ratios", default="0.1")
    ap.add_argument("--sigma", type=float, default=4.0)
    ap.add_argument("--variant", default="")
    a = ap.parse_args()
    torch.set_num_threads(2)
    exp_patchcore_diag.STAGES = ["s2", "s3", "s4", "s5", "s6", "s7"]
    for how in a.geom:
        t0 = time.perf_counter()
        train, test, labels, masks = load(a.data, a.size, how)
        cache = Path(f"/tmp/pc/geom27_{how}_{a.size}{a.variant}.pt")
        cache.parent.mkdir(parents=True, exist_ok=True)
        if cache.exists():
            ftr, fte = torch.load(cache)
        else:
            ftr, fte = stage_features(train, variant=a.variant), stage_features(test, variant=a.variant)
            torch.save((ftr, fte), cache)
        print(f"{how}: features {time.perf_counter() - t0:.0f}s", flush=True)
        for combo_s in a.combos:
            combo, *mods = combo_s.split(":")
            tr, te = combine(ftr, combo.split(","), {}, 3), combine(fte, combo.split(","), {}, 3)
            d = tr.shape[1]
            if "z" in mods:  # only the scale matters for distances
                sd = tr.std((0, 2, 3), keepdim=True).clamp_min(1e-3)
                tr, te = tr / sd, te / sd
            patches = tr.permute(0, 2, 3, 1).reshape(-1, d)
            stride = a.size // tr.shape[-1]
            k1 = gaussian_kernel(a.sigma / stride)
            for r in [float(x) for x in a.ratios.split(",")]:
                idx = greedy_coreset(patches, round(r * patches.shape[0]), dims=64)
                img, raw, pix = evaluate_maps(nn_dist(te, patches[idx]), k1, a.size, labels, masks)
                print(f"{how:8s} {a.size} {combo_s:12s} r={r:.2f} bank={len(idx):6d} image={img:.4f} raw={raw:.4f} "
                      f"pixel={pix:.4f}", flush=True)


if __name__ == "__main__":
    main()
