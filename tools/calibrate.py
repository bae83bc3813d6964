"""Decision thresholds from the scores of good images, and re-calibration of a bundle without retraining.

Why the default is the 99.5th percentile of held-out good scores
-----------------------------------------------------------------
The reference design used the 95th percentile: by construction 1 good part in 20 is rejected, which on a
line of 1 part per second is 180 false alarms an hour, each one a part scrapped or a person called. A
production line wants false rejects well under 1%, so the default here is the 99.5th percentile
(about 1 false reject in 200 good parts). Percentiles are nearest-rank (numpy's "higher"): the
threshold is a score actually seen and at most (100 - P)% of the calibration images lie above it, so
the manifest's measured false-reject rate never exceeds the promise. The catch is statistical: with n
held-out good images the 99.5th percentile is the highest score seen whenever n <= 200, so what one can
honestly promise is a false-reject rate near 1/(n + 1) (the chance that the next good part beats all n
seen so far). The manifest therefore records the number of calibration images and their measured rate;
with a few dozen images, re-run ``edged-train calibrate`` on a larger set of good parts (a shift's
worth) to approach the 0.5% design point. ``--target-frr F`` picks the threshold
that rejects at most a fraction F of the calibration images instead, and ``--percentile P`` any other
percentile (P = 100 puts it at the highest good score seen).

Regions: ``map_threshold`` is the same percentile over each good image's maximum map value, so a good
part normally shows no region at all and a region is drawn only where the map exceeds what good parts
reach.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edged.bundle import Manifest, Threshold, load_manifest, write_manifest
from edged.detector import Detector

log = logging.getLogger(__name__)

DEFAULT_PERCENTILE = 99.5

README_PARAGRAPH = (
    "**Threshold.** A part is rejected when its anomaly score exceeds a threshold set on good images the "
    "model never saw in training (15% of `train/good` held out by `fit`, or any folder of good parts "
    "given to `edged-train calibrate`). The default is the 99.5th percentile of their scores, about 1 "
    "false reject in 200 good parts, instead of the reference design's 95th percentile (1 in 20, far too "
    "many for a line). With n calibration images the expected false-reject rate cannot be measured below "
    "about 1/(n + 1), so the manifest records n and the measured rate; calibrate on a few hundred good "
    "parts to make the figure trustworthy. `--target-frr F` sets the threshold for a chosen false-reject "
    "rate instead, `--percentile P` for another percentile."
)


class CalibrationError(ValueError):
    """Scores that cannot give a threshold (none, or not finite)."""


def image_threshold(scores: Sequence[float] | np.ndarray, percentile: float | None = None,
                    target_frr: float | None = None, source: str = "") -> Threshold:
    """The score threshold (verdict: ``score > value``) from good images' scores.

    Exactly one rule applies: ``target_frr`` (reject at most that fraction of the calibration images)
    when given, else ``percentile`` (default `DEFAULT_PERCENTILE`, nearest rank: a score actually seen).
    """
    s = np.asarray(scores, dtype=np.float64).ravel()
    if s.size == 0:
        raise CalibrationError("no good image scores to calibrate on")
    if not np.all(np.isfinite(s)):
        raise CalibrationError(f"{int(np.sum(~np.isfinite(s)))} score(s) are not finite (NaN/inf): broken model?")
    if percentile is not None and target_frr is not None:
        raise CalibrationError("give either a percentile or a target false-reject rate, not both")
    if target_frr is not None:
        if not 0 <= target_frr < 1:
            raise CalibrationError(f"target false-reject rate must be in [0, 1), not {target_frr}")
        ordered = np.sort(s)
        allowed = int(np.floor(target_frr * s.size + 1e-9))  # images that may be rejected
        value = float(ordered[s.size - 1 - allowed])
        return Threshold(value=value, method="target_frr", target_frr=target_frr, n_images=int(s.size),
                         expected_frr=float(np.mean(s > value)), source=source)
    p = DEFAULT_PERCENTILE if percentile is None else float(percentile)
    if not 0 < p <= 100:
        raise CalibrationError(f"percentile must be in (0, 100], not {p}")
    value = float(np.percentile(s, p, method="higher"))
    return Threshold(value=value, method="percentile", percentile=p, n_images=int(s.size),
                     expected_frr=float(np.mean(s > value)), source=source)


def map_threshold(maps: Sequence[np.ndarray] | None, percentile: float | None = None,
                  target_frr: float | None = None) -> float | None:
    """Pixel threshold for defect regions: the image rule applied to each good image's map maximum."""
    if not maps:
        return None
    peaks = np.asarray([float(np.max(m)) for m in maps])
    if not np.all(np.isfinite(peaks)):
        return None
    return image_threshold(peaks, percentile, target_frr).value


def score_images(detector: Detector, images: Sequence[np.ndarray], batch_size: int = 8, progress: bool = False,
                 desc: str = "scoring", keep_maps: bool = True) -> tuple[np.ndarray, list[np.ndarray] | None]:
    """Scores (and anomaly maps) of images through `edged.detector.Detector`, as the daemon computes them."""
    scores: list[float] = []
    maps: list[np.ndarray] = []
    starts = range(0, len(images), batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=desc, unit="batch", leave=False)
    for start in starts:
        for out in detector.infer(list(images[start:start + batch_size])):
            scores.append(out.score)
            if keep_maps and out.anomaly_map is not None:
                maps.append(out.anomaly_map)
    return np.asarray(scores, dtype=np.float64), (maps if maps else None)


def unique_models(manifest: Manifest) -> dict[str, list[str]]:
    """file -> precisions using it (int8 may point at the fp32 file when quantization does not apply)."""
    files: dict[str, list[str]] = {}
    for precision, entry in manifest.models.items():
        files.setdefault(entry.file, []).append(precision)
    return files


def recalibrate(bundle_dir: str | Path, good_dir: str | Path, percentile: float | None = None,
                target_frr: float | None = None, progress: bool = True) -> Manifest:
    """Re-derive every model's thresholds from new good images and rewrite the manifest (ONNX files untouched)."""
    from tools.dataset import load_dataset, load_images

    bundle_dir = Path(bundle_dir)
    manifest = load_manifest(bundle_dir)
    ds = load_dataset(good_dir)
    if ds.layout == "mvtec":
        records = [r for r in ds.test if r.is_good]
        where = "test/good"
        if not records:
            records, where = ds.train, "train/good"
            log.warning("%s: using train/good; if the model was trained on these images the threshold is too low",
                        good_dir)
    else:
        records, where = ds.train, "all images"
    images, records = load_images(records, progress=progress, desc="reading good images")
    if not images:
        raise CalibrationError(f"{good_dir}: no readable good image")
    source = f"{Path(good_dir)} ({where}, {len(images)} images, edged-train calibrate)"
    models = dict(manifest.models)
    for _file, precisions in unique_models(manifest).items():
        detector = Detector(bundle_dir, precision=precisions[0])
        scores, maps = score_images(detector, images, progress=progress, desc=f"scoring ({precisions[0]})")
        threshold = image_threshold(scores, percentile, target_frr, source)
        mthr = map_threshold(maps, percentile, target_frr)
        for precision in precisions:
            old = models[precision]  # type: ignore[index]
            models[precision] = old.model_copy(update={"threshold": threshold, "map_threshold": mthr})  # type: ignore[index]
            log.info("%s: threshold %.6g -> %.6g (%s, %d images, false rejects on them %.2f%%)", precision,
                     old.threshold.value, threshold.value,
                     f"target FRR {target_frr}" if target_frr is not None else f"percentile {threshold.percentile}",
                     threshold.n_images, 100 * (threshold.expected_frr or 0.0))
    updated = manifest.model_copy(update={"models": models})
    updated = Manifest.model_validate(updated.model_dump(mode="json"))
    write_manifest(bundle_dir, updated)
    return updated
