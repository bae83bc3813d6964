"""The shared training pipeline: folder of good images -> model bundle the daemon runs.

load -> seeded hold-out split -> prepare with the daemon's own `edged.preprocess` -> `Method.fit` ->
fp32 ONNX -> int8 QDQ ONNX -> score the hold-out (and the test split, when the data has one) with both
models through `edged.detector.Detector` -> thresholds -> int8 vs fp32 parity -> manifest.

Every method named in `tools/methods/registry.py` (or registered with `register_method`) can be run with
``--method NAME``.

Before any work, `check_fit` validates every option and input (numbers finite and in range, ``--size``
within the method's limits, ``--opt`` typed by the method's table, enough images, a usable ``--out``)
and raises one `FitError` naming what is wrong. The bundle is assembled in a marked sibling folder
(`tools.bundle_out`) whose manifest says ``complete: false`` until the last write, and swapped in
atomically; nothing the fit did not write is ever removed. Hold-out images that score far above the
other good ones (defective or mislabeled parts) stop the fit, or with ``drop_outliers`` are named and
left out of the threshold.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import random
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from edged import features as feature_extractors
from edged.bundle import (
    REFERENCE_PARTS_FILE,
    InputSpec,
    Manifest,
    ReferenceParts,
    Threshold,
    TrainingSummary,
    sha256_file,
    unfinished_allowed,
    write_manifest,
)
from edged.detector import Detector
from edged.preprocess import prepare_uint8, to_tensor
from tools import bundle_out, calibrate, crossfit, export, input_check, input_size, light_range
from tools.camera_effects import through_jpeg, under_light, with_sensor_noise
from tools.dataset import (
    Dataset,
    DatasetError,
    Record,
    as_delivered,
    detect_bit_depth,
    file_list_sha256,
    holdout_split,
    load_dataset,
    load_images,
    model_sized,
)
from tools.evaluate import image_auroc
from tools.methods import base
from tools.methods.base import FitOptions, Method
from tools.methods.components.options import parse_options
from tools.methods.registry import UnknownMethodError, get_method

log = logging.getLogger(__name__)

# int8 may lose at most this much image AUROC: on the data's test split, or without defective test images on
# hold-out images vs the same images with synthetic blemishes. Score correlation is reported, not gated on.
INT8_AUROC_TOLERANCE = 0.02
CALIBRATION_IMAGES = 64  # training images fed to the int8 calibrator (MinMax needs few; more only costs time)
# Cameras and streams deliver JPEG (MJPG) or H.264 frames while training data are often PNG stills; each
# calibration image counts with the higher of its scores as stored and through JPEG at this quality
# (a webcam's MJPG sits at 70-85), so compression artefacts alone do not make a good part a reject.
# Training images that are JPEGs already taught the model those artefacts: then it is off by default (on
# the magnetic tiles, stored as JPEG, it cost 9 points of recall and changed no false-reject rate).
CALIBRATION_JPEG_QUALITY = 75


def jpeg_quality_for(cfg: FitConfig, records: list[Record]) -> int:
    """The calibration's JPEG quality: as given, else on for lossless training images, off for JPEGs."""
    if cfg.jpeg_quality is not None:
        return cfg.jpeg_quality
    jpegs = sum(r.path.suffix.lower() in (".jpg", ".jpeg") for r in records)
    quality = 0 if records and jpegs * 2 > len(records) else CALIBRATION_JPEG_QUALITY
    log.info("calibration through JPEG: %s (%d of %d training images are JPEGs)",
             f"quality {quality}" if quality else "off", jpegs, len(records))
    return quality
# int8 must also rank images like fp32: below this Pearson correlation of the scores fp32 stays the default
INT8_MIN_CORRELATION = 0.8
MIN_HOLDOUT = 2  # hold-out images: one score sets no threshold (and the interval says how far 2 can be trusted)
MAX_SEED = 2**32 - 1
MAX_EPOCHS = 100_000


class FitError(ValueError):
    """Bad input to fit (unknown method, no images, output path in the way); exit code 2."""


# --- the pipeline -------------------------------------------------------------------------------------------------

@dataclass
class FitConfig:
    """Everything `edged-train fit` was asked for; `check_fit` validates it before any work."""

    data: Path
    method: str
    out: Path
    options: FitOptions = field(default_factory=FitOptions)
    holdout: float = 0.15
    percentile: float | None = None
    target_frr: float | None = None
    int8_auroc_tolerance: float = INT8_AUROC_TOLERANCE
    check_test: bool = True  # score the data's test split (if any) with both models to measure the int8 loss
    drop_outliers: bool = False  # leave far-out hold-out images out of the threshold (named) instead of stopping
    bit_depth: int | None = None  # significant bits of 16-bit images; None: detected from the data
    # k-fold cross-fitting (tools/crossfit.py): every good image trains and calibrates; 0: a hold-out split
    folds: int = crossfit.DEFAULT_FOLDS
    auto_size: bool = False  # choose the input width x height from the training images (tools/input_size.py)
    size_budget: int | None = None  # with auto_size: about this many px square (None: the method's default_size)
    # calibration images also scored through JPEG at this quality, each keeping its higher score (0: off;
    # None: CALIBRATION_JPEG_QUALITY when the training images are lossless, off when they are JPEGs already)
    jpeg_quality: int | None = None
    # per-image light normalization in the bundle's preprocessing (InputSpec.normalize): none, mean_std, or auto
    # (tools/light_range.py: mean_std when the training images' brightness spans less than a lamp may move)
    normalize: str = "auto"
    # photometric copies of each training image for the model (`with_copies`); None (auto): the method's
    # `auto_light_copies` when the bundle does not normalize the light, none when it does (`light_copies_for`)
    augment_light: int | None = None
    # one copy of each training image with sensor noise and through JPEG (`encoded_copies`) for the model; None
    # (auto): the method's `auto_encoded_copies` when the calibration goes through JPEG (lossless training images)
    augment_jpeg: bool | None = None
    # each calibration image also scored under the brightest and darkest tolerated light (LIGHT_CORNERS), keeping
    # its highest score, so the threshold holds when the lamp changes (at the cost of some recall)
    calibrate_light: bool = False


@dataclass
class FitPlan:
    """What `check_fit` found valid, before any image is decoded."""

    method: Method
    dataset: Dataset
    spec: InputSpec
    train: list[Record]
    hold: list[Record]
    light: light_range.LightChoice | None = None  # what `--normalize auto` decided; None when it was given


@dataclass
class FitResult:
    """The installed bundle: its folder and manifest, the fit's wall time in s, the int8 parity figures
    (``parity``, as in the manifest's quantization section) and the warnings the CLI prints."""

    bundle: Path
    manifest: Manifest
    seconds: float
    parity: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def _seed_everything(seed: int) -> None:
    """Seed Python, numpy and (when imported) torch: the same seed gives the same model."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.manual_seed(seed)


# --- validation before any work -----------------------------------------------------------------------------------

def _finite_in(name: str, value: float | None, low: float, high: float, low_open: bool = False) -> None:
    if value is None:
        return
    if not math.isfinite(value) or value < low or value > high or (low_open and value == low):
        raise FitError(f"{name} {value}: must be a number in {'(' if low_open else '['}{low:g}, {high:g}]")


def _check_numbers(cfg: FitConfig) -> None:
    """The pipeline's own numbers: finite and in range (argparse has checked only their syntax)."""
    opts = cfg.options
    if not (isinstance(cfg.holdout, int | float) and math.isfinite(cfg.holdout) and 0 < cfg.holdout < 1):
        raise FitError(f"--holdout {cfg.holdout}: the hold-out fraction must be > 0 and < 1: the threshold is set "
                       f"on good images the model never saw")
    _finite_in("--percentile", cfg.percentile, 0.0, 100.0, low_open=True)
    if cfg.target_frr is not None and not (math.isfinite(cfg.target_frr) and 0 <= cfg.target_frr < 1):
        raise FitError(f"--target-frr {cfg.target_frr}: must be a number in [0, 1)")
    if cfg.percentile is not None and cfg.target_frr is not None:
        raise FitError("give either --percentile or --target-frr, not both")
    _finite_in("--int8-tolerance", cfg.int8_auroc_tolerance, 0.0, 1.0)
    if not 0 <= opts.seed <= MAX_SEED:
        raise FitError(f"--seed {opts.seed}: must be in [0, {MAX_SEED}]")
    if opts.epochs is not None and not 1 <= opts.epochs <= MAX_EPOCHS:
        raise FitError(f"--epochs {opts.epochs}: must be in [1, {MAX_EPOCHS}]")
    if cfg.jpeg_quality is not None and not (isinstance(cfg.jpeg_quality, int) and 0 <= cfg.jpeg_quality <= 100):
        raise FitError(f"--calibrate-jpeg {cfg.jpeg_quality}: must be a JPEG quality 1 to 100, or 0 (off)")
    if cfg.bit_depth is not None and cfg.bit_depth not in (8, 10, 12, 14, 16):
        raise FitError(f"--bit-depth {cfg.bit_depth}: must be 8, 10, 12, 14 or 16")


def size_limits(method: Method) -> tuple[int, int]:
    """(smallest, largest) --size the method accepts (its own limits, else the shared ones)."""
    return int(getattr(method, "min_size", base.MIN_SIZE)), int(getattr(method, "max_size", base.MAX_SIZE))


def _as_fitted(trained: InputSpec, spec: InputSpec) -> InputSpec:
    """A method's spec with what the fit decides beyond the method: the data's bit depth, the light normalization."""
    return trained.model_copy(update={"bit_depth": spec.bit_depth, "normalize": spec.normalize})


# The light a station must tolerate (issue 20: gain 0.7-1.3, gamma 0.8-1.25) at its extremes, for
# `calibrate_light`: the gain corners only, because a gamma of 0.8 or 1.25 moves mid-tones by at most 15%,
# less than a gain of 1.3 or 0.7 moves them, and each corner costs one more scoring of every calibration image.
LIGHT_CORNERS: tuple[float, ...] = (1.3, 0.7)
NORMALIZE_CHOICES = ("auto", "none", "mean_std")  # `--normalize`; auto: tools.light_range decides from the images


def with_copies(images: list[np.ndarray], light_copies: int, seed: int,
                encoded: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """The training images plus `light_copies` photometric variants of each (and its `encoded` copy, when given, after
    them), so the model learns them as normal; the images themselves when there are none. Laid out as the methods
    expect (`FitOptions.copies`): the originals, then each original's copies in turn.

    The first light copy is under the brightest tolerated gain (LIGHT_CORNERS[0], x1.3, with a random gamma
    0.8-1.25), the others anywhere in gain 0.7-1.3. Why the bright corner first: a dimmer lamp loses little (the
    tiles' false rejects under x0.7 stayed at the calibrated 0.3% without any copy), but a brighter one clips the
    bright regions at 255, which no good image shows; one copy drawn anywhere in the range rarely lands there (the
    tiles under x1.3: 3.8% false rejects with it, 2.8% with the bright corner, docs/input-health.md)."""
    if light_copies <= 0 and not encoded:
        return images
    if encoded and len(encoded) != len(images):
        raise ValueError(f"{len(encoded)} encoded copies for {len(images)} images")
    rng = np.random.default_rng([seed, 7])
    out = list(images)
    for i, image in enumerate(images):
        for j in range(light_copies):
            gain, gamma = rng.uniform(0.7, 1.3), float(np.exp(rng.uniform(np.log(0.8), np.log(1.25))))
            out.append(under_light(image, LIGHT_CORNERS[0] if j == 0 else gain, gamma))
        if encoded:
            out.append(encoded[i])
    return out


# `--augment-jpeg`: the encoded copy is the stored image as a camera's chain delivers it, sensor noise then its
# encoder, each drawn per image in these ranges: JPEG from a good MJPG camera's quality (90) down to a stream squeezed
# hard (40), so the model learns blocks and ringing, not one quality's; noise of 0-8 grey levels (a gain turned up),
# because a model that knows the encoder's smooth blocks but no noise has a tighter threshold and rejected most good
# parts under sigma 8 (rail_lamp: 82.5%; with noise up to 5 in the copy 5%, up to 8 0%; docs/detection.md)
ENCODED_QUALITY = (40, 90)
ENCODED_NOISE = (0.0, 8.0)


def encoded_copies_for(cfg: FitConfig, method: Method) -> bool:
    """`--augment-jpeg`: as given, or for auto (None) the method's `auto_encoded_copies` where the calibration goes
    through JPEG, i.e. the training images are lossless (`jpeg_quality_for`): JPEG training images show the
    artefacts already."""
    if cfg.augment_jpeg is not None:
        return cfg.augment_jpeg
    return bool(cfg.jpeg_quality) and bool(getattr(method, "auto_encoded_copies", False))


def encoded_copies(records: list[Record], spec: InputSpec, seed: int, progress: bool) -> list[np.ndarray]:
    """Each training image with sensor noise and through JPEG, sigma and quality drawn in ENCODED_NOISE and
    ENCODED_QUALITY, made at the size stored (the camera's, `as_delivered`) and prepared like the training images,
    in the records' order."""
    rng = np.random.default_rng([seed, 11])
    qualities = rng.integers(ENCODED_QUALITY[0], ENCODED_QUALITY[1] + 1, len(records))
    sigmas = rng.uniform(ENCODED_NOISE[0], ENCODED_NOISE[1], len(records))

    def encoded(image: np.ndarray, i: int) -> np.ndarray:
        noisy = with_sensor_noise(image, float(sigmas[i]), np.random.default_rng([seed, 13, i])) if sigmas[i] else image
        return through_jpeg(noisy, int(qualities[i]))

    delivered = as_delivered(records, spec, encoded, progress, "reading train (encoded copies)")
    return [prepare_uint8(image, spec) for image in delivered]


def tolerated_light(cfg: FitConfig, spec: InputSpec) -> tuple[float, float]:
    """The lamp gains the bundle is made to tolerate, for the input health's brightness bounds: LIGHT_CORNERS where
    its graph normalizes the light or its threshold was calibrated under them; (1, 1) otherwise, light copies
    or not, because those alone left the tiles at 2.8% false rejects under x1.3 (calibrated 0.3%)."""
    if spec.normalize != "none" or cfg.calibrate_light:
        return (min(LIGHT_CORNERS), max(LIGHT_CORNERS))
    return (1.0, 1.0)


def light_copies_for(cfg: FitConfig, spec: InputSpec, method: Method) -> int:
    """`--augment-light`: the copies given, or for auto (None) the method's `auto_light_copies` where the bundle
    does not normalize the light, none where it does.

    A normalized bundle no longer sees a lamp's gain; one that keeps the light as it is (its good parts' own
    brightness varies, `tools.light_range`) must be shown the clipping a brighter lamp brings. Per method, because
    a copy costs each method differently: patchcore's bank keeps its size (fit 1:52 -> 2:57 on the tiles), the
    feature autoencoder trains on twice the patches (a fold model 36-57 s -> about 230 s, its fit past 10 min)."""
    if cfg.augment_light is not None:
        return cfg.augment_light
    return int(getattr(method, "auto_light_copies", 0)) if spec.normalize == "none" else 0


def _method_options(cfg: FitConfig, method: Method, records: list[Record], spec: InputSpec) -> FitOptions:
    """The method's options, telling it how many copies of each image it is given and how the camera may
    deliver each original (`records`: the training images in the order given, as `camera_variants` says)."""
    variants = list(camera_variants(cfg).values())

    def camera_copies(i: int) -> list[np.ndarray]:
        return [prepare_uint8(as_delivered([records[i]], spec, _per_index(variant))[0], spec) for variant in variants]

    copies = light_copies_for(cfg, spec, method) + int(encoded_copies_for(cfg, method))
    return dataclasses.replace(cfg.options, copies=copies, camera_copies=camera_copies if variants else None)


def _check_method(method: Method, cfg: FitConfig) -> InputSpec:
    """--size within the method's limits and --opt under the shared rules; the method's input spec."""
    opts = cfg.options
    low, high = size_limits(method)
    width, height = opts.shape
    if not (low <= width <= high and low <= height <= high):
        shown = f"{width}" if width == height else f"{width}x{height}"
        raise FitError(f"--size {shown}: method {cfg.method} takes {low} to {high} px")
    if width != height and not getattr(method, "non_square", False):
        raise FitError(f"--size {width}x{height}: method {cfg.method} takes square inputs only (--size N)")
    try:
        parse_options(cfg.method, getattr(method, "options", {}) or {}, opts.extra)
        spec = method.input_spec(opts)
    except ValueError as exc:  # OptionError, or a method's own rule (e.g. cae: a multiple of 32)
        raise FitError(str(exc)) from None
    if cfg.normalize not in NORMALIZE_CHOICES:
        raise FitError(f"--normalize {cfg.normalize}: must be one of {', '.join(NORMALIZE_CHOICES)}")
    if cfg.augment_light is not None and not 0 <= cfg.augment_light <= 8:
        raise FitError(f"--augment-light {cfg.augment_light}: must be 0 to 8 copies per image")
    spec = spec.model_copy(update={"normalize": "none" if cfg.normalize == "auto" else cfg.normalize})
    if spec.kind == "features":
        try:
            feature_extractors.get(spec.features or "")
        except KeyError:
            raise FitError(f"method {cfg.method}: feature extractor {spec.features!r} is not registered in "
                           f"edged.features (the daemon could not run this bundle)") from None
    return spec


def _check_amounts(method: Method, cfg: FitConfig, n_train: int, n_hold: int, what: str = "") -> None:
    need = int(getattr(method, "min_images", base.MIN_IMAGES))
    if n_train < need or n_hold < MIN_HOLDOUT:
        raise FitError(f"{cfg.data}: {n_train + n_hold} {what}good image(s) ({n_train} to train on, {n_hold} held "
                       f"out): method {cfg.method} needs at least {need} to train on and {MIN_HOLDOUT} held out "
                       f"(with --holdout {cfg.holdout:g}: {_images_needed(need, cfg.holdout)} good images)")


def _images_needed(n_train: int, holdout: float) -> int:
    n = n_train + MIN_HOLDOUT
    while True:
        n_hold = max(1, round(n * holdout))
        if n - n_hold >= n_train and n_hold >= MIN_HOLDOUT:
            return n
        n += 1


def check_fit(cfg: FitConfig) -> FitPlan:
    """Every option and input checked before any work starts; one `FitError` (or `DatasetError`) naming it."""
    try:
        method = get_method(cfg.method)
    except UnknownMethodError as exc:
        raise FitError(str(exc)) from None
    _check_numbers(cfg)
    spec = _check_method(method, cfg)
    try:
        bundle_out.check_out(Path(cfg.out))
    except bundle_out.OutputError as exc:
        raise FitError(str(exc)) from None
    ds = load_dataset(cfg.data)
    if not ds.train:
        raise DatasetError(f"{cfg.data}: no good training images (train/good is empty)")
    if cfg.auto_size:
        spec = _check_method(method, _sized_from_data(cfg, method, ds.train))
    light = _light_from_data(cfg, ds.train) if cfg.normalize == "auto" else None
    if light is not None:
        spec = spec.model_copy(update={"normalize": light.normalize})
    n = len(ds.train)
    if cfg.folds:
        _check_folds(method, cfg, n)
        return FitPlan(method, ds, spec, list(ds.train), [], light)
    n_hold = max(1, round(n * cfg.holdout)) if n > 1 else 0
    _check_amounts(method, cfg, n - n_hold, n_hold)
    train, hold = holdout_split(ds.train, cfg.holdout, cfg.options.seed)
    return FitPlan(method, ds, spec, train, hold, light)


def _sized_from_data(cfg: FitConfig, method: Method, records: list[Record]) -> FitConfig:
    """Set the options' width x height from a sample of the training images (`tools.input_size`)."""
    low, high = size_limits(method)
    base_side = cfg.size_budget or int(getattr(method, "default_size", cfg.options.size))
    shapes = input_size.sample_shapes(records, seed=cfg.options.seed)
    width, height = input_size.choose(shapes, base_side, low, high, bool(getattr(method, "non_square", False)))
    cfg.options.size, cfg.options.height = width, height
    if shapes:
        mw, mh = (int(np.median([s[i] for s in shapes])) for i in (0, 1))
        log.info("input size %dx%d, chosen from the training images (median %dx%d of %d sampled; about %d px "
                 "square for method %s, aspect kept, never enlarged)", width, height, mw, mh, len(shapes),
                 base_side, cfg.method)
    return cfg


def _light_from_data(cfg: FitConfig, records: list[Record]) -> light_range.LightChoice:
    """`--normalize auto`: the light normalization chosen from a sample of the training images (`tools.light_range`)."""
    choice = light_range.choose_for(records, seed=cfg.options.seed)
    log.info("%s", choice.describe())
    return choice


def _check_folds(method: Method, cfg: FitConfig, n: int) -> None:
    """Enough images that each fold's model trains on the method's minimum and each fold scores one."""
    if not crossfit.MIN_FOLDS <= cfg.folds <= crossfit.MAX_FOLDS:
        raise FitError(f"--folds {cfg.folds}: must be 0 (a hold-out split) or {crossfit.MIN_FOLDS} to "
                       f"{crossfit.MAX_FOLDS}")
    need = int(getattr(method, "min_images", base.MIN_IMAGES))
    per_fold_train = n - -(-n // cfg.folds)  # the largest fold is left out
    if n < cfg.folds or per_fold_train < need:
        fewest = max(cfg.folds, -(-need * cfg.folds // (cfg.folds - 1)))
        raise FitError(f"{cfg.data}: {n} good image(s): method {cfg.method} with {cfg.folds}-fold cross-fitting "
                       f"needs at least {fewest} (each fold model trains on {need} or more)")


def _read(records: list[Record], progress: bool, desc: str, spec: InputSpec, for_detector: bool = False,
          ) -> tuple[list[np.ndarray], list[Record]]:
    """Decode images at the model's size as they are read; unreadable files are logged and skipped.

    Training images are prepared for the method (`prepare_uint8`); images the daemon's `Detector` will
    score (`for_detector`) are shrunk the same way but kept in an order it takes again (`model_sized`).
    """
    transform = model_sized(spec) if for_detector else functools.partial(prepare_uint8, spec=spec)
    return load_images(records, progress, desc, transform)


def with_blemishes(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy of a prepared uint8 image with 1-3 random dark or bright strokes and blobs drawn on it."""
    out = image.copy()
    h, w = out.shape[:2]
    for _ in range(int(rng.integers(1, 4))):
        value = int(rng.integers(0, 40)) if rng.random() < 0.5 else int(rng.integers(215, 256))
        color: Any = value if out.ndim == 2 else (value, value, value)
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        if rng.random() < 0.5:
            length = rng.uniform(0.1, 0.4) * w
            angle = rng.uniform(0, np.pi)
            end = (int(x + length * np.cos(angle)), int(y + length * np.sin(angle)))
            cv2.line(out, (x, y), end, color, int(rng.integers(1, max(2, w // 40) + 1)))
        else:
            axes = (max(1, int(rng.uniform(0.02, 0.08) * w)), max(1, int(rng.uniform(0.02, 0.08) * h)))
            cv2.ellipse(out, (x, y), axes, float(rng.uniform(0, 180)), 0, 360, color, -1)
    return out


def _model_rows(prepared: list[np.ndarray], spec: InputSpec, n: int, seed: int) -> np.ndarray:
    """Model inputs for int8 calibration: a seeded sample of prepared training images.

    For image models a quarter of the rows are copies with synthetic blemishes. Calibrating on good parts
    only sets every activation range to what good parts produce; the layers that measure the anomaly
    (the reconstruction error, the patch distance) then clip on real defects and the int8 score
    saturates exactly where it matters. The blemishes widen those ranges to defect-like responses.
    """
    rng = np.random.default_rng(seed)
    idx = sorted(rng.permutation(len(prepared))[:n].tolist())
    if spec.kind == "features":
        extractor = feature_extractors.get(spec.features or "")
        return np.stack([extractor(prepared[i]) for i in idx]).astype(np.float32)
    n_blemished = len(idx) // 4
    images = [prepared[i] for i in idx]
    images[len(images) - n_blemished:] = [with_blemishes(im, rng) for im in images[len(images) - n_blemished:]]
    return np.stack([to_tensor(im, spec) for im in images])


def _correlation(a: np.ndarray, b: np.ndarray) -> dict[str, float | None]:
    from scipy.stats import pearsonr, spearmanr

    if len(a) < 3 or np.std(a) == 0 or np.std(b) == 0:
        return {"pearson": None, "spearman": None}
    return {"pearson": float(pearsonr(a, b)[0]), "spearman": float(spearmanr(a, b)[0])}


def holdout_outliers(scores: np.ndarray, records: list[Record], root: Path, fence: float | None = None,
                     ) -> list[dict[str, Any]]:
    """Hold-out images scoring far above the others (`calibrate.outlier_indices`), highest first.

    With the default percentile the threshold is the highest hold-out score whenever n <= 200, so one
    odd "good" image (overexposed, mislabeled, another product) silently sets it; naming it lets the
    quality engineer look at the image instead of trusting a threshold nothing else reaches.
    """
    return [{"file": _relative_name(records[i].path, root), "score": float(scores[i]), "index": i}
            for i in calibrate.outlier_indices(scores, fence)]


def _relative_name(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _threshold_source(n_holdout: int, fraction: float) -> str:
    return f"held-out train/good ({fraction:.0%}, {n_holdout} images, never trained on)"


def _bit_depth(cfg: FitConfig, records: list[Record]) -> int:
    """The bit depth the manifest records: --bit-depth, else detected on a sample of the training images."""
    if cfg.bit_depth is not None:
        return cfg.bit_depth
    bits, highest = detect_bit_depth(records)
    if highest is not None:
        log.info("16-bit images with values up to %d: scaled as %d-bit data (the manifest says so; the daemon "
                 "scales its frames the same way)", highest, bits)
    return bits


def outlier_message(outliers: list[dict[str, Any]], n: int, what: str, flag: str = "--drop-outliers") -> str:
    """The refusal (or warning) naming up to 5 outliers ({"file", "score"}) among `n` images and how to proceed."""
    names = ", ".join(f"{o['file']} ({o['score']:.4g})" for o in outliers[:5])
    more = f" and {len(outliers) - 5} more" if len(outliers) > 5 else ""
    return (f"{len(outliers)} of {n} {what} score far above the other good images: {names}{more}. Defective, "
            f"mislabeled or another product? They would set the threshold; remove them, or pass {flag} to leave "
            f"them out of it")


def _drop_holdout_outliers(cfg: FitConfig, scores: dict[str, dict[str, Any]], hold_recs: list[Record],
                           hold_images: list[np.ndarray], root: Path, warnings: list[str],
                           ) -> tuple[list[Record], list[np.ndarray], list[dict[str, Any]]]:
    """Refuse hold-out outliers (FitError), or with `drop_outliers` leave them out of every model's scores."""
    # under light the corners may raise a good image far above the others: judged as stored then (no change else)
    outliers = holdout_outliers(scores["fp32"]["stored" if cfg.calibrate_light else "hold"], hold_recs, root)
    if not outliers:
        return hold_recs, hold_images, []
    message = outlier_message(outliers, len(hold_recs), "hold-out images")
    if not cfg.drop_outliers:
        raise FitError(message)
    bad = {o["index"] for o in outliers}
    keep = [i for i in range(len(hold_recs)) if i not in bad]
    if len(keep) < MIN_HOLDOUT:
        raise FitError(f"{message}; without them fewer than {MIN_HOLDOUT} hold-out images remain")
    for s in {id(v): v for v in scores.values()}.values():  # int8 may be the same dict as fp32
        s["hold"], s["stored"] = s["hold"][keep], s["stored"][keep]
        s["maps"] = [s["maps"][i] for i in keep] if s["maps"] is not None else None
    msg = f"dropped {len(bad)} hold-out image(s) from the threshold: " + ", ".join(o["file"] for o in outliers)
    log.warning("!!! %s", msg)
    warnings.append(msg)
    return [hold_recs[i] for i in keep], [hold_images[i] for i in keep], outliers


def _export_models(trained: base.Trained, prepared: list[np.ndarray], spec: InputSpec, folder: Path, cfg: FitConfig,
                   warnings: list[str]) -> tuple[str, dict[str, Any]]:
    """Write the fp32 ONNX file and, where the method allows, the int8 one; (int8 entry's file, quant info)."""
    fp32_path = folder / export.FP32_FILE
    trained.export_onnx(fp32_path)
    if not trained.quantize.enabled:
        note = str(trained.params.get("quantization_note", f"disabled by method {cfg.method}"))
        return export.FP32_FILE, {"enabled": False, "note": note + f"; the int8 entry points to {export.FP32_FILE}"}
    from tools.quantize import quantize

    rows = _model_rows(prepared, spec, CALIBRATION_IMAGES, cfg.options.seed)
    try:
        return export.INT8_FILE, quantize(fp32_path, folder / export.INT8_FILE, rows, spec.name, trained.quantize)
    except Exception as exc:  # keep a working bundle: fp32 only, and say why
        msg = f"int8 quantization failed ({type(exc).__name__}: {exc}); the bundle runs fp32"
        log.error("!!! %s", msg)
        warnings.append(msg)
        return export.FP32_FILE, {"enabled": False, "error": msg}


def _write_provisional(folder: Path, cfg: FitConfig, spec: InputSpec, trained: base.Trained, int8_file: str,
                       training: TrainingSummary, quant: dict[str, Any]) -> None:
    """A manifest with placeholder thresholds (complete: false) so that `Detector` (the daemon's code) can
    score with each model; the daemon's loader refuses it, should the fit die before the real one."""
    placeholder = Threshold(value=0.0, method="manual", source="provisional")
    entries: dict[export.Precision, export.Entry] = {"fp32": (export.FP32_FILE, placeholder, None),
                                                     "int8": (int8_file, placeholder, None)}
    provisional = export.build_manifest(folder, cfg.method, spec, trained.outputs, entries, "fp32", training, quant,
                                        runtimes=("onnxruntime", "opencv"), complete=False)
    write_manifest(folder, provisional)


def _score(folder: Path, precision: str, images: list[np.ndarray], progress: bool, desc: str,
           keep_maps: bool = True) -> tuple[np.ndarray, list[np.ndarray] | None]:
    with unfinished_allowed(folder):
        detector = Detector(folder, precision=precision, intra_op_threads=1)
        return calibrate.score_images(detector, images, progress=progress, desc=desc, keep_maps=keep_maps)


def camera_variants(cfg: FitConfig) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """How a camera may deliver a calibration image besides as stored, by name: through JPEG (`jpeg_quality`),
    under the extremes of the tolerated light (`calibrate_light`)."""
    out: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    if cfg.jpeg_quality:
        out["through JPEG"] = functools.partial(through_jpeg, quality=cfg.jpeg_quality)
    if cfg.calibrate_light:
        out.update({f"under light x{g:g}": functools.partial(under_light, gain=g) for g in LIGHT_CORNERS})
    return out


def _per_index(variant: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray, int], np.ndarray]:
    """`variant` as `as_delivered` takes a change: the same for every image index."""
    return lambda image, i: variant(image)


def _as_camera_delivers(cfg: FitConfig, records: list[Record], spec: InputSpec) -> dict[str, list[np.ndarray]]:
    """The calibration images each `camera_variants` way, changed at the size stored (the camera's) and then
    brought to the model's size (`tools.dataset.as_delivered`), by variant name."""
    return {name: as_delivered(records, spec, _per_index(variant), cfg.options.progress,
                               f"reading calibration images ({name})")
            for name, variant in camera_variants(cfg).items()} if records else {}


def _score_as_camera(folder: Path, precision: str, images: list[np.ndarray], variants: dict[str, list[np.ndarray]],
                     cfg: FitConfig, desc: str) -> tuple[np.ndarray, list[np.ndarray] | None, np.ndarray]:
    """Calibration scores: each image's highest score (and map, pixel by pixel) of as stored and every
    way a camera may deliver it (`variants`, from `_as_camera_delivers`); and the scores as stored (for the
    outlier check: a good image is no outlier for scoring high under a changed lamp)."""
    scores, maps = _score(folder, precision, images, cfg.options.progress, desc)
    stored = scores
    if not images:
        return scores, maps, stored
    for name, changed in variants.items():
        v_scores, v_maps = _score(folder, precision, changed, cfg.options.progress, f"{desc} {name}")
        if maps is not None and v_maps is not None:
            maps = [np.maximum(a, b) for a, b in zip(maps, v_maps, strict=True)]
        scores = np.maximum(scores, v_scores)
    return scores, maps, stored


def _cross_fit(cfg: FitConfig, method: Method, images: _FitImages, spec: InputSpec,
               staging: Path) -> crossfit.OutOfFold:
    """k fold models, each a full bundle in `staging`/folds (exported, quantized, scored by `Detector`)."""
    prepared, det_images, records = images.prepared, images.det_train, images.train_recs

    def fit_and_score(train_idx: Any, held_idx: Any, fold: int) -> dict[str, crossfit.HeldScores]:
        folder = staging / "folds" / str(fold)
        folder.mkdir(parents=True, exist_ok=True)
        _seed_everything(cfg.options.seed + fold + 1)
        fold_images = [prepared[i] for i in train_idx]
        copies = light_copies_for(cfg, spec, method)
        encoded = [images.encoded[i] for i in train_idx] if images.encoded else None
        trained = method.fit(with_copies(fold_images, copies, cfg.options.seed + fold, encoded),
                             _method_options(cfg, method, [records[i] for i in train_idx], spec))
        fold_spec = _as_fitted(trained.spec, spec)
        int8_file, quant = _export_models(trained, fold_images, fold_spec, folder, cfg, [])
        summary = TrainingSummary(count=len(train_idx), data=str(cfg.data))
        _write_provisional(folder, cfg, fold_spec, trained, int8_file, summary, quant)
        held = [det_images[i] for i in held_idx]
        variants = _as_camera_delivers(cfg, [records[i] for i in held_idx], fold_spec)
        out: dict[str, crossfit.HeldScores] = {}
        for precision in ("fp32", "int8"):
            scores, maps, stored = _score_as_camera(folder, precision, held, variants, cfg,
                                                    f"fold {fold + 1}/{cfg.folds}: scoring ({precision})")
            peaks = np.asarray([float(np.max(m)) for m in maps]) if maps else None
            out[precision] = crossfit.HeldScores(scores, peaks)
            if cfg.calibrate_light:
                out[precision + AS_STORED] = crossfit.HeldScores(stored)
        shutil.rmtree(folder, ignore_errors=True)
        return out

    oof = crossfit.out_of_fold(len(prepared), cfg.folds, cfg.options.seed, fit_and_score)
    shutil.rmtree(staging / "folds", ignore_errors=True)
    log.info("cross-fit: %d out-of-fold scores from %d fold models in %.0f s", len(prepared), cfg.folds, oof.seconds)
    return oof


# out-of-fold key suffix of a precision's scores as stored, kept beside its calibration scores when
# `calibrate_light` is on: for the outlier check and to say what the light corners cost (`threshold_as_stored`)
AS_STORED = " as stored"


def _oof_outliers(cfg: FitConfig, oof: crossfit.OutOfFold, recs: list[Record], root: Path,
                  warnings: list[str]) -> list[dict[str, Any]]:
    """Training images whose out-of-fold score is far above the others: refused, or named and dropped."""
    outliers = holdout_outliers(oof.scores.get("fp32" + AS_STORED, oof.scores["fp32"]), recs, root)
    if not outliers:
        return []
    message = outlier_message(outliers, len(recs), "good training images")
    if not cfg.drop_outliers:
        raise FitError(message)
    msg = (f"dropped {len(outliers)} training image(s) from the model and the threshold: "
           + ", ".join(o["file"] for o in outliers))
    log.warning("!!! %s", msg)
    warnings.append(msg)
    return outliers


def _crossfit_source(n: int, folds: int) -> str:
    return (f"out-of-fold scores of all {n} train/good images ({folds}-fold cross-fit: each scored by a model "
            f"that never saw it; the bundle's model is trained on all of them)")


@dataclass
class _FitImages:
    """The decoded images of one fit at the model's size (`_read`), with their records in the same order."""

    prepared: list[np.ndarray]  # training images as the method takes them (`prepare_uint8`)
    det_train: list[np.ndarray]  # the same images for `Detector` (cross-fitting only; [] with a hold-out split)
    train_recs: list[Record]
    hold_images: list[np.ndarray]  # hold-out images for `Detector` ([] when cross-fitting)
    hold_recs: list[Record]
    test_images: list[np.ndarray]  # the data's test split, when `check_test` (empty otherwise)
    test_recs: list[Record]
    encoded: list[np.ndarray] = field(default_factory=list)  # `encoded_copies` of `prepared` ([] when off)

    def keep(self, indices: list[int]) -> None:
        """Only the training images at `indices` (with their records and copies), e.g. without outliers."""
        self.prepared = [self.prepared[i] for i in indices]
        self.det_train = [self.det_train[i] for i in indices] if self.det_train else []
        self.train_recs = [self.train_recs[i] for i in indices]
        self.encoded = [self.encoded[i] for i in indices] if self.encoded else []


def _read_fit_images(cfg: FitConfig, plan: FitPlan, spec: InputSpec) -> _FitImages:
    """Decode the plan's images once; unreadable ones are skipped, then the amounts are checked again."""
    progress = cfg.options.progress
    det_train: list[np.ndarray] = []
    hold_images: list[np.ndarray] = []
    hold_recs: list[Record] = []
    if cfg.folds:
        # Read once at model size; the method's copy is the same pixels in its color order.
        det_train, train_recs = _read(plan.train, progress, "reading train", spec, for_detector=True)
        prepared = [prepare_uint8(im, spec) for im in det_train]
        _check_folds(plan.method, cfg, len(prepared))
    else:
        prepared, train_recs = _read(plan.train, progress, "reading train", spec)
        hold_images, hold_recs = _read(plan.hold, progress, "reading hold-out", spec, for_detector=True)
        _check_amounts(plan.method, cfg, len(prepared), len(hold_images), "readable ")
    test_images: list[np.ndarray] = []
    test_recs: list[Record] = []
    if cfg.check_test and plan.dataset.test:
        test_images, test_recs = _read(plan.dataset.test, progress, "reading test", spec, for_detector=True)
    encoded = (encoded_copies(train_recs, spec, cfg.options.seed, progress)
               if encoded_copies_for(cfg, plan.method) else [])
    return _FitImages(prepared, det_train, train_recs, hold_images, hold_recs, test_images, test_recs, encoded)


def _cross_fit_step(cfg: FitConfig, method: Method, images: _FitImages, spec: InputSpec, staging: Path, root: Path,
                    warnings: list[str]) -> tuple[crossfit.OutOfFold | None, list[dict[str, Any]]]:
    """With --folds: the out-of-fold scores, and the outliers among them (dropped from `images` and the scores)."""
    if not cfg.folds:
        return None, []
    oof = _cross_fit(cfg, method, images, spec, staging)
    outliers = _oof_outliers(cfg, oof, images.train_recs, root, warnings)
    if outliers:
        bad = {o["index"] for o in outliers}
        keep = [i for i in range(len(images.prepared)) if i not in bad]
        images.keep(keep)
        for key in list(oof.scores):
            oof.scores[key] = oof.scores[key][keep]
            peaks = oof.peaks.get(key)
            oof.peaks[key] = None if peaks is None else peaks[keep]
    return oof, outliers


@dataclass
class _FinalModel:
    """The bundle's own model, trained on all training images and exported to the staging folder."""

    trained: base.Trained
    spec: InputSpec  # the trained model's input spec, with the data's bit depth
    int8_file: str  # the int8 entry's file: `export.INT8_FILE`, or `export.FP32_FILE` when not quantized
    quant: dict[str, Any]  # the manifest's quantization section
    train_seconds: float

    @property
    def quantized(self) -> bool:
        """Whether the bundle has a separate int8 model."""
        return self.int8_file != export.FP32_FILE


def _train_final(cfg: FitConfig, method: Method, images: _FitImages, spec: InputSpec, staging: Path,
                 warnings: list[str]) -> _FinalModel:
    """Fit the bundle's model on `images.prepared` (then emptied: the pixels are no longer needed) and export it."""
    _seed_everything(cfg.options.seed)
    t_train = time.perf_counter()
    trained = method.fit(with_copies(images.prepared, light_copies_for(cfg, spec, method), cfg.options.seed,
                                           images.encoded or None),
                         _method_options(cfg, method, images.train_recs, spec))
    train_seconds = time.perf_counter() - t_train
    if _as_fitted(trained.spec, spec) != spec:
        log.info("method %s changed its input spec while fitting; using the trained one", cfg.method)
    spec = _as_fitted(trained.spec, spec)
    int8_file, quant = _export_models(trained, images.prepared, spec, staging, cfg, warnings)
    images.prepared, images.encoded = [], []  # the training pixels are no longer needed
    return _FinalModel(trained, spec, int8_file, quant, train_seconds)


def _score_models(cfg: FitConfig, staging: Path, final: _FinalModel, oof: crossfit.OutOfFold | None,
                  images: _FitImages, reference: list[np.ndarray]) -> dict[str, dict[str, Any]]:
    """Per precision: calibration scores (out-of-fold, or the hold-out's as a camera delivers it) and maps,
    map peaks, test scores, and the scores of `reference` images and their synthetically blemished copies.
    int8 is the same dict as fp32 when the bundle has no separate int8 model."""
    opts = cfg.options
    has_both = len({r.is_good for r in images.test_recs}) == 2
    synthetic: list[np.ndarray] = []
    if final.quantized and not has_both:
        # No defective test images: judge int8 on good images with synthetic blemishes instead.
        rng = np.random.default_rng(opts.seed + 1)
        synthetic = [with_blemishes(im, rng) for im in reference]
    scores: dict[str, dict[str, Any]] = {}
    variants = _as_camera_delivers(cfg, images.hold_recs, final.spec) if oof is None else {}
    for precision in ("fp32", "int8"):
        if precision == "int8" and not final.quantized:
            scores["int8"] = scores["fp32"]
            continue
        if oof is not None:
            hold_scores, hold_maps = oof.scores[precision], None
            peaks = oof.peaks.get(precision)
            stored = oof.scores.get(precision + AS_STORED, hold_scores)
        else:
            hold_scores, hold_maps, stored = _score_as_camera(staging, precision, images.hold_images, variants, cfg,
                                                              f"scoring hold-out ({precision})")
            peaks = None
        test_scores, _ = _score(staging, precision, images.test_images, opts.progress, f"scoring test ({precision})",
                                keep_maps=False)
        synth_scores, _ = _score(staging, precision, synthetic, False, "", keep_maps=False)
        ref_scores = hold_scores if oof is None else _score(staging, precision, reference, False, "",
                                                            keep_maps=False)[0]
        scores[precision] = {"hold": hold_scores, "stored": stored, "maps": hold_maps, "peaks": peaks,
                             "test": test_scores,
                             "synthetic": synth_scores, "reference": ref_scores}
    return scores


def _final_entries(cfg: FitConfig, final: _FinalModel, scores: dict[str, dict[str, Any]], source: str,
                   ) -> dict[export.Precision, export.Entry]:
    """Each model's image threshold (from the calibration scores) and map threshold (from their maps' peaks)."""
    has_map = bool(final.trained.outputs.map)
    entries: dict[export.Precision, export.Entry] = {}
    files: tuple[tuple[export.Precision, str], ...] = (("fp32", export.FP32_FILE), ("int8", final.int8_file))
    for precision, file in files:
        s = scores[precision]
        thr = calibrate.image_threshold(s["hold"], cfg.percentile, cfg.target_frr, source)
        mthr: float | None = None
        if has_map and s["peaks"] is not None:
            mthr = calibrate.image_threshold(s["peaks"], cfg.percentile, cfg.target_frr).value
        elif has_map:
            mthr = calibrate.map_threshold(s["maps"], cfg.percentile, cfg.target_frr)
        entries[precision] = (file, thr, mthr)
    return entries


def _training_params(cfg: FitConfig, final: _FinalModel, calibration: dict[str, Any], skipped: int,
                     outliers: list[dict[str, Any]], verification: dict[str, Any] | None) -> dict[str, Any]:
    """The manifest's ``training.params``: the method's own, then how the fit ran (as plain JSON types)."""
    opts, spec = cfg.options, final.spec
    return export.jsonable({
        **final.trained.params,
        "size": [spec.width, spec.height], "size_chosen_from_data": cfg.auto_size,
        "seed": opts.seed, "epochs": opts.epochs, "options": dict(opts.extra),
        **calibration, "calibration_jpeg_quality": cfg.jpeg_quality or None,
        "calibration_light": list(LIGHT_CORNERS) if cfg.calibrate_light else None,
        "skipped_unreadable": skipped,
        "holdout_outliers": [{k: v for k, v in o.items() if k != "index"} for o in outliers],
        "holdout_outliers_dropped": bool(outliers),
        "bit_depth": spec.bit_depth,
        "train_seconds": round(final.train_seconds, 1),
        "verification": verification,
    })


def fit_bundle(cfg: FitConfig) -> FitResult:
    """Run the whole pipeline; returns the written bundle's manifest and the int8 parity figures."""
    t_start = time.perf_counter()
    plan = check_fit(cfg)
    log.info("data: %s", plan.dataset.describe())
    spec = plan.spec.model_copy(update={"bit_depth": _bit_depth(cfg, plan.train)})
    cfg = dataclasses.replace(cfg, jpeg_quality=jpeg_quality_for(cfg, plan.train))
    images = _read_fit_images(cfg, plan, spec)
    if cfg.augment_light is None:
        copies = light_copies_for(cfg, spec, plan.method)
        why = ("the bundle normalizes each image's light" if spec.normalize != "none" else
               "the bundle keeps the light as it is, so it is shown a brighter lamp's clipping" if copies else
               f"method {cfg.method} takes none unless asked (--augment-light N)")
        log.info("light copies per training image: %d (auto: %s)", copies, why)
    if cfg.augment_jpeg is None:
        why = ("lossless training images, so a camera's encoding is new to the model" if images.encoded else
               "the training images are JPEGs already" if not cfg.jpeg_quality else
               f"method {cfg.method} takes none unless asked (--augment-jpeg on)")
        log.info("encoded copy of each training image (noise sigma %g-%g, JPEG %d-%d): %s (auto: %s)",
                 *ENCODED_NOISE, *ENCODED_QUALITY, "yes" if images.encoded else "no", why)
    log.info("method %s: training on %d images (%s), %s", cfg.method, len(images.prepared),
             f"{spec.width}x{spec.height} {spec.color_order}",
             f"threshold from {cfg.folds}-fold cross-fitting" if cfg.folds else f"{len(images.hold_images)} held out")

    out = Path(cfg.out)
    tmp = bundle_out.staging(out)
    warnings: list[str] = []
    try:
        manifest, parity = _fit_in(tmp, cfg, plan, spec, images, warnings)
        bundle_out.install(tmp, out)
    except BaseException:
        bundle_out.discard(tmp)
        raise
    seconds = time.perf_counter() - t_start
    log.info("bundle %s written to %s in %.1f s (default %s)", manifest.bundle_id, out, seconds, manifest.default)
    return FitResult(out, manifest, seconds, parity, warnings)


def _fit_in(tmp: Path, cfg: FitConfig, plan: FitPlan, spec: InputSpec, images: _FitImages, warnings: list[str],
            ) -> tuple[Manifest, dict[str, Any]]:
    """Train, export, score and calibrate into the staging folder `tmp`; the complete manifest (written last)
    and the int8 parity figures."""
    ds = plan.dataset
    oof, outliers = _cross_fit_step(cfg, plan.method, images, spec, tmp, ds.root, warnings)
    final = _train_final(cfg, plan.method, images, spec, tmp, warnings)
    training = TrainingSummary(count=len(images.train_recs), holdout=len(images.hold_recs), data=str(cfg.data),
                               file_list_sha256=file_list_sha256(images.train_recs, ds.root))
    _write_provisional(tmp, cfg, final.spec, final.trained, final.int8_file, training, final.quant)

    reference = images.det_train[:len(images.hold_images) or 64] if oof is not None else images.hold_images
    scores = _score_models(cfg, tmp, final, oof, images, reference)
    with unfinished_allowed(tmp):
        runtimes = opencv_parity(tmp, reference[:OPENCV_CHECK_IMAGES], scores["fp32"]["reference"])

    n_hold_scored = len(images.hold_recs)
    if oof is None:
        images.hold_recs, images.hold_images, outliers = _drop_holdout_outliers(
            cfg, scores, images.hold_recs, images.hold_images, ds.root, warnings)
        source = _threshold_source(len(images.hold_recs), cfg.holdout)
    else:
        source = _crossfit_source(len(images.train_recs), cfg.folds)
    entries = _final_entries(cfg, final, scores, source)
    trust = calibrate.trust_warning(entries["fp32"][1])
    if trust:
        log.info("%s", trust)  # a warning for the caller: the CLI prints it once
        warnings.append(trust)

    parity, default = _parity(scores, images.test_recs, final.quantized, cfg)
    if parity.get("warning"):
        warnings.append(parity["warning"])
    verification = verify_on_defects(scores[default]["test"], images.test_recs, entries[default][1].value,
                                     scores[default]["hold"], ds.root)
    if verification:
        log.info("defect images (verification only, nothing was chosen on them): %s", verification["summary"])
    final.quant["parity"] = parity
    final.quant["default_reason"] = parity.get("decision", "")

    calibration: dict[str, Any] = ({"calibration": "cross-fit", "folds": cfg.folds,
                                    "crossfit_seconds": round(oof.seconds, 1)} if oof is not None else
                                   {"calibration": "hold-out", "holdout_fraction": cfg.holdout,
                                    "holdout_file_list_sha256": file_list_sha256(images.hold_recs, ds.root)})
    calibration.update(_light_calibration(cfg, scores, entries))
    calibration["normalize_chosen_from_data"] = plan.light is not None
    calibration["light_span"] = plan.light.span if plan.light is not None else None
    calibration["light_copies"] = light_copies_for(cfg, spec, plan.method)
    calibration["light_copies_chosen_from_data"] = cfg.augment_light is None
    calibration["encoded_copies"] = ({"jpeg_quality": list(ENCODED_QUALITY), "noise_sigma": list(ENCODED_NOISE)}
                                     if encoded_copies_for(cfg, plan.method) else None)
    calibration["encoded_copies_chosen_from_data"] = cfg.augment_jpeg is None
    skipped = len(ds.train) - len(images.train_recs) - n_hold_scored - len(outliers)
    training = training.model_copy(update={"holdout": len(images.hold_recs), "params": _training_params(
        cfg, final, calibration, skipped, outliers, verification)})
    manifest = export.build_manifest(tmp, cfg.method, final.spec, final.trained.outputs, entries, default, training,
                                     final.quant, runtimes=runtimes)
    # what good images look like at full size, for the daemon's input health (edged.input_health)
    manifest = manifest.model_copy(update={"input_stats": input_check.record_statistics(
        images.train_recs, final.spec.bit_depth, tolerated_light(cfg, final.spec), cfg.jpeg_quality or 0),
        "reference_parts": reference_parts(
            tmp, reference, manifest, {p: s["reference"] for p, s in scores.items()} if oof is not None else None)})
    write_manifest(tmp, manifest)  # complete: written last, the bundle is whole from here on
    return manifest, parity


REFERENCE_PARTS = 4  # good parts the station scores again at load (edged.detector): ~40 ms, ~100 KB


def reference_parts(folder: Path, images: list[np.ndarray], manifest: Manifest,
                    scored: dict[str, np.ndarray] | None = None) -> ReferenceParts | None:
    """Write a few good training parts (as `Detector` takes them) into the bundle with the score each precision
    gives them here, for the station to score them again at load; None when there is nothing to keep.
    `scored`: the scores `Detector` already gave `images`, per precision (None: scored now)."""
    parts = images[:REFERENCE_PARTS]
    if not parts or any(p.shape != parts[0].shape or p.dtype != np.uint8 for p in parts):
        return None
    path = folder / REFERENCE_PARTS_FILE
    np.savez_compressed(path, images=np.stack(parts))
    scores = {precision: tuple(float(s) for s in (scored[precision] if scored is not None else
                                                 _score(folder, precision, parts, False, "", keep_maps=False)[0]
                                                 )[:len(parts)])
              for precision in manifest.models}
    return ReferenceParts(file=path.name, sha256=sha256_file(path), scores=scores)


def _light_calibration(cfg: FitConfig, scores: dict[str, dict[str, Any]],
                       entries: dict[export.Precision, export.Entry]) -> dict[str, Any]:
    """With `calibrate_light`: the threshold each model would have had from the calibration scores as stored
    (the same rule), so the manifest says how far the light corners raised it; {} otherwise."""
    if not cfg.calibrate_light:
        return {}
    out: dict[str, float] = {}
    for precision, (_, threshold, _) in entries.items():
        stored = calibrate.image_threshold(scores[precision]["stored"], cfg.percentile, cfg.target_frr).value
        out[precision] = stored
        log.info("calibration under light x%s: %s threshold %.6g (%.6g from the images as stored)",
                 "/x".join(f"{g:g}" for g in LIGHT_CORNERS), precision, threshold.value, stored)
    return {"threshold_as_stored": out}


def verify_on_defects(scores: np.ndarray, records: list[Record], threshold: float,
                      calibration_scores: np.ndarray | None = None, root: Path | None = None,
                      ) -> dict[str, Any] | None:
    """What the bundle's own threshold does on the data's labelled test images (`test/<defect>`): recall per
    defect type and false rejects among the test's good parts. Verification only: fit chooses nothing
    on these images (`--choose` does, and then says so), so the figures are honest estimates.

    ``calibration_scores`` (the out-of-fold or hold-out good scores) against the defects' scores give
    ``crossval_auroc``: a ranking figure that uses no test good part, the one `--choose` compares."""
    if not records or len(scores) != len(records) or all(r.is_good for r in records):
        return None
    s = np.asarray(scores, dtype=np.float64)
    rejected = s > threshold
    labels = sorted({r.label for r in records if not r.is_good})
    good = np.array([r.is_good for r in records])
    per_defect = {}
    for label in labels:
        sel = np.array([r.label == label for r in records])
        per_defect[label] = {"n": int(sel.sum()), "recall": float(np.mean(rejected[sel]))}
    out: dict[str, Any] = {
        "threshold": threshold, "n_defective": int((~good).sum()), "n_good": int(good.sum()),
        "recall": float(np.mean(rejected[~good])),
        "frr": float(np.mean(rejected[good])) if good.any() else None,
        "image_auroc": image_auroc((~good).astype(int), s),
        "per_defect": per_defect, "chosen_on_these_images": False,
        "defect_files_sha256": file_list_sha256([r for r in records if not r.is_good], root or Path("/")),
    }
    if calibration_scores is not None and len(calibration_scores):
        d = s[~good]
        y = np.r_[np.zeros(len(calibration_scores)), np.ones(len(d))]
        out["crossval_auroc"] = image_auroc(y.astype(int), np.r_[np.asarray(calibration_scores, np.float64), d])
    frr = f", false rejects on the test's good parts {100 * out['frr']:.1f}%" if out["frr"] is not None else ""
    out["summary"] = (f"recall at the threshold {100 * out['recall']:.1f}% of {out['n_defective']} ("
                      + ", ".join(f"{k} {100 * v['recall']:.0f}%" for k, v in per_defect.items()) + f"){frr}")
    return out


OPENCV_CHECK_IMAGES = 8
OPENCV_TOLERANCE = 1e-3  # relative score difference allowed between cv2.dnn and ONNX Runtime (fp32)


def opencv_parity(bundle: Path, images: list[np.ndarray], ort_scores: np.ndarray) -> tuple[export.Runtime, ...]:
    """Runtimes the bundle may declare: OpenCV DNN only when it reproduces ONNX Runtime's fp32 scores."""
    if not images:
        return ("onnxruntime",)
    try:
        detector = Detector(bundle, precision="fp32", runtime="opencv")
        cv_scores = np.array([detector.infer([image])[0].score for image in images])
    except Exception as exc:  # cv2.dnn rejects many graphs, each with its own error
        log.info("OpenCV DNN cannot run this model (%s): the bundle is for ONNX Runtime only",
                 str(exc).strip().splitlines()[-1][:200])
        return ("onnxruntime",)
    ref = np.asarray(ort_scores[: len(images)], dtype=np.float64)
    err = float(np.max(np.abs(cv_scores - ref) / np.maximum(np.abs(ref), 1e-6)))
    if err <= OPENCV_TOLERANCE:
        log.info("OpenCV DNN reproduces the fp32 scores (max relative difference %.2g): runtime opencv allowed", err)
        return ("onnxruntime", "opencv")
    log.info("OpenCV DNN gives different scores (max relative difference %.2g): the bundle is for ONNX Runtime "
             "only", err)
    return ("onnxruntime",)


def _parity(scores: dict[str, dict[str, Any]], test_recs: list[Record], quantized: bool, cfg: FitConfig,
            ) -> tuple[dict[str, Any], export.Precision]:
    """int8 vs fp32 on the same images, and which model the manifest makes the default."""
    if not quantized:
        return {"decision": "fp32: no separate int8 model"}, "fp32"
    f, q = scores["fp32"], scores["int8"]
    parity: dict[str, Any] = {
        "hold_out": {"n": len(f["hold"]), **_correlation(f["hold"], q["hold"])},
        "auroc_tolerance": cfg.int8_auroc_tolerance,
    }
    labels = np.asarray([0 if r.is_good else 1 for r in test_recs])
    if len(labels):
        auroc_f, auroc_q = image_auroc(labels, f["test"]), image_auroc(labels, q["test"])
        parity["test"] = {"n": len(labels), **_correlation(f["test"], q["test"]),
                          "auroc_fp32": auroc_f, "auroc_int8": auroc_q,
                          "auroc_change": None if auroc_f is None or auroc_q is None else auroc_q - auroc_f}
    basis, check = "test split", parity.get("test")
    if (check is None or check["auroc_fp32"] is None) and len(f.get("synthetic", [])):
        # good images vs the same images with synthetic blemishes, scored by the same model
        fr, qr = f.get("reference", f["hold"]), q.get("reference", q["hold"])
        y = np.r_[np.zeros(len(fr)), np.ones(len(f["synthetic"]))]
        fs, qs = np.r_[fr, f["synthetic"]], np.r_[qr, q["synthetic"]]
        auroc_f, auroc_q = image_auroc(y, fs), image_auroc(y, qs)
        check = parity["synthetic"] = {
            "n": len(y), **_correlation(fs, qs), "auroc_fp32": auroc_f, "auroc_int8": auroc_q,
            "auroc_change": None if auroc_f is None or auroc_q is None else auroc_q - auroc_f,
            "what": "hold-out images vs the same images with synthetic dark/bright blemishes (no defective test "
                    "images in the data)"}
        basis = "hold-out with synthetic blemishes"
    tol = cfg.int8_auroc_tolerance
    if check is None or check["auroc_fp32"] is None or check["auroc_int8"] is None:
        parity["warning"] = "no images to compare int8 with fp32 on: the manifest keeps fp32 as the default"
    else:
        loss = check["auroc_fp32"] - check["auroc_int8"]
        r = check["pearson"]
        if loss > tol:
            parity["warning"] = (f"int8 loses {loss:.3f} image AUROC on the {basis} ({check['auroc_fp32']:.3f} -> "
                                 f"{check['auroc_int8']:.3f}), more than the tolerance {tol}: the manifest keeps fp32 "
                                 f"as the default")
        elif r is not None and r < INT8_MIN_CORRELATION:
            parity["warning"] = (f"int8 scores follow fp32 only loosely on the {basis} (correlation {r:.3f}, below "
                                 f"{INT8_MIN_CORRELATION}): the same AUROC by chance, not the same model; the "
                                 f"manifest keeps fp32 as the default")
        else:
            parity["decision"] = (f"int8: image AUROC on the {basis} {check['auroc_fp32']:.4f} (fp32) -> "
                                  f"{check['auroc_int8']:.4f} (int8), loss within the tolerance {tol}"
                                  + (f"; score correlation {r:.3f}" if r is not None else ""))
    if parity.get("warning"):
        parity["decision"] = "fp32: " + parity["warning"]
        bar = "!" * 100
        log.warning("\n%s\n!!! %s\n%s", bar, parity["warning"], bar)
        return parity, "fp32"
    log.info("int8 parity: %s", parity["decision"])
    return parity, "int8"
