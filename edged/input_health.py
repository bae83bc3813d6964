"""Input health: is the camera still showing what the model was trained on?

An anomaly model calls a dark, blurred, frozen or half-covered image unusual, rightly; the product must
say the *camera* changed instead of rejecting every good part. Every frame gets a few cheap statistics,
measured on a small grey copy (`STATS_SIZE`), compared with the ranges of the training images that the
bundle's manifest records (`edged.bundle.InputStatistics`, written by `edged-train fit` through
`fit_statistics`, the same code):

=============  ============================================================  =========================
statistic      what                                                          flags (with the config's
                                                                             tolerances)
=============  ============================================================  =========================
mean           brightness mean, grey levels 0..255                           too_dark / too_bright
spread         brightness standard deviation, grey levels                    blocked (a uniform cover)
sharpness      variance of the Laplacian of the copy scaled to mean 128      out_of_focus
               (grey levels^2; gain-independent, so dimming is not blur)
noise          median absolute Laplacian of the same copy, scaled alike      noisy
               (grey levels): noise moves every pixel, so the median; the
               part's edges and texture move a few, so mostly the variance
clipped_low    fraction of pixels <= 2                                       too_dark
clipped_high   fraction of pixels >= 253                                     too_bright
frozen_diff    mean absolute difference to the camera's previous frame       frozen
differs        fraction of a 32x24 grid outside the training images'         blocked
               per-pixel bounds (+ `pixel_margin`), after scaling the frame
               to the training images' mean (a lighting change is not a
               cover)
=============  ============================================================  =========================

A bundle made to tolerate a lamp's light (the manifest's `light_gain`: its graph normalizes each image's light,
or its threshold was calibrated under x0.7 and x1.3) has its brightness bounds, per frame and drift, stretched by
those gains: a light it scores as usual is no camera change (clipping still is). A bundle whose threshold was
calibrated through JPEG (`noise_jpeg_quality`) learned its noise range through that JPEG too: a small image's
blocks at that quality are what its verdicts were calibrated on, not `noisy` (sensor noise beyond it still is).

Without the manifest section (older bundles) only frozen and a uniform image (spread < 2 grey levels)
are checked, and that is logged once. A camera whose frames are out of range for `degraded_after_s` is
`degraded` with the reason of its frames; in range for `recover_after_s` clears it. The reject rate of a
camera against the calibrated false-reject rate raises `reject_rate` (`RejectRateMonitor`).

Threads: a camera's `InputMonitor` runs in its capture thread (it sees every frame, in order, even
those no trigger selects), its `RejectRateMonitor` in the recorder; both report changes as
`InputAlarm` messages on one queue the service publishes from.
"""

from __future__ import annotations

import logging
import queue
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from pydantic import Field

from edged.bundle import InputStatistics, Manifest
from edged.frames import FrameInput
from edged.preprocess import to_uint8
from edged.section import Section

log = logging.getLogger(__name__)

STATS_SIZE = (160, 120)  # (w, h): 1/4 of 640x480; fine enough for the Laplacian, cheap enough per frame
REFERENCE_SIZE = (32, 24)  # the grid of the "differs grossly" check
CLIP_LOW, CLIP_HIGH = 2, 253
SHARPNESS_MEAN = 128.0  # sharpness is measured on the copy scaled to this mean
DRIFT_EVERY = 10  # frames between refreshes of the recent median brightness (a median of 100 costs ~10 us)
UNIFORM_SPREAD = 2.0  # below this standard deviation (grey levels) an image is uniform: blocked, reference or not

Reason = Literal["too_dark", "too_bright", "out_of_focus", "noisy", "blocked", "frozen", "reject_rate"]
PRIORITY: tuple[Reason, ...] = ("frozen", "blocked", "too_dark", "too_bright", "out_of_focus", "noisy")


class InputHealthConfig(Section):
    """Input health: per-frame statistics against the bundle's training ranges; a camera out of range too long is
    degraded (MQTT alarm, health file), and its verdicts are the plant's choice."""

    enabled: bool = Field(True, description="Check every frame against the ranges the bundle learned at fit "
                                            "(brightness, sharpness, clipping, frozen, covered).")
    degraded_after_s: float = Field(
        3.0, gt=0, le=3600, description="Frames out of range this long make the camera degraded (alarm on "
                                        "<prefix>/<station>/alarm/<camera>).", json_schema_extra={"common": True})
    recover_after_s: float = Field(3.0, gt=0, le=3600, description="Frames in range this long clear it.")
    on_degraded: Literal["judge", "not_inspected"] = Field(
        "judge", description="Verdicts while degraded: judge (as usual, flagged input_ok false), or "
                             "not_inspected (triggered parts get the not-inspected result and the trigger's "
                             "fail_safe; free-run frames give no reject).", json_schema_extra={"common": True})
    brightness_margin: float = Field(
        0.25, ge=0, le=10, description="Mean brightness below (1 - this) x the training minimum is too_dark, above "
                                       "(1 + this) x the training maximum too_bright (each x the bundle's "
                                       "tolerated light gain, 1 unless it normalizes or calibrated the light).")
    sharpness_factor: float = Field(0.4, ge=0, le=1, description="Sharpness below this x the training minimum is "
                                                                 "out_of_focus.")
    noisy_factor: float = Field(
        1.5, ge=1, le=1000, description="Noise (median absolute Laplacian) above this x the training maximum is "
                                        "noisy: sensor noise (gain turned up in low light), interference, heavy "
                                        "compression, which an anomaly model sees on every part.")
    clipped_margin: float = Field(0.05, ge=0, le=1, description="Clipped fraction (pixels <= 2 or >= 253) more "
                                                                "than this above the training maximum: too_dark "
                                                                "or too_bright.")
    pixel_margin: float = Field(30.0, ge=0, le=255, description="Grey levels a grid cell may lie outside the "
                                                                "training images' bounds before it differs.")
    differs_max: float = Field(0.05, ge=0, le=1, description="More than this fraction of the image differing "
                                                             "grossly (above the training maximum) is blocked.")
    drift_margin: float = Field(
        0.35, ge=0, le=10, description="The median brightness of the last drift_window frames more than this "
                                       "fraction below (above) the training images' median (x the bundle's tolerated "
                                       "light gain) is too_dark (too_bright): a lamp that ages, where each frame alone "
                                       "is still within the training range.")
    drift_window: int = Field(100, ge=10, le=100_000, description="Frames the brightness drift is measured over.")
    frozen_max_diff: float = Field(
        0.1, ge=0, le=255, description="Mean absolute difference to the previous frame (grey levels) at or below "
                                       "which a frame is frozen; 0 turns the check off (a compressed stream of a "
                                       "still scene can repeat frames exactly).")
    reject_rate_factor: float = Field(
        5.0, ge=1, le=1000, description="A reject rate over this x the calibrated false-reject rate (and over "
                                        "reject_rate_floor) raises the reject_rate alarm.")
    reject_rate_floor: float = Field(0.05, ge=0, le=1, description="The reject_rate alarm needs at least this "
                                                                   "reject rate (fraction of verdicts).")
    reject_rate_window: int = Field(200, ge=10, le=100_000, description="Verdicts per camera the reject rate is "
                                                                        "measured over.")


@dataclass(frozen=True, slots=True)
class InputStats:
    """One frame's statistics (units in the module docstring); None where it needs what is not there."""

    mean: float
    spread: float
    sharpness: float
    noise: float
    clipped_low: float
    clipped_high: float
    frozen_diff: float | None  # None for a camera's first frame
    differs: float | None  # None without a reference

    def to_dict(self) -> dict[str, float | None]:
        """For the health file and the alarm message: rounded."""
        return {k: None if v is None else round(v, 4) for k, v in (
            ("mean", self.mean), ("spread", self.spread), ("sharpness", self.sharpness), ("noise", self.noise),
            ("clipped_low", self.clipped_low), ("clipped_high", self.clipped_high),
            ("frozen_diff", self.frozen_diff), ("differs", self.differs))}


@dataclass(frozen=True, slots=True)
class InputAlarm:
    """A change of a camera's alarm, for the service to publish: `reason` '' means cleared."""

    camera: str
    source: Literal["input", "reject_rate"]
    reason: str
    at: float  # Unix seconds
    detail: dict[str, float | None]


def small_grey(image: np.ndarray, bit_depth: int = 16) -> np.ndarray:
    """The STATS_SIZE grey copy, uint8; color is dropped after shrinking (cheaper; fit does the same)."""
    if image.dtype != np.uint8:
        image = to_uint8(image, bit_depth)
    # linear, not area: at 1/4 it averages the 2x2 pixels at each block's centre, 8x cheaper than INTER_AREA
    # here (60 vs 500 us at 640x480); fit uses this same function, so the ranges mean the same
    small = cv2.resize(image, STATS_SIZE, interpolation=cv2.INTER_LINEAR)
    if small.ndim == 3 and small.shape[2] == 1:
        return small[:, :, 0]
    if small.ndim == 3:
        return cv2.cvtColor(small, cv2.COLOR_BGRA2GRAY if small.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
    return small


def _grid(grey: np.ndarray, gain: float) -> np.ndarray:
    return cv2.resize(grey, REFERENCE_SIZE, interpolation=cv2.INTER_AREA).astype(np.float32) * np.float32(gain)


@dataclass(frozen=True)
class Bounds:
    """The reference grid's per-cell bounds with the pixel margin applied, as arrays (built once per camera)."""

    mean: float
    low: np.ndarray
    high: np.ndarray

    @classmethod
    def of(cls, ref: InputStatistics, pixel_margin: float) -> Bounds:
        """From the manifest section and the config's `pixel_margin`."""
        shape = (ref.reference_size[1], ref.reference_size[0])
        return cls(ref.reference_mean, np.asarray(ref.reference_low, np.float32).reshape(shape) - pixel_margin,
                   np.asarray(ref.reference_high, np.float32).reshape(shape) + pixel_margin)


def measure(grey: np.ndarray, previous: np.ndarray | None, bounds: Bounds | None) -> InputStats:
    """The statistics of one STATS_SIZE grey copy (`previous`: the camera's last one, for frozen)."""
    mean_a, std_a = cv2.meanStdDev(grey)
    mean, spread = float(mean_a[0, 0]), float(std_a[0, 0])
    gain = SHARPNESS_MEAN / max(mean, 1.0)
    laplacian = cv2.Laplacian(grey, cv2.CV_16S)
    _, lap_std = cv2.meanStdDev(laplacian)
    n = float(grey.size)
    frozen = None
    if previous is not None and previous.shape == grey.shape:
        frozen = float(cv2.norm(grey, previous, cv2.NORM_L1)) / n
    differs = None
    if bounds is not None and bounds.low.shape == (REFERENCE_SIZE[1], REFERENCE_SIZE[0]):
        grid = _grid(grey, bounds.mean / max(mean, 1.0))
        out = int(np.count_nonzero(grid < bounds.low)) + int(np.count_nonzero(grid > bounds.high))
        differs = out / grid.size
    return InputStats(mean=mean, spread=spread, sharpness=float(lap_std[0, 0]) ** 2 * gain * gain,
                      noise=_median_abs(laplacian) * gain,
                      clipped_low=float(np.count_nonzero(grey <= CLIP_LOW)) / n,
                      clipped_high=float(np.count_nonzero(grey >= CLIP_HIGH)) / n,
                      frozen_diff=frozen, differs=differs)


def _median_abs(laplacian: np.ndarray) -> float:
    """The median of |laplacian| (saturated at 255), interpolated within its histogram bin (bin b holds the values
    b - 0.5 to b + 0.5): a histogram costs a tenth of a sort, and a noise level of a few grey levels needs more
    than whole steps."""
    hist = cv2.calcHist([cv2.convertScaleAbs(laplacian)], [0], None, [256], [0, 256]).ravel().astype(np.float64)
    cum = np.cumsum(hist)
    half = cum[-1] / 2.0
    b = int(np.searchsorted(cum, half))
    below = float(cum[b - 1]) if b > 0 else 0.0
    return float(max(0.0, b - 0.5 + (half - below) / max(float(hist[b]), 1.0)))


def problems(stats: InputStats, ref: InputStatistics | None, cfg: InputHealthConfig,
             recent_mean: float | None = None) -> tuple[Reason, ...]:
    """What is wrong with a frame, most telling first (`PRIORITY`); () when it is in range. `recent_mean`: the
    median brightness of the camera's recent frames (the drift check), None until there are enough."""
    found: set[Reason] = set()
    drift = drift_problem(recent_mean, ref, cfg)
    if drift is not None:
        found.add(drift)
    if stats.frozen_diff is not None and cfg.frozen_max_diff > 0 and stats.frozen_diff <= cfg.frozen_max_diff:
        found.add("frozen")
    if stats.spread < UNIFORM_SPREAD:
        found.add("blocked")
    if ref is not None:
        found.update(_against_reference(stats, ref, cfg))
    return tuple(r for r in PRIORITY if r in found)


def drift_problem(recent_mean: float | None, ref: InputStatistics | None, cfg: InputHealthConfig) -> Reason | None:
    """too_dark / too_bright when the median brightness of recent frames has left the training median by more than
    `drift_margin` (None: in range, or nothing to compare)."""
    if ref is None or recent_mean is None:
        return None
    ratio = recent_mean / ref.reference_mean
    darkest, brightest = ref.light_gain
    if ratio < darkest * (1 - cfg.drift_margin):
        return "too_dark"
    if ratio > brightest * (1 + cfg.drift_margin):
        return "too_bright"
    return None


def _against_reference(stats: InputStats, ref: InputStatistics, cfg: InputHealthConfig) -> set[Reason]:
    found: set[Reason] = set()
    if stats.differs is not None and stats.differs > max(ref.differs[1], 0.0) + cfg.differs_max:
        found.add("blocked")
    darkest, brightest = ref.light_gain  # a lamp the model tolerates is no camera change; clipping still flags
    if (stats.mean < ref.mean[0] * darkest * (1 - cfg.brightness_margin)
            or stats.clipped_low > ref.clipped_low[1] + cfg.clipped_margin):
        found.add("too_dark")
    if (stats.mean > ref.mean[1] * brightest * (1 + cfg.brightness_margin)
            or stats.clipped_high > ref.clipped_high[1] + cfg.clipped_margin):
        found.add("too_bright")
    if stats.sharpness < ref.sharpness[0] * cfg.sharpness_factor:
        found.add("out_of_focus")
    if ref.noise is not None and stats.noise > max(ref.noise[1], 1.0) * cfg.noisy_factor:  # 1: a flat training set
        found.add("noisy")
    return found


def describe_reference(ref: InputStatistics | None, cfg: InputHealthConfig) -> str:
    """One line for check-config: what the camera's frames are checked against, and what the bundle tolerates."""
    if not cfg.enabled:
        return "off (input_health.enabled: false)"
    when = f"degraded after {cfg.degraded_after_s:g} s out of range, verdicts then: {cfg.on_degraded}"
    if ref is None:
        return f"frozen and covered frames only: the bundle has no training ranges (fitted before them); {when}"
    darkest, brightest = ref.light_gain
    light = (f"a lamp x{darkest:g}-x{brightest:g} tolerated" if (darkest, brightest) != (1.0, 1.0)
             else "the training images' light")
    noise = f", noise through JPEG {ref.noise_jpeg_quality}" if ref.noise_jpeg_quality else ""
    return (f"against {ref.n_images} training images (brightness {ref.mean[0]:.0f}-{ref.mean[1]:.0f}, {light}"
            f"{noise}); {when}")


def fit_statistics(images: Iterable[np.ndarray], bit_depth: int = 16, light_gain: tuple[float, float] = (1.0, 1.0),
                   jpeg_quality: int | None = None,
                   through_jpeg: Callable[[np.ndarray, int], np.ndarray] | None = None) -> InputStatistics:
    """The manifest section from good training images (any size, grey or BGR): what `edged-train fit` records.

    `light_gain`: the lamp gains the model tolerates (its graph normalizes the light, or its threshold was
    calibrated under them). `jpeg_quality` with `through_jpeg` (the training side's encoder): each image is also
    measured as that JPEG delivers it, the one the threshold was calibrated through; that widens the noise range
    only, because noise is all the encoding changes that a check sees (the stones set: at most 8.2 as stored,
    12.8 median through JPEG 75, flagged noisy on 55%)."""
    encode = jpeg_quality if jpeg_quality and through_jpeg is not None else None
    stats: list[InputStats] = []
    grids: list[np.ndarray] = []
    noise: list[float] = []
    for image in images:
        grey = small_grey(image, bit_depth)
        s = measure(grey, None, None)
        stats.append(s)
        noise.append(s.noise)
        if encode is not None and through_jpeg is not None:
            noise.append(measure(small_grey(through_jpeg(image, encode), bit_depth), None, None).noise)
        grids.append(_grid(grey, 1.0 / max(s.mean, 1.0)))  # scaled to mean 1, then to the common mean below
    if not stats:
        raise ValueError("no images to learn the input statistics from")
    ref_mean = float(np.clip(np.median([s.mean for s in stats]), 1.0, 255.0))
    stack = np.stack(grids) * ref_mean
    low = np.floor(stack.min(axis=0)).astype(int).ravel()
    high = np.ceil(stack.max(axis=0)).astype(int).ravel()
    return InputStatistics(  # every training image lies inside its own bounds: differs is 0 by construction
        n_images=len(stats), stats_size=STATS_SIZE, mean=_span(s.mean for s in stats),
        spread=_span(s.spread for s in stats), sharpness=_span(s.sharpness for s in stats),
        noise=_span(noise), noise_jpeg_quality=encode,
        light_gain=light_gain,
        clipped_low=_span(s.clipped_low for s in stats), clipped_high=_span(s.clipped_high for s in stats),
        differs=(0.0, 0.0), reference_size=REFERENCE_SIZE, reference_mean=round(ref_mean, 3),
        reference_low=tuple(int(v) for v in low), reference_high=tuple(int(v) for v in high))


def _span(values: Iterable[float]) -> tuple[float, float]:
    vals = list(values)
    return (round(max(0.0, min(vals)), 6), round(max(0.0, max(vals)), 6))


class InputMonitor:
    """One camera's input health, fed every captured frame in order (its capture thread only)."""

    def __init__(self, camera: str, cfg: InputHealthConfig, ref: InputStatistics | None,
                 events: queue.Queue[InputAlarm], bit_depth: int = 16) -> None:
        self.camera = camera
        self.cfg = cfg
        self.ref = ref
        self.events = events
        self.bit_depth = bit_depth
        self.reason = ""  # the degraded reason, '' while ok (read by other threads: one str store)
        self.since: float | None = None  # Unix seconds it became degraded
        self.last: InputStats | None = None
        self.frames_not_ok = 0
        self.frames = 0
        self.alarms = 0
        self._previous: np.ndarray | None = None
        self._bounds = Bounds.of(ref, cfg.pixel_margin) if ref is not None else None
        self._wanted = self._applied = (ref, self._bounds)  # a new model's reference, taken at the next frame
        self._means: deque[float] = deque(maxlen=cfg.drift_window)
        self._recent_mean: float | None = None  # median of _means, refreshed every DRIFT_EVERY frames
        self._bad_since: float | None = None  # monotonic: first of the current run of out-of-range frames
        self._good_since: float | None = None
        self._candidate: tuple[str, float] | None = None  # another reason while degraded, since

    def use_reference(self, ref: InputStatistics | None) -> None:
        """The camera now runs another model (a recipe switch, from another thread): its training images are the
        reference from the next frame on (one store; the capture thread swaps it in, with a fresh drift window)."""
        self._wanted = (ref, Bounds.of(ref, self.cfg.pixel_margin) if ref is not None else None)

    def feed(self, image: np.ndarray, mono: float, wall: float | None = None) -> FrameInput:
        """Measure a frame (capture time `mono`) and update the camera's state; the frame's flag."""
        wanted = self._wanted
        if wanted is not self._applied:
            self._applied = wanted
            self.ref, self._bounds = wanted
            self._means.clear()
            self._recent_mean = None
        grey = small_grey(image, self.bit_depth)
        stats = measure(grey, self._previous, self._bounds)
        self._previous = grey
        self.last = stats
        self._means.append(stats.mean)
        self.frames += 1
        if len(self._means) == self._means.maxlen and self.frames % DRIFT_EVERY == 0:
            self._recent_mean = float(np.median(np.fromiter(self._means, np.float64, len(self._means))))
        found = problems(stats, self.ref, self.cfg, self._recent_mean)
        if found:
            self.frames_not_ok += 1
        self._update(found, mono, time.time() if wall is None else wall, stats)
        return FrameInput(ok=not found, problems=found, degraded=self.reason)

    def _update(self, found: tuple[Reason, ...], mono: float, wall: float, stats: InputStats) -> None:
        cfg = self.cfg
        if not found:
            self._bad_since, self._candidate = None, None
            self._good_since = mono if self._good_since is None else self._good_since
            if self.reason and mono - self._good_since >= cfg.recover_after_s:
                self._change("", wall, stats)
            return
        self._good_since = None
        self._bad_since = mono if self._bad_since is None else self._bad_since
        top = found[0]
        if not self.reason:
            if mono - self._bad_since >= cfg.degraded_after_s:
                self._change(top, wall, stats)
            return
        if top == self.reason:
            self._candidate = None
        elif self._candidate is None or self._candidate[0] != top:
            self._candidate = (top, mono)
        elif mono - self._candidate[1] >= cfg.degraded_after_s:  # a new reason that persists replaces the old
            self._change(top, wall, stats)

    def _change(self, reason: str, wall: float, stats: InputStats) -> None:
        if reason and not self.reason:
            self.alarms += 1
            self.since = wall
        if not reason:
            self.since = None
        self.reason, self._candidate = reason, None
        if reason:
            log.warning("%s: input DEGRADED: %s (%s)", self.camera, reason, _describe(stats))
        else:
            log.warning("%s: input back in range: alarm cleared", self.camera)
        self.events.put(InputAlarm(self.camera, "input", reason, wall, stats.to_dict()))

    def health(self) -> dict[str, object]:
        """The camera's input health for the health file (read from another thread: snapshots only)."""
        last = self.last
        return {"state": "degraded" if self.reason else "ok", "reason": self.reason or None, "since": self.since,
                "alarms": self.alarms, "frames_not_ok": self.frames_not_ok, "reference": self.ref is not None,
                "last": last.to_dict() if last is not None else None}


def _describe(stats: InputStats) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in stats.to_dict().items() if v is not None)


def expected_reject_rate(manifest: Manifest, precision: str | None) -> float | None:
    """The calibrated false-reject rate of the model that runs: the highest of the calibration images' rate at the
    threshold (`expected_frr`, 0 on a small set), the design point of its percentile and its target rate; None for
    a manual threshold, which promises none."""
    threshold = manifest.model(precision).threshold
    rates = [threshold.expected_frr, threshold.target_frr,
             None if threshold.percentile is None else max(0.0, 1.0 - threshold.percentile / 100.0)]
    known = [r for r in rates if r is not None]
    return max(known) if known else None


class RejectRateMonitor:
    """One camera's rolling reject rate against the calibrated expectation (the recorder thread only): a flood of
    rejects is more often the line or the camera than the parts."""

    def __init__(self, camera: str, cfg: InputHealthConfig, expected: float | None,
                 events: queue.Queue[InputAlarm]) -> None:
        self.camera = camera
        self.events = events
        self.cfg = cfg
        self.limit = max(cfg.reject_rate_factor * (expected or 0.0), cfg.reject_rate_floor)
        self.expected = expected
        self._wanted: float | None = expected  # a new model's expected rate (another thread), taken at the next verdict
        self._window: deque[bool] = deque(maxlen=cfg.reject_rate_window)
        self._rejects = 0
        self.alarming = False  # read by other threads (one bool store)
        self.alarms = 0

    @property
    def rate(self) -> float:
        """Rejects per verdict over the window (0 while empty)."""
        return self._rejects / len(self._window) if self._window else 0.0

    def use_expected(self, expected: float | None) -> None:
        """The camera now runs another model (from another thread): its calibrated rate counts from the next verdict."""
        self._wanted = expected

    def feed(self, defective: bool) -> None:
        """One verdict of this camera, in capture order."""
        if self._wanted != self.expected:  # a switch: the old model's rejects say nothing of the new one
            self.expected = self._wanted
            self.limit = max(self.cfg.reject_rate_factor * (self.expected or 0.0), self.cfg.reject_rate_floor)
            self._window.clear()
            self._rejects = 0
        if len(self._window) == self._window.maxlen and self._window[0]:
            self._rejects -= 1
        self._window.append(defective)
        self._rejects += int(defective)
        full = len(self._window) == self._window.maxlen
        rate = self.rate
        if not self.alarming and full and rate > self.limit:
            self.alarming = True
            self.alarms += 1
            log.warning("%s: reject rate %.1f%% over the last %d verdicts (expected %s): alarm reject_rate",
                        self.camera, rate * 100, len(self._window),
                        "unknown" if self.expected is None else f"{self.expected * 100:.2f}%")
            self._tell("reject_rate")
        elif self.alarming and rate <= self.limit / 2:  # hysteresis: no alarm flapping at the limit
            self.alarming = False
            log.warning("%s: reject rate %.1f%% is back to normal: alarm cleared", self.camera, rate * 100)
            self._tell("")

    def _tell(self, reason: str) -> None:
        self.events.put(InputAlarm(self.camera, "reject_rate", reason, time.time(),
                                   {"reject_rate": round(self.rate, 4), "limit": round(self.limit, 4)}))


class InputHealth:
    """Every camera's input health: the monitors (one per camera, fed by its capture thread and by the recorder) and
    the alarm queue the service publishes from. Built once the bundle is loaded (its ranges and threshold)."""

    def __init__(self, cfg: InputHealthConfig, cameras: Iterable[str], manifest: Manifest,
                 precision: str | None = None) -> None:
        self.cfg = cfg
        self.events: queue.Queue[InputAlarm] = queue.Queue()
        ref = manifest.input_stats
        self._told = {manifest.bundle_id} if ref is None else set()  # bundles whose missing statistics were logged
        if ref is None:
            log.warning("bundle %s records no input statistics (fitted before edged-train recorded them): input "
                        "health checks only frozen and uniform (covered) frames; fit again for the rest",
                        manifest.bundle_id)
        self.monitors = {name: InputMonitor(name, cfg, ref, self.events, manifest.input.bit_depth)
                         for name in cameras}
        expected = expected_reject_rate(manifest, precision)
        self.rates = {name: RejectRateMonitor(name, cfg, expected, self.events) for name in self.monitors}
        self.not_inspected = dict.fromkeys(self.monitors, 0)  # verdicts made not_inspected (the recorder writes)

    def use_model(self, camera: str, manifest: Manifest, precision: str | None = None) -> None:
        """Camera `camera` now runs this bundle (its starting recipe, or a switch): its ranges and calibrated rate."""
        if manifest.input_stats is None and manifest.bundle_id not in self._told:
            self._told.add(manifest.bundle_id)
            log.warning("bundle %s records no input statistics: camera %s checks only frozen and uniform frames",
                        manifest.bundle_id, camera)
        self.monitors[camera].use_reference(manifest.input_stats)
        self.rates[camera].use_expected(expected_reject_rate(manifest, precision))

    def degraded(self, camera: str, frame: FrameInput | None = None) -> str:
        """Why the camera is degraded ('' when not): its frame's flag (at capture) or a reject-rate alarm."""
        if frame is not None and frame.degraded:
            return frame.degraded
        rate = self.rates.get(camera)
        return "reject_rate" if rate is not None and rate.alarming else ""

    def camera_health(self, camera: str) -> dict[str, object]:
        """The health file's `input` of one camera: state, reason, since, counts, the last frame's statistics."""
        out = self.monitors[camera].health()
        rate = self.rates[camera]
        if rate.alarming and not out["reason"]:
            out.update(state="degraded", reason="reject_rate")
        out["reject_rate"] = round(rate.rate, 4)
        out["reject_rate_limit"] = round(rate.limit, 4)
        out["alarms"] = self.monitors[camera].alarms + rate.alarms
        out["not_inspected"] = self.not_inspected[camera]
        return out
