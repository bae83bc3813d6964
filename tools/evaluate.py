"""How good is a bundle on a test set: image/pixel AUROC, AUPRO, false rejects and recall, speed.

Everything is scored through `edged.detector.Detector`, the daemon's code, at the bundle's own
threshold. Pixel metrics compare the anomaly map (at the model's input size) with the ground-truth mask
resized to it (nearest neighbour). AUPRO follows the MVTec AD definition: the per-region overlap
averaged over all ground-truth regions (8-connected components), integrated over the false-positive
rate of good pixels from 0 to 30% and divided by 0.3, so 1.0 is perfect.

Images are shrunk to the model's input size as they are read (`tools.dataset.model_sized`), so memory
does not grow with the camera's resolution; masks are checked against their image's stored size as
they are read, before any scoring; the timing re-reads its few images one at a time at full size, so
it includes the daemon's full-frame preprocessing. Robustness perturbations apply at the model's size.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edged.bundle import Manifest, load_manifest
from edged.detector import Detector
from tools.bundle_out import OutputError, check_writable_dir
from tools.calibrate import score_images
from tools.camera_effects import defocused, light_lut, partly_covered, through_jpeg, with_sensor_noise
from tools.dataset import (
    DatasetError,
    Record,
    as_delivered,
    file_list_sha256,
    load_dataset,
    load_images,
    model_sized,
    read_image,
    read_mask,
)
from tools.export import PRECISIONS, Precision, jsonable

log = logging.getLogger(__name__)

AUPRO_MAX_FPR = 0.3
PIXEL_AUROC_MAX_PIXELS = 30_000_000  # above this the pixels are subsampled (seeded) to bound memory/time


# --- metrics ------------------------------------------------------------------------------------------------------

def image_auroc(labels: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC of scores against labels (1 = defective); None unless both classes are present."""
    from sklearn.metrics import roc_auc_score

    if len(np.unique(labels)) < 2:
        return None
    return float(roc_auc_score(labels, scores))


def recall_at_frr(labels: np.ndarray, scores: np.ndarray, max_frr: float = 0.01) -> float | None:
    """Best recall on defects with at most `max_frr` of the good images rejected (ROC read at that FPR)."""
    from sklearn.metrics import roc_curve

    if len(np.unique(labels)) < 2:
        return None
    fpr, tpr, _ = roc_curve(labels, scores)
    ok = fpr <= max_frr + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def pixel_auroc(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], seed: int = 0) -> float | None:
    """ROC AUC of all map pixels against the masks' (same shapes, pairwise); None unless both kinds of pixel
    occur. Above `PIXEL_AUROC_MAX_PIXELS` pixels a seeded sample of that many is used."""
    from sklearn.metrics import roc_auc_score

    y = np.concatenate([m.ravel() for m in masks])
    s = np.concatenate([a.ravel() for a in maps]).astype(np.float32)
    if y.all() or not y.any():
        return None
    if y.size > PIXEL_AUROC_MAX_PIXELS:
        idx = np.random.default_rng(seed).choice(y.size, PIXEL_AUROC_MAX_PIXELS, replace=False)
        y, s = y[idx], s[idx]
    return float(roc_auc_score(y, s))


def pro_curve(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray] | None:
    """(FPR, PRO) over all thresholds: PRO = mean over ground-truth regions of the fraction of the region found."""
    weights_pos: list[np.ndarray] = []
    n_regions = 0
    for m in masks:
        n, labels = cv2.connectedComponents(m.astype(np.uint8), connectivity=8)
        w = np.zeros(m.shape, np.float64)
        if n > 1:
            sizes = np.bincount(labels.ravel())
            w = np.where(labels > 0, 1.0 / sizes[labels], 0.0)
            n_regions += n - 1
        weights_pos.append(w.ravel())
    y = np.concatenate([m.ravel() for m in masks])
    n_neg = int((~y).sum())
    if n_regions == 0 or n_neg == 0:
        return None
    pos = np.concatenate(weights_pos) / n_regions
    neg = (~y).astype(np.float64) / n_neg
    s = np.concatenate([a.ravel() for a in maps]).astype(np.float64)
    order = np.argsort(-s, kind="stable")
    s, pos, neg = s[order], pos[order], neg[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # one point per distinct threshold (ties together)
    fpr = np.r_[0.0, np.cumsum(neg)[last]]
    pro = np.r_[0.0, np.cumsum(pos)[last]]
    return fpr, pro


def aupro(masks: Sequence[np.ndarray], maps: Sequence[np.ndarray], max_fpr: float = AUPRO_MAX_FPR) -> float | None:
    """Area under the PRO curve up to `max_fpr`, divided by it (1.0 = perfect); None without a defect region
    or a good pixel."""
    curve = pro_curve(masks, maps)
    if curve is None:
        return None
    fpr, pro = curve
    end = int(np.searchsorted(fpr, max_fpr, side="right"))
    x = fpr[:end]
    y = pro[:end]
    if end < fpr.size:  # close the curve exactly at max_fpr
        x = np.r_[x, max_fpr]
        y = np.r_[y, np.interp(max_fpr, fpr, pro)]
    return float(np.trapezoid(y, x) / max_fpr)


def rates(labels: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float | None, float | None]:
    """(false-reject rate on good, recall on defects) at the verdict ``score > threshold``."""
    rejected = scores > threshold
    good, bad = labels == 0, labels == 1
    frr = float(rejected[good].mean()) if good.any() else None
    recall = float(rejected[bad].mean()) if bad.any() else None
    return frr, recall


# --- robustness ---------------------------------------------------------------------------------------------------

def perturbations(seed: int = 0) -> dict[str, Callable[[np.ndarray, int], np.ndarray]]:
    """Named image perturbations (image, index) -> image, as a camera on a line may see them
    (`tools.camera_effects`, the same changes training can calibrate for); seeded per image."""

    def light(gain: float, gamma: float = 1.0) -> Callable[[np.ndarray, int], np.ndarray]:
        lut = light_lut(gain, gamma)
        return lambda im, i: cv2.LUT(im, lut)

    def jpeg(quality: int) -> Callable[[np.ndarray, int], np.ndarray]:
        return lambda im, i: through_jpeg(im, quality)

    def noise(im: np.ndarray, i: int) -> np.ndarray:
        return with_sensor_noise(im, 8.0, np.random.default_rng([seed, i, 1]))

    def occlusion(im: np.ndarray, i: int) -> np.ndarray:
        return partly_covered(im, np.random.default_rng([seed, i, 2]))

    return {
        "strong light (x1.4)": light(1.4), "low light (x0.6)": light(0.6),
        # the moderate changes a station must tolerate (issue 20): x0.7-x1.3, gamma 0.8-1.25
        "light x1.3": light(1.3), "light x0.7": light(0.7), "gamma 0.8": light(1.0, 0.8),
        "gamma 1.25": light(1.0, 1.25),
        "gamma 0.7": light(1.0, 0.7), "gamma 1.5": light(1.0, 1.5), "blur": lambda im, i: defocused(im),
        "noise (sigma 8)": noise, "JPEG quality 75": jpeg(75), "JPEG quality 50": jpeg(50),
        "occlusion (20-35% from a border)": occlusion,
    }


# --- timing -------------------------------------------------------------------------------------------------------

def time_per_image(bundle: Path, precision: str, records: Sequence[Record], warmup: int = 3) -> float | None:
    """Median ms per image through Detector (preprocessing of the full frame + inference), batch 1, 1
    intra-op thread; each image is read at full size just before it is timed, so only one is held."""
    detector = Detector(bundle, precision=precision, intra_op_threads=1)
    times = []
    for k, rec in enumerate([*records[:warmup], *records]):
        image = read_image(rec.path)
        if image is None:
            continue
        t = time.perf_counter()
        detector.infer([image])
        if k >= min(warmup, len(records)):
            times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000.0) if times else None


# --- the evaluation -----------------------------------------------------------------------------------------------

def _test_records(data: Path) -> tuple[list[Record], str]:
    ds = load_dataset(data)
    if ds.test:
        return ds.test, f"{ds.layout}: test split"
    if ds.layout == "mvtec":
        log.warning("%s has no test/ split: evaluating on train/good only (false rejects; no recall), and "
                    "if the bundle was trained on them the figures are optimistic", data)
        return ds.train, "mvtec: train/good (no test split)"
    return ds.train, "folder of good images"


def _model_precision(manifest: Manifest, precision: str | None, bundle: Path) -> Precision:
    """The model to evaluate: `precision`, else the manifest's default; DatasetError when the bundle lacks it."""
    wanted = precision or manifest.default
    for key in manifest.models:
        if key == wanted:
            return key
    raise DatasetError(f"bundle {bundle} has no {wanted} model (has: {', '.join(manifest.models)})")


def _read_test_images(records: list[Record], manifest: Manifest, progress: bool, data: str | Path,
                      ) -> tuple[list[np.ndarray], list[Record], dict[int, np.ndarray]]:
    """The readable test images at the model's size, their records, and their masks by image index (at the
    model's size, checked against the image's stored size)."""
    shapes: list[tuple[int, int]] = []
    images, records = load_images(records, progress=progress, desc="reading test images",
                                  transform=model_sized(manifest.input), shapes=shapes)
    if not images:
        raise DatasetError(f"{data}: no readable test image")
    size = (manifest.input.height, manifest.input.width)
    masks = {i: read_mask(r.mask, size, shapes[i]) for i, r in enumerate(records) if r.mask is not None}
    return images, records, masks


def _recall_per_defect(records: list[Record], scores: np.ndarray, threshold: float) -> dict[str, dict[str, Any]]:
    """Defect label -> {"n": images, "recall": fraction above the threshold}, labels sorted."""
    per_defect = {}
    for t in sorted({r.label for r in records if not r.is_good}):
        sel = np.asarray([r.label == t for r in records])
        per_defect[t] = {"n": int(sel.sum()), "recall": float((scores[sel] > threshold).mean())}
    return per_defect


@dataclass
class _PixelMetrics:
    """What `_pixel_metrics` found; all None / 0 for a model without maps or data without masks."""

    pixel_auroc: float | None = None
    aupro: float | None = None
    n_masks: int = 0
    masks: list[np.ndarray] | None = None  # one per image at its map's shape (for the report); None: no masks


def _pixel_metrics(records: list[Record], maps: list[np.ndarray] | None, full_masks: dict[int, np.ndarray],
                   n_images: int) -> _PixelMetrics:
    """Pixel AUROC and AUPRO of the maps against the masks; images without a mask: good ones count as
    all-good pixels, defective ones are left out."""
    pixel = _PixelMetrics()
    if maps is None or len(maps) != n_images:
        return pixel
    with_masks = [r.mask is not None for r in records]
    pixel.n_masks = int(sum(with_masks))
    if any(with_masks):
        keep = [i for i, r in enumerate(records) if r.is_good or r.mask is not None]
        masks = [_at(full_masks.get(i), maps[i].shape) for i in keep]
        kept_maps = [maps[i] for i in keep]
        pixel.pixel_auroc = pixel_auroc(masks, kept_maps)
        pixel.aupro = aupro(masks, kept_maps)
        masks_by_index = dict(zip(keep, masks, strict=True))
        pixel.masks = [masks_by_index.get(i, np.zeros(maps[i].shape, bool)) for i in range(n_images)]
    return pixel


def _time_models(bundle: Path, manifest: Manifest, records: Sequence[Record]) -> dict[Precision, float | None]:
    """Median ms per image of each precision (None: no such model); a file both entries use is timed once."""
    ms: dict[Precision, float | None] = {}
    for p in PRECISIONS:
        entry = manifest.models.get(p)
        if entry is None:
            ms[p] = None
            continue
        other: Precision = "int8" if p == "fp32" else "fp32"
        if other in ms and ms[other] is not None and manifest.models[other].file == entry.file:
            ms[p] = ms[other]  # the same file: no need to time it twice
            continue
        ms[p] = time_per_image(bundle, p, records)
    return ms


def evaluate_bundle(bundle: str | Path, data: str | Path, report_dir: str | Path, precision: str | None = None,
                    robustness: bool = False, timing_images: int = 30, progress: bool = True,
                    write_html: bool = True) -> dict[str, Any]:
    """Score the test set with the bundle, write DIR/report.json (+ html and plots); return the report."""
    from tools import report as report_mod

    t0 = time.perf_counter()
    bundle = Path(bundle)
    report_dir = Path(report_dir)
    try:
        check_writable_dir(report_dir, "--report")
    except OutputError as exc:
        raise DatasetError(str(exc)) from None
    if timing_images < 0:
        raise DatasetError(f"--timing-images {timing_images}: must be >= 0")
    manifest = load_manifest(bundle)
    chosen = _model_precision(manifest, precision, bundle)
    detector = Detector(bundle, precision=chosen, intra_op_threads=1)
    records, what = _test_records(Path(data))
    images, records, full_masks = _read_test_images(records, manifest, progress, data)
    labels = np.asarray([0 if r.is_good else 1 for r in records])
    scores, maps = score_images(detector, images, progress=progress, desc=f"scoring ({chosen})")
    threshold = detector.threshold
    frr, recall = rates(labels, scores, threshold)
    pixel = _pixel_metrics(records, maps, full_masks, len(images))
    timing_set = records[:timing_images]
    ms = _time_models(bundle, manifest, timing_set)

    result: dict[str, Any] = {
        "bundle": str(bundle), "bundle_id": manifest.bundle_id, "method": manifest.method, "precision": chosen,
        "model_file": manifest.models[chosen].file,
        "data": str(data), "evaluated_on": what, "n_good": int((labels == 0).sum()),
        "n_defect": int((labels == 1).sum()),
        "image_auroc": image_auroc(labels, scores),
        "pixel_auroc": pixel.pixel_auroc, "aupro": pixel.aupro, "n_masks": pixel.n_masks,
        "threshold": threshold, "map_threshold": detector.map_threshold,
        "threshold_info": manifest.models[chosen].threshold.model_dump(),
        "frr": frr, "recall": recall, "recall_per_defect": _recall_per_defect(records, scores, threshold),
        "recall_at_1pct_frr": recall_at_frr(labels, scores, 0.01),
        "ms_per_image": ms.get(chosen), "ms_per_image_fp32": ms.get("fp32"), "ms_per_image_int8": ms.get("int8"),
        "timing": {"images": len(timing_set), "statistic": "median", "intra_op_threads": 1,
                   "includes": "preprocessing + inference via edged.detector.Detector, batch 1"},
        "input": f"{manifest.input.width}x{manifest.input.height} {manifest.input.color_order}",
        "robustness": None,
        "chosen_on_these_defects": chosen_on(manifest, records, Path(data)),
    }
    if result["chosen_on_these_defects"]:
        log.warning("!!! bundle %s was chosen (edged-train fit --choose) on the defect images it is evaluated on: "
                    "its recall and AUROC here are optimistic; judge it on defect images it has not seen",
                    manifest.bundle_id)
    if robustness:
        result["robustness"], rejected = _robustness(detector, records, labels, threshold, progress)
        health = _input_health(manifest, records)
        rejected["none"] = scores[labels == 0] > threshold
        for name, verdict in health.items():
            flags = verdict.pop("flags", [])
            joint = flagged_false_rejects(rejected[name], flags if isinstance(flags, list) else [])
            (result if name == "none" else result["robustness"][name]).update(joint)
        result["input_health"] = health
    result["seconds"] = round(time.perf_counter() - t0, 1)
    result = jsonable(result)
    report_dir.mkdir(parents=True, exist_ok=True)
    report_mod.write_json(report_dir / "report.json", result)
    if write_html:
        report_mod.write_report(report_dir, result, images, records, scores, maps, pixel.masks)
    return result


def chosen_on(manifest: Manifest, records: Sequence[Record], root: Path) -> bool:
    """True when `fit --choose` picked this bundle on exactly these defect images."""
    v = manifest.training.params.get("verification")
    if not isinstance(v, dict) or not v.get("chosen_on_these_images"):
        return False
    return v.get("defect_files_sha256") == file_list_sha256([r for r in records if not r.is_good], root)


def _at(mask: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """A mask (None: no defect) at the map's shape (maps are at the model's input size)."""
    if mask is None:
        return np.zeros(shape[:2], bool)
    if mask.shape != shape[:2]:
        mask = cv2.resize(mask.astype(np.uint8), (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST) > 0
    return mask


def _robustness(detector: Detector, records: Sequence[Record], labels: np.ndarray, threshold: float,
                progress: bool) -> tuple[dict[str, dict[str, float | None]], dict[str, np.ndarray]]:
    """FRR, recall and AUROC under each perturbation, made on the images as stored (the camera's resolution);
    and per perturbation which good images were rejected (in the order of the good records)."""
    out: dict[str, dict[str, float | None]] = {}
    rejected: dict[str, np.ndarray] = {}
    for name, fn in perturbations().items():
        perturbed = as_delivered(records, detector.spec, fn, progress, f"reading test images ({name})")
        s, _ = score_images(detector, perturbed, progress=progress, desc=f"robustness: {name}", keep_maps=False)
        frr, recall = rates(labels, s, threshold)
        out[name] = {"frr": frr, "recall": recall, "image_auroc": image_auroc(labels, s)}
        rejected[name] = s[labels == 0] > threshold
        log.info("robustness %-34s FRR %s recall %s", name, _pct(frr), _pct(recall))
    return out, rejected


def _input_health(manifest: Manifest, records: Sequence[Record]) -> dict[str, dict[str, object]]:
    """What the daemon's input-health checks say of every good test image under each perturbation (at full size,
    as the camera sees them, each seeded as it was scored): which conditions the station would report as a camera
    change; with "flags", one per good image."""
    from tools import input_check

    good_at = [i for i, r in enumerate(records) if r.is_good]
    if manifest.input_stats is None:
        log.warning("bundle %s has no input statistics (fitted before they were recorded): the input-health "
                    "verdicts below use only the checks that need none", manifest.bundle_id)
    out = input_check.verdicts(manifest, [records[i] for i in good_at], perturbations(), limit=None,
                               indices=good_at)
    for name, v in out.items():
        log.info("input health %-32s %s", name, input_check.describe(v))
    return out


def flagged_false_rejects(rejected: np.ndarray, flags: Sequence[bool]) -> dict[str, float | None]:
    """Of one condition's good images: the false-reject rate among those input health lets pass (the parts the
    station would call defective without saying the camera changed), and the share of its false rejects that
    input health flags. Why: under a change the model rightly calls unusual, a flagged false reject is reported
    as the camera's doing; an unflagged one is the false reject nobody is told the cause of."""
    flagged = np.asarray(flags, dtype=bool)
    if flagged.shape != rejected.shape:
        return {"frr_unflagged": None, "false_rejects_flagged": None}
    passed = ~flagged
    return {"frr_unflagged": float((rejected & passed).sum() / passed.sum()) if passed.any() else None,
            "false_rejects_flagged": float((rejected & flagged).sum() / rejected.sum()) if rejected.any() else None}


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f}%"
