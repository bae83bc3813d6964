"""featae variants and featae + memory bank fused, on cached features (torch fp32; benchmark aid only).

    nice python scripts/experiments/exp_featae.py --size 160 --combos s5,s6 s4,s5,s6 --fuse

Needs the feature cache of exp_backbones.py (/tmp/pc/bb_<data>_<variant>_<size>.pt). Fits on all train/good
images, scores the whole test split. Fusion: each patch map divided by its spread on 20% of the good training
images held out from that fit (so neither map's scale decides), then summed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from exp_backbones import scores
from exp_patchcore import load
from exp_patchcore_diag import combine, nn_dist

from tools.methods.base import FitOptions
from tools.methods.components.feature_ae import train_ae
from tools.methods.components.sampling import greedy_coreset
from tools.methods.patchcore import METHOD


def ae_errors(ae: torch.nn.Module, f: torch.Tensor, mean: torch.Tensor, inv: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = []
        for i in range(0, f.shape[0], 64):
            x = (f[i:i + 64] - mean.view(1, -1, 1, 1)) * inv.view(1, -1, 1, 1)
            d = x - ae(x)
            out.append(torch.sqrt((d * d).sum(1, keepdim=True) + 1e-12))
        return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("/work/shared/datasets/mtd"))
    ap.add_argument("--variant", default="lite1")
    ap.add_argument("--size", default="160")
    ap.add_argument("--combos", nargs="+", default=["s5,s6"])
    ap.add_argument("--hidden", nargs="+", type=int, default=[192])
    ap.add_argument("--bottleneck", nargs="+", type=int, default=[32])
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--jitter", nargs="+", type=float, default=[0.0])
    ap.add_argument("--topk", nargs="+", type=int, default=[1, 10])
    ap.add_argument("--fuse", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    width, _, height = a.size.partition("x")
    spec = METHOD.input_spec(FitOptions(size=int(width), height=int(height) if height else None))
    _, _, labels, masks = load(a.data, spec)
    ftr, fte = torch.load(Path(f"/tmp/pc/bb_{a.data.name}_{a.variant}_{a.size}.pt"))
    n = ftr["s5"].shape[0]
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(n, generator=g)
    fit_idx, cal_idx = perm[: int(0.8 * n)], perm[int(0.8 * n):]
    for combo_s in a.combos:
        combo = combo_s.split(",")
        tr, te = combine(ftr, combo, {}, 3), combine(fte, combo, {}, 3)
        stride = spec.width // tr.shape[-1]
        d = tr.shape[1]
        patches = tr.permute(0, 2, 3, 1).reshape(-1, d)
        mean, inv = patches.mean(0), 1.0 / patches.std(0).clamp_min(1e-3)
        maps: dict[str, torch.Tensor] = {}
        for hid, bn, jit in [(h, b, j) for h in a.hidden for b in a.bottleneck for j in a.jitter]:
            t0 = time.perf_counter()
            opts = {"hidden": hid, "bottleneck": bn, "epochs": a.epochs, "lr": 2e-3, "jitter": jit}
            ae, losses = train_ae((patches - mean) * inv, opts, 0)
            err = ae_errors(ae, te, mean, inv)
            maps[f"featae h{hid} b{bn} j{jit:g}"] = err
            if a.fuse:
                fp = tr[fit_idx].permute(0, 2, 3, 1).reshape(-1, d)
                ae2, _ = train_ae((fp - mean) * inv, opts, 0)
                cal_ae = ae_errors(ae2, tr[cal_idx], mean, inv)
                maps["_ae_scale"] = cal_ae.std() + 0 * cal_ae.mean()
            print(f"{combo_s} h{hid} b{bn} j{jit:g}: loss {losses[0]:.3f}->{losses[-1]:.3f} "
                  f"{time.perf_counter() - t0:.0f}s", flush=True)
        if a.fuse:
            sd = patches.std(0).clamp_min(1e-3)
            bank_all = patches / sd
            idx = greedy_coreset(bank_all, round(0.1 * bank_all.shape[0]), dims=64)
            pc = nn_dist(te / sd.view(1, -1, 1, 1), bank_all[idx])
            maps["patchcore"] = pc
            fp = (tr[fit_idx] / sd.view(1, -1, 1, 1)).permute(0, 2, 3, 1).reshape(-1, d)
            idx2 = greedy_coreset(fp, round(0.1 * fp.shape[0]), dims=64)
            cal_pc = nn_dist(tr[cal_idx] / sd.view(1, -1, 1, 1), fp[idx2])
            ae_key = [k for k in maps if k.startswith("featae")][-1]
            ae_scale = maps.pop("_ae_scale")
            for w in (0.25, 0.5, 1.0):
                maps[f"fused w_ae={w}"] = pc / cal_pc.std() + w * maps[ae_key] / ae_scale
            # what the bundle does: each map divided by its mean over the training patches (in-sample)
            sub = torch.randperm(patches.shape[0], generator=g)[:20000]
            tr_pc = nn_dist((patches[sub] / sd).t()[None, :, :, None], bank_all[idx]).mean()
            tr_ae = ae_errors(ae, patches[sub].t()[None, :, :, None], mean, inv).mean()
            print(f"in-sample means: patchcore {float(tr_pc):.3f} featae {float(tr_ae):.3f}", flush=True)
            for w in (0.25, 0.5, 1.0, 2.0):
                maps[f"fused-in w_ae={w}"] = pc / tr_pc + w * maps[ae_key] / tr_ae
        for name, m in maps.items():
            for k in a.topk:
                s, amap = scores(m, 4.0 / stride, (spec.height, spec.width), k)
                img = roc_auc_score(labels, s)
                pix = roc_auc_score(masks.ravel(), amap.numpy().ravel()) if k == a.topk[0] else float("nan")
                print(f"{a.size} {combo_s:10s} {name:22s} top{k:<3d} image={img:.4f} pixel={pix:.4f}", flush=True)


if __name__ == "__main__":
    main()
