"""Where a bundle's remaining gap is, read off its own test maps (no refit): how the image score would rank if
it pooled a different fraction of the map, and whether the pixel AUROC is held down by where on the part good
images score high (position, border, each image's level) or by localization within each defective image.

    edged-train fit DATA --out B
    nice python scripts/experiments/exp_map_gap.py B DATA

The positional statistics are fitted on half of the test's good parts and judged on the other half: an upper
bound for any per-position normalization a fit could learn, not a method. Benchmark aid only
(docs/detection.md, "Where the tiles' gap is").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from edged.bundle import load_manifest
from edged.detector import Detector
from tools import evaluate as ev
from tools.calibrate import score_images

FRACTIONS = (0.0, 0.02, 0.05, 0.1, 0.16, 0.25, 0.5, 1.0)


def pooled(maps: list[np.ndarray], fraction: float) -> np.ndarray:
    """Each map's mean of its `fraction` highest pixels (the maximum at 0)."""
    out = []
    for m in maps:
        flat = np.sort(m.ravel())[::-1]
        out.append(flat[: max(1, round(fraction * flat.size))].mean())
    return np.asarray(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("data", type=Path)
    ap.add_argument("--border", type=int, default=8, help="pixels of the map's edge left out in one variant")
    args = ap.parse_args()
    manifest = load_manifest(args.bundle)
    detector = Detector(args.bundle, intra_op_threads=2)
    records, _ = ev._test_records(args.data)
    images, records, masks = ev._read_test_images(records, manifest, False, args.data)
    labels = np.asarray([0 if r.is_good else 1 for r in records])
    scores, maps_or_none = score_images(detector, images)
    assert maps_or_none is not None, "the bundle gives no anomaly map"
    maps = [np.asarray(m, np.float32) for m in maps_or_none]
    print(f"{args.bundle.name}: the graph's score: image AUROC {ev.image_auroc(labels, scores):.4f}, "
          f"recall at 1% FRR {ev.recall_at_frr(labels, scores):.3f}")
    for f in FRACTIONS:
        s = pooled(maps, f)
        print(f"  map's top {f:4.0%} mean: image AUROC {ev.image_auroc(labels, s):.4f}, "
              f"recall at 1% FRR {ev.recall_at_frr(labels, s):.3f}")
    if not masks:
        return
    good = np.flatnonzero(labels == 0)
    fitted = set(np.random.default_rng(0).choice(good, len(good) // 2, replace=False).tolist())
    keep = [i for i in range(len(maps)) if i not in fitted and (labels[i] == 0 or i in masks)]
    truth = [ev._at(masks.get(i), maps[i].shape) for i in keep]
    kept = [maps[i] for i in keep]
    stack = np.stack([maps[i] for i in sorted(fitted)])
    mu, sd = stack.mean(0), stack.std(0) + 1e-6
    b = args.border
    variants = {
        "as the bundle maps (held-out half of the good parts)": (truth, kept),
        "minus the good parts' mean at each position": (truth, [m - mu for m in kept]),
        "z-scored at each position": (truth, [(m - mu) / sd for m in kept]),
        "minus each image's own median": (truth, [m - np.median(m) for m in kept]),
        f"its {b}-pixel border left out": ([t[b:-b, b:-b] for t in truth], [m[b:-b, b:-b] for m in kept]),
    }
    for name, (t, m) in variants.items():
        print(f"  pixel AUROC, {name}: {ev.pixel_auroc(t, m):.4f}")
    defective = [j for j, t in enumerate(truth) if t.any()]
    inside = [ev.pixel_auroc([truth[j]], [kept[j]]) for j in defective if not truth[j].all()]
    print(f"  pixel AUROC within each defective image, mean of {len(inside)}: "
          f"{np.mean([v for v in inside if v is not None]):.4f}")
    print(f"  pixel AUROC over the defective images only: "
          f"{ev.pixel_auroc([truth[j] for j in defective], [kept[j] for j in defective]):.4f}")


if __name__ == "__main__":
    main()
