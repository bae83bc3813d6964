"""Decision thresholds from the scores of good images, and re-calibration of a bundle without retraining.

Why the default is the 99.5th percentile of good scores the model never saw
---------------------------------------------------------------------------
(`fit` takes them out of fold, `tools.crossfit`: every training image scored by a fold model that did not
train on it; with ``--holdout`` from a held-out split; `calibrate` from any folder of new good parts.)
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

How far n images can be trusted: with m of n calibration images above the threshold, the false-reject
rate on new good parts is Beta(m + 1, n - m) distributed (order statistics), and that distribution's
95% interval is the Clopper-Pearson interval of m rejections in n; the manifest records it
(``frr_interval``), and `trust_warning` says so when its upper end is far above the design rate: 9
images "with 0% false rejects" promise only "somewhere between 0 and 34%".

Good images that score far above the others (a far-out Tukey fence on their scores, `outlier_indices`)
are defective, mislabeled or another product; ``recalibrate`` refuses them (or, with ``drop_outliers``,
names and leaves them out), since they would lift the threshold until defects pass. Each calibration
gives the bundle a new ``bundle_id`` and appends the old one with its thresholds to ``history``.

Regions: ``map_threshold`` is the same percentile over each good image's maximum map value, so a good
part normally shows no region at all and a region is drawn only where the map exceeds what good parts
reach.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edged.bundle import Manifest, ModelFile, Threshold, load_manifest, write_manifest
from edged.detector import Detector
from tools.export import Precision, utc_now

log = logging.getLogger(__name__)

DEFAULT_PERCENTILE = 99.5

class CalibrationError(ValueError):
    """Scores that cannot give a threshold (none, not finite, outliers), or an unusable bundle folder."""


CONFIDENCE = 0.95


def frr_interval(rejected: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Clopper-Pearson interval of the false-reject rate from `rejected` of `n` good images above the threshold."""
    from scipy.stats import beta

    if n <= 0:
        return 0.0, 1.0
    a = (1 - confidence) / 2
    low = 0.0 if rejected == 0 else float(beta.ppf(a, rejected, n - rejected + 1))
    high = 1.0 if rejected >= n else float(beta.ppf(1 - a, rejected + 1, n - rejected))
    return low, high


def design_rate(t: Threshold) -> float:
    """The false-reject rate the threshold's rule aims at (target FRR, or 1 - percentile)."""
    if t.method == "target_frr" and t.target_frr is not None:
        return float(t.target_frr)
    return max(0.0, (100.0 - float(t.percentile if t.percentile is not None else DEFAULT_PERCENTILE)) / 100.0)


def images_needed(rate: float, confidence: float = CONFIDENCE) -> int | None:
    """Good images (none above the threshold) for the interval's upper end to reach `rate`; None for 0."""
    if rate <= 0:
        return None
    a = (1 - confidence) / 2
    return math.ceil(math.log(a) / math.log1p(-min(rate, 0.999999)))


def trust_warning(t: Threshold) -> str | None:
    """A sentence when n is too small for the interval to back the design rate (upper end > 2x it)."""
    if t.frr_interval is None:
        return None
    low, high = t.frr_interval
    rate = design_rate(t)
    if high <= max(2 * rate, 1e-12):
        return None
    need = images_needed(rate)
    more = (f"calibrate on at least {need} good parts for the {100 * rate:.2g}% design point" if need else
            "no number of images can promise 0% false rejects")
    return (f"{t.n_images} calibration images: false rejects on them {100 * (t.expected_frr or 0):.1f}%, but on new "
            f"good parts anywhere from {100 * low:.1f}% to {100 * high:.1f}% ({CONFIDENCE:.0%} interval): too few "
            f"to trust; {more} (edged-train calibrate)")


def frr_text(t: Threshold) -> str:
    """'false rejects on them 0.0% (95% interval 0-33.6% on new parts)' for the CLI."""
    text = f"false rejects on them {100 * (t.expected_frr or 0):.1f}%"
    if t.frr_interval is not None:
        text += (f" ({CONFIDENCE:.0%} interval on new parts {100 * t.frr_interval[0]:.1f}-"
                 f"{100 * t.frr_interval[1]:.1f}%)")
    return text


FENCE_LOG = 4.5  # positive scores: Q3 + 4.5 IQR of log(score)
FENCE_LINEAR = 6.0  # scores of any sign: Q3 + 6 IQR


def outlier_indices(scores: Sequence[float] | np.ndarray, fence: float | None = None, min_n: int = 8) -> list[int]:
    """Indices of good images' scores far above the others (a Tukey fence far out), highest first.

    Anomaly scores are right-skewed (a maximum over pixels or patches): the textbook Q3 + 3 IQR flags
    a good image in 10-40% of ordinary calibration sets (simulated: Gumbel and log-normal scores,
    n 16-200). Positive scores are therefore judged on their logarithm with 4.5 IQR (about 1 false alarm
    in 500 sets of 16 normal-in-log scores), other scores with 6 IQR; a defective part typically scores
    several times a good one and still stands out. Fewer than `min_n` scores, or tied quartiles (a model
    that scores most good parts exactly alike), give no fence to judge by, so nothing is flagged.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.size < min_n or not np.all(np.isfinite(s)):
        return []
    positive = bool(np.all(s > 0))
    x = np.log(s) if positive else s
    k = fence if fence is not None else FENCE_LOG if positive else FENCE_LINEAR
    q1, q3 = np.percentile(x, [25, 75])
    if q3 - q1 <= 1e-12 * max(1.0, abs(q3)):
        return []
    limit = q3 + k * (q3 - q1)
    return [int(i) for i in np.argsort(-x, kind="stable") if x[i] > limit]


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
                         expected_frr=float(np.mean(s > value)), source=source,
                         frr_interval=frr_interval(int(np.sum(s > value)), int(s.size)))
    p = DEFAULT_PERCENTILE if percentile is None else float(percentile)
    if not 0 < p <= 100:
        raise CalibrationError(f"percentile must be in (0, 100], not {p}")
    value = float(np.percentile(s, p, method="higher"))
    return Threshold(value=value, method="percentile", percentile=p, n_images=int(s.size),
                     expected_frr=float(np.mean(s > value)), source=source,
                     frr_interval=frr_interval(int(np.sum(s > value)), int(s.size)))


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


def _unique_models(manifest: Manifest) -> dict[str, list[Precision]]:
    """file -> precisions using it (int8 may point at the fp32 file when quantization does not apply)."""
    files: dict[str, list[Precision]] = {}
    for precision, entry in manifest.models.items():
        files.setdefault(entry.file, []).append(precision)
    return files


def _calibration_records(good_dir: Path) -> tuple[list[Any], str]:
    from tools.dataset import load_dataset

    ds = load_dataset(good_dir)
    if ds.layout == "mvtec":
        records = [r for r in ds.test if r.is_good]
        if records:
            return records, "test/good"
        log.warning("%s: using train/good; if the model was trained on these images the threshold is too low",
                    good_dir)
        return ds.train, "train/good"
    return ds.train, "all images"


def check_bundle_writable(bundle_dir: Path) -> None:
    """The manifest is rewritten in place: the folder must be writable (checked before any scoring)."""
    if not os.access(bundle_dir, os.W_OK | os.X_OK):
        raise CalibrationError(f"{bundle_dir}: bundle folder is not writable (the manifest is rewritten there)")


def _history_entry(manifest: Manifest) -> dict[str, object]:
    return {"bundle_id": manifest.bundle_id, "thresholds": {
        p: {"value": e.threshold.value, "method": e.threshold.method, "percentile": e.threshold.percentile,
            "target_frr": e.threshold.target_frr, "n_images": e.threshold.n_images, "source": e.threshold.source,
            "map_threshold": e.map_threshold} for p, e in manifest.models.items()}}


def _new_bundle_id(manifest: Manifest, models: Mapping[Precision, ModelFile], when: str) -> str:
    """``<the bundle's first id>-r<N>-<8 hex>``: N counts calibrations, the hex (of the new thresholds and
    the time) tells apart two copies of one bundle calibrated on different lines."""
    stem = str(manifest.history[0]["bundle_id"]) if manifest.history else manifest.bundle_id
    key = repr(sorted((p, e.threshold.value, e.map_threshold) for p, e in models.items())) + when + os.urandom(4).hex()
    return f"{stem}-r{len(manifest.history) + 1}-{hashlib.sha256(key.encode()).hexdigest()[:8]}"


def recalibrate(bundle_dir: str | Path, good_dir: str | Path, percentile: float | None = None,
                target_frr: float | None = None, progress: bool = True, drop_outliers: bool = False,
                warnings: list[str] | None = None) -> Manifest:
    """Re-derive every model's thresholds from new good images and rewrite the manifest (ONNX files untouched).

    Checked first: the bundle loads and its folder is writable, the images' folder has images. The images
    are shrunk to the model's size as they are read. Outliers among the good images stop it (or, with
    `drop_outliers`, are named in `warnings` and left out); the old identity and thresholds go to
    ``history`` and the bundle gets a new ``bundle_id``.
    """
    from tools.dataset import load_images, model_sized

    bundle_dir = Path(bundle_dir)
    manifest = load_manifest(bundle_dir)
    check_bundle_writable(bundle_dir)
    records, where = _calibration_records(Path(good_dir))
    images, records = load_images(records, progress=progress, desc="reading good images",
                                  transform=model_sized(manifest.input))
    if not images:
        raise CalibrationError(f"{good_dir}: no readable good image")
    notes = warnings if warnings is not None else []
    dropped: list[str] = []
    models: dict[Precision, ModelFile] = dict(manifest.models)
    scored: dict[str, tuple[np.ndarray, list[np.ndarray] | None]] = {}
    for _file, precisions in _unique_models(manifest).items():
        detector = Detector(bundle_dir, precision=precisions[0])
        scored[_file] = score_images(detector, images, progress=progress, desc=f"scoring ({precisions[0]})")
    reference = scored[manifest.model().file][0]
    bad = outlier_indices(reference)
    if bad:
        from tools.fit import outlier_message

        root = Path(good_dir)
        dropped = [_relative(records[i].path, root) for i in bad]
        listed = [{"file": name, "score": float(reference[i])} for name, i in zip(dropped, bad, strict=True)]
        message = outlier_message(listed, len(images), "calibration images")
        if not drop_outliers:
            raise CalibrationError(message)
        notes.append(f"dropped {len(bad)} calibration image(s) from the threshold: {', '.join(dropped)}")
        log.warning("!!! %s", notes[-1])
    keep = [i for i in range(len(images)) if i not in set(bad)]
    source = (f"{Path(good_dir)} ({where}, {len(keep)} images" + (f", {len(bad)} outliers dropped" if bad else "")
              + ", edged-train calibrate)")
    for file, precisions in _unique_models(manifest).items():
        scores, maps = scored[file]
        threshold = image_threshold(scores[keep], percentile, target_frr, source)
        mthr = map_threshold([maps[i] for i in keep] if maps is not None else None, percentile, target_frr)
        for precision in precisions:
            old = models[precision]
            models[precision] = old.model_copy(update={"threshold": threshold, "map_threshold": mthr})
            log.info("%s: threshold %.6g -> %.6g (%s, %d images, %s)", precision, old.threshold.value,
                     threshold.value,
                     f"target FRR {target_frr}" if target_frr is not None else f"percentile {threshold.percentile}",
                     threshold.n_images, frr_text(threshold))
    trust = trust_warning(models[manifest.default].threshold)
    if trust:
        notes.append(trust)
        log.info("%s", trust)
    when = utc_now().strftime("%Y-%m-%dT%H:%M:%SZ")
    entry = {**_history_entry(manifest), "replaced": when, "by": f"edged-train calibrate {Path(good_dir)}",
             "dropped_outliers": dropped}
    updated = manifest.model_copy(update={"models": models, "bundle_id": _new_bundle_id(manifest, models, when),
                                          "history": [*manifest.history, entry]})
    updated = Manifest.model_validate(updated.model_dump(mode="json"))
    write_manifest(bundle_dir, updated)
    return updated


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()
