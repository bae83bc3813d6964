"""The input-health side of training: record what the good images look like, and say what the daemon would flag.

`record_statistics` measures the training images at full size, as the daemon measures camera frames
(`edged.input_health`, the same code), for the manifest's `input_stats`. `verdicts` runs the daemon's
per-frame checks (default tolerances) on good images under each robustness perturbation, so
`evaluate --robustness` shows which conditions the station would report as a camera change.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator, Sequence

import numpy as np

from edged.bundle import InputStatistics, Manifest
from edged.input_health import (
    Bounds,
    InputHealthConfig,
    drift_problem,
    fit_statistics,
    measure,
    problems,
    small_grey,
)
from tools.camera_effects import through_jpeg
from tools.dataset import Record, read_image

log = logging.getLogger(__name__)

STATS_IMAGES = 200  # training images measured at most (spread over the set): the ranges settle long before
VERDICT_IMAGES = 60  # good images checked per perturbation


def _spread(records: Sequence[Record], limit: int) -> list[Record]:
    step = max(1, len(records) // limit)
    return list(records[::step][:limit])


def _full_size(records: Sequence[Record]) -> Iterator[np.ndarray]:
    for rec in records:
        image = read_image(rec.path)
        if image is not None:
            yield image


def record_statistics(records: Sequence[Record], bit_depth: int = 16, light_gain: tuple[float, float] = (1.0, 1.0),
                      jpeg_quality: int = 0) -> InputStatistics | None:
    """The manifest's input statistics from (up to STATS_IMAGES of) the training images; None without one readable.

    `light_gain`: the lamp gains the bundle tolerates (`tools.fit.tolerated_light`). `jpeg_quality`: the JPEG the
    threshold was calibrated through (0: none); the noise range then spans the images through it too."""
    try:
        return fit_statistics(_full_size(_spread(records, STATS_IMAGES)), bit_depth, light_gain, jpeg_quality or None,
                              through_jpeg)
    except ValueError:
        log.warning("no readable training image for the input statistics: the bundle will have none")
        return None


def verdicts(manifest: Manifest, good: Sequence[Record],
             conditions: dict[str, Callable[[np.ndarray, int], np.ndarray]],
             cfg: InputHealthConfig | None = None, limit: int | None = VERDICT_IMAGES,
             indices: Sequence[int] | None = None) -> dict[str, dict[str, object]]:
    """Per condition ('none' first): the fraction of good images the daemon's checks flag, and the reasons.

    `limit`: images judged, spread over `good` (None: every one). With every image, each condition also holds
    "flags", one bool per record of `good` in order (an unreadable one: False), so a caller can set the flags
    beside the same images' scores (`tools.evaluate`: which false rejects the station would report as a camera
    change). A sample can mislead: 60 of the tiles' 286 good test images, every fourth, put the share flagged
    under light x1.3 at 2%, all 286 at 12% (the bright tiles are not spread evenly over the names). `indices`
    (with every image): the index each image's change is seeded with, its position in the caller's list of all
    the images it scored, so the noise or cover judged is the one scored; default its position in `good`."""
    cfg = cfg or InputHealthConfig()
    ref = manifest.input_stats
    bounds = Bounds.of(ref, cfg.pixel_margin) if ref is not None else None
    chosen = list(good) if limit is None else _spread(good, limit)
    seeds = list(indices) if indices is not None and limit is None else list(range(len(chosen)))
    if len(seeds) != len(chosen):
        raise ValueError(f"{len(seeds)} indices for {len(chosen)} images")
    changes: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {"none": lambda im, i: im, **conditions}
    first: dict[str, list[str | None]] = {name: [] for name in changes}  # per image: its reason, "" none, None unread
    means: dict[str, list[float]] = {name: [] for name in changes}
    for rec, seed in zip(chosen, seeds, strict=True):
        image = read_image(rec.path)  # decoded once for every condition; one full-size image in memory at a time
        for name, change in changes.items():
            if image is None:
                first[name].append(None)
                continue
            stats = measure(small_grey(change(image, seed), manifest.input.bit_depth), None, bounds)
            means[name].append(stats.mean)
            found = problems(stats, ref, cfg)
            first[name].append(found[0] if found else "")
    out: dict[str, dict[str, object]] = {}
    for name in changes:
        reasons = Counter(r for r in first[name] if r)
        readable = sum(r is not None for r in first[name])
        # a camera that keeps seeing these images: its recent median brightness against the training median
        drift = drift_problem(float(np.median(means[name])), ref, cfg) if means[name] else None
        out[name] = {"flagged": sum(reasons.values()) / readable if readable else None,
                     "reasons": dict(reasons.most_common()),
                     "reason": reasons.most_common(1)[0][0] if reasons else None, "images": readable,
                     "drift": drift, "reference": ref is not None}
        if limit is None:
            out[name]["flags"] = [bool(r) for r in first[name]]
    return out


def describe(verdict: dict[str, object]) -> str:
    """'flagged 12% (too_dark), drift: too_dark' for a table cell (drift: what a camera seeing only these says)."""
    flagged = verdict.get("flagged")
    if not isinstance(flagged, float):
        return "n/a"
    reason, drift = verdict.get("reason"), verdict.get("drift")
    share = "<1" if 0 < flagged < 0.005 else f"{flagged * 100:.0f}"  # one image of 286 is not "0%"
    return (f"flagged {share}%" + (f" ({reason})" if reason else "")
            + (f", drift: {drift}" if drift else ""))
