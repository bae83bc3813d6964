"""Out-of-fold scores: every good image trains the final model, and every good image calibrates it.

Why: the threshold must come from scores of images the scoring model never saw (a model scores its own
training images too low), and a held-out slice of 15% costs twice: those images are lost to training
(about 1 point of image AUROC on real data), and 30-100 of them make a 99.5th percentile that is just
their maximum. Cross-fitting keeps both: the images are dealt into k folds, a model is fitted on k - 1
of them and scores the fold it did not see, k times, and the final model is fitted on all images. The
threshold is then set on n out-of-fold scores instead of 0.15 n.

The fold models are full bundles (exported, quantized the same way, scored by `edged.detector.Detector`
at each precision), so the out-of-fold scores are what the daemon computes, int8 included. They are
slightly pessimistic: each fold model saw (k-1)/k of the data, the final one all of it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger(__name__)

DEFAULT_FOLDS = 5
MIN_FOLDS = 2
MAX_FOLDS = 20


@dataclass
class HeldScores:
    """What one fold's model gave the images it did not see, per precision."""

    scores: np.ndarray  # image scores
    peaks: np.ndarray | None = None  # anomaly-map maximum of each image (the region threshold), if the model has maps


@dataclass
class OutOfFold:
    """Out-of-fold image scores and map peaks per precision, in the order of the input images."""

    folds: int
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    peaks: dict[str, np.ndarray | None] = field(default_factory=dict)
    fold_of: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    seconds: float = 0.0


def fold_of(n: int, folds: int, seed: int) -> np.ndarray:
    """The fold of each of n images: a seeded shuffle dealt round-robin, so fold sizes differ by at most 1."""
    if not MIN_FOLDS <= folds <= n:
        raise ValueError(f"{folds} folds need {MIN_FOLDS} <= folds <= the number of images ({n})")
    order = np.random.default_rng(seed).permutation(n)
    out = np.empty(n, dtype=np.int64)
    out[order] = np.arange(n) % folds
    return out


FoldFit = Callable[[Sequence[int], Sequence[int], int], dict[str, HeldScores]]


def out_of_fold(n: int, folds: int, seed: int, fit_and_score: FoldFit) -> OutOfFold:
    """Run `fit_and_score(train_idx, held_idx, fold)` per fold and put the held scores back in image order.

    `fit_and_score` fits a model on the images `train_idx` and returns, per precision, the scores (and map
    peaks) of the images `held_idx` in that order. Every fold must return the same precisions.
    """
    t0 = time.perf_counter()
    assign = fold_of(n, folds, seed)
    result = OutOfFold(folds=folds, fold_of=assign)
    for f in range(folds):
        held = np.flatnonzero(assign == f).tolist()
        train = np.flatnonzero(assign != f).tolist()
        t_fold = time.perf_counter()
        got = fit_and_score(train, held, f)
        if result.scores and set(got) != set(result.scores):
            raise RuntimeError(f"fold {f} returned precisions {sorted(got)}, the others {sorted(result.scores)}")
        for precision, held_scores in got.items():
            scores = np.asarray(held_scores.scores, dtype=np.float64).ravel()
            if scores.shape != (len(held),):
                raise RuntimeError(f"fold {f} ({precision}): {scores.size} scores for {len(held)} images")
            all_scores = result.scores.setdefault(precision, np.full(n, np.nan))
            all_scores[held] = scores
            if held_scores.peaks is None:
                result.peaks[precision] = None
            elif precision not in result.peaks or result.peaks[precision] is not None:
                peaks = result.peaks.get(precision)
                if peaks is None:
                    peaks = result.peaks[precision] = np.full(n, np.nan)
                peaks[held] = np.asarray(held_scores.peaks, dtype=np.float64).ravel()
        log.info("cross-fit: fold %d/%d (%d train, %d scored) in %.0f s", f + 1, folds, len(train), len(held),
                 time.perf_counter() - t_fold)
    result.seconds = time.perf_counter() - t0
    return result
