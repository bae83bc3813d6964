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


def record_statistics(records: Sequence[Record], bit_depth: int = 16) -> InputStatistics | None:
    """The manifest's input statistics from (up to STATS_IMAGES of) the training images; None without one readable."""
    try:
        return fit_statistics(_full_size(_spread(records, STATS_IMAGES)), bit_depth)
    except ValueError:
        log.warning("no readable training image for the input statistics: the bundle will have none")
        return None


def verdicts(manifest: Manifest, good: Sequence[Record],
             conditions: dict[str, Callable[[np.ndarray, int], np.ndarray]],
             cfg: InputHealthConfig | None = None) -> dict[str, dict[str, object]]:
    """Per condition ('none' first): the fraction of good images the daemon's checks flag, and the reasons."""
    cfg = cfg or InputHealthConfig()
    ref = manifest.input_stats
    bounds = Bounds.of(ref, cfg.pixel_margin) if ref is not None else None
    images = list(_full_size(_spread(good, VERDICT_IMAGES)))
    out: dict[str, dict[str, object]] = {}
    for name, change in {"none": lambda im, i: im, **conditions}.items():
        reasons: Counter[str] = Counter()
        means: list[float] = []
        for i, image in enumerate(images):
            stats = measure(small_grey(change(image, i), manifest.input.bit_depth), None, bounds)
            means.append(stats.mean)
            found = problems(stats, ref, cfg)
            if found:
                reasons[found[0]] += 1
        flagged = sum(reasons.values()) / len(images) if images else None
        # a camera that keeps seeing these images: its recent median brightness against the training median
        drift = drift_problem(float(np.median(means)), ref, cfg) if means else None
        out[name] = {"flagged": flagged, "reasons": dict(reasons.most_common()),
                     "reason": reasons.most_common(1)[0][0] if reasons else None, "images": len(images),
                     "drift": drift,
                     "reference": ref is not None}
    return out


def describe(verdict: dict[str, object]) -> str:
    """'flagged 12% (too_dark), drift: too_dark' for a table cell (drift: what a camera seeing only these says)."""
    flagged = verdict.get("flagged")
    if not isinstance(flagged, float):
        return "n/a"
    reason, drift = verdict.get("reason"), verdict.get("drift")
    return (f"flagged {flagged * 100:.0f}%" + (f" ({reason})" if reason else "")
            + (f", drift: {drift}" if drift else ""))
