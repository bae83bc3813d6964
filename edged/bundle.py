"""The model bundle: the directory `tools/` writes and the daemon loads.

Layout::

    BUNDLE/
      manifest.json      # this module's `Manifest`
      model.onnx         # int8 (QDQ), what the daemon runs by default
      model.fp32.onnx    # the same graph in fp32

Every ONNX graph takes one input (``manifest.input.name``): a float32 NCHW image batch prepared as
``manifest.input`` says (see ``edged.preprocess``), or for ``kind: features`` a float32 [N, F] matrix of
hand-made features (see ``edged.features``). It returns ``outputs.score`` ([N], higher = more
anomalous) and, when ``outputs.map`` is set, a per-pixel anomaly map ([N, 1, H, W] or [N, H, W] at the
input size). Verdict: ``score > threshold.value``.

The manifest is checked once when the daemon starts: a missing file, a bad hash or a field out of
range is a ``BundleError`` (exit code 2), never a crash later.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from edged import __version__
from edged.safetext import escape

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"

RuntimeName = Literal["onnxruntime", "openvino", "opencv"]  # the runtimes this edged can run a model in
RUNTIME_NAMES: tuple[str, ...] = get_args(RuntimeName)

log = logging.getLogger(__name__)


class BundleError(Exception):
    """A model bundle that cannot be used; the message says which file and why."""


class _Strict(BaseModel):
    """A section that decides how a frame is scored: a key this edged does not know is refused, because
    ignoring it (a newer normalization, a resize rule) would score frames unlike the model was trained."""

    # every float field refuses NaN and infinity: a NaN threshold rejects nothing, a NaN scale blinds the model
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class _Record(BaseModel):
    """A section that records what was done (training, checks, statistics): a key a newer edged-train added is
    dropped, so a bundle from a newer edged-train still loads here as long as its scoring sections are known."""

    model_config = ConfigDict(extra="ignore", frozen=True, allow_inf_nan=False)


class InputSpec(_Strict):
    """How a camera frame becomes the model input (the same code runs in training and in the daemon)."""

    name: str = "input"
    kind: Literal["image", "features"] = "image"
    width: int = Field(gt=0, le=4096)
    height: int = Field(gt=0, le=4096)
    channels: Literal[1, 3] = 1
    color_order: Literal["gray", "rgb", "bgr"] = "gray"
    scale: float = Field(1.0 / 255.0, gt=0, le=1e6)  # uint8 pixel * scale, then (x - mean) / std per channel
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    features: str | None = None  # for kind == "features": name of the feature extractor in edged.features
    # significant bits of 16-bit frames (a 12-bit camera writes 0..4095); see edged.preprocess.to_uint8
    bit_depth: int = Field(16, ge=8, le=16)
    # per-image photometric normalization of the model-sized image (edged.preprocess.normalize_light):
    # "mean_std" maps each image's mean and standard deviation to fixed values, so a lamp's gain and offset
    # change nothing the model sees; "none" (the default, and every bundle before it) leaves pixels as they are
    normalize: Literal["none", "mean_std"] = "none"
    # how a larger frame is shrunk to width x height (edged.preprocess.resize): "area" (OpenCV's INTER_AREA in one
    # step: every bundle before the field) or "halve_area" (exact 2x2 means while the frame is at least twice the
    # model's size, then INTER_AREA: as anti-aliased, about a third of the CPU at 640x480; what fit writes now)
    resize: Literal["area", "halve_area"] = "area"

    @model_validator(mode="after")
    def _consistent(self) -> InputSpec:
        if self.channels == 1 and self.color_order != "gray":
            raise ValueError("channels 1 needs color_order 'gray'")
        if self.channels == 3 and self.color_order == "gray":
            raise ValueError("channels 3 needs color_order 'rgb' or 'bgr'")
        for label, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, self.channels):
                raise ValueError(f"{label} needs 1 or {self.channels} values")
        if any(s == 0 for s in self.std):
            raise ValueError("std must not be 0")
        if self.kind == "features" and not self.features:
            raise ValueError("kind 'features' needs the name of the feature extractor in 'features'")
        return self


class OutputSpec(_Strict):
    """The ONNX output names: the image score, and the anomaly map if the model has one (no map: no regions)."""

    score: str = "score"
    map: str | None = None  # name of the anomaly map output, or None when the model gives none


class Threshold(_Strict):
    """The image-score threshold and how it was set, so a quality engineer can audit it."""

    value: float
    method: Literal["percentile", "target_frr", "manual"] = "percentile"
    percentile: float | None = Field(None, ge=0, le=100)
    target_frr: float | None = Field(None, ge=0, le=1)
    n_images: int = Field(0, ge=0)
    expected_frr: float | None = Field(None, ge=0, le=1)  # false-reject rate of the calibration images at this value
    # 95% interval (Clopper-Pearson) of the false-reject rate on new good parts: what n images can promise
    frr_interval: tuple[float, float] | None = None
    source: str = ""  # what images it was derived from (e.g. "held-out train/good (15%)")

    @field_validator("frr_interval")
    @classmethod
    def _rates(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0.0 <= v[0] <= v[1] <= 1.0:
            raise ValueError("must be [low, high] with 0 <= low <= high <= 1")
        return v


def bundle_file_name(v: str) -> str:
    """A path relative to the bundle folder, never leaving it (checked again, symlinks followed, at load)."""
    p = PurePosixPath(v.replace("\\", "/"))
    if not v or "\x00" in v or p.is_absolute() or ".." in p.parts or PureWindowsPath(v).drive:
        raise ValueError(f"{v!r} must be a file name inside the bundle folder (no absolute path, no '..')")
    return v


class ModelFile(_Strict):
    """One ONNX file of the bundle, calibrated on its own: int8 scores differ slightly from fp32."""

    file: str
    sha256: str
    precision: Literal["int8", "fp32"]
    threshold: Threshold
    map_threshold: float | None = None  # per-pixel threshold for defect regions; None: no regions

    @field_validator("file")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        return bundle_file_name(v)


class TrainingSummary(_Record):
    """How the bundle was trained (data, image counts, method options), for audit; edged never acts on it."""

    count: int = 0  # images trained on
    holdout: int = 0  # good images held out for calibration
    file_list_sha256: str = ""
    data: str = ""  # the dataset path as given to fit
    params: dict[str, object] = Field(default_factory=dict)  # method options: epochs, loss, ...


class InputStatistics(_Record):
    """What the training images looked like, for the daemon's input-health checks (edged.input_health).

    Ranges are [lowest, highest] over the good training images, measured exactly as the daemon measures
    frames (on a `stats_size` grey copy); the daemon adds the tolerances of its `input_health:` section.
    `reference_low`/`reference_high` are per-pixel bounds of the training images at `reference_size`
    (row-major, grey levels, each image first scaled to mean `reference_mean`) for the "differs grossly"
    fraction. A bundle without this section still loads; then only the checks that need no reference run.
    """

    n_images: int = Field(ge=1)
    stats_size: tuple[int, int]  # (width, height) of the grey copy the statistics are measured on
    mean: tuple[float, float] = Field(description="brightness mean, grey levels 0..255")
    spread: tuple[float, float] = Field(description="brightness standard deviation, grey levels")
    sharpness: tuple[float, float] = Field(description="variance of the Laplacian at mean 128, grey levels^2")
    noise: tuple[float, float] | None = Field(None, description="median absolute Laplacian at mean 128, grey "
                                                                "levels (None: a bundle fitted before it was kept)")
    clipped_low: tuple[float, float] = Field(description="fraction of pixels <= 2")
    clipped_high: tuple[float, float] = Field(description="fraction of pixels >= 253")
    differs: tuple[float, float] = Field(description="fraction of the reference grid outside its bounds")
    reference_size: tuple[int, int]
    reference_mean: float = Field(gt=0, le=255)
    reference_low: tuple[int, ...]
    reference_high: tuple[int, ...]
    light_gain: tuple[float, float] = Field(
        (1.0, 1.0), description="the lamp gains [darkest, brightest] the model was made to tolerate: its graph "
                                "normalizes each image's light, or its threshold was calibrated under them; the "
                                "brightness bounds stretch by them ((1, 1): a bundle that tolerates only the "
                                "training images' light, and every bundle before the field)")
    noise_jpeg_quality: int | None = Field(None, ge=1, le=100, description="noise spans the training images as "
                                           "stored and through JPEG of this quality, the one the threshold was "
                                           "calibrated through, so that much of a camera's encoding is not noisy "
                                           "(None: as stored only)")

    @model_validator(mode="after")
    def _consistent(self) -> InputStatistics:
        cells = self.reference_size[0] * self.reference_size[1]
        if not 0 < cells <= 4096 or len(self.reference_low) != cells or len(self.reference_high) != cells:
            raise ValueError(f"reference_low/high need reference_size[0] * [1] values (1..4096), got "
                             f"{len(self.reference_low)}/{len(self.reference_high)} for {self.reference_size}")
        if min(self.stats_size) < 8 or max(self.stats_size) > 1024:
            raise ValueError("stats_size must be between 8 and 1024 pixels per side")
        for name in ("mean", "spread", "sharpness", "clipped_low", "clipped_high", "differs"):
            low, high = getattr(self, name)
            if not 0 <= low <= high:
                raise ValueError(f"{name} must be [low, high] with 0 <= low <= high")
        if not 0 < self.light_gain[0] <= 1 <= self.light_gain[1] <= 10:
            raise ValueError("light_gain must be [darkest, brightest] with 0 < darkest <= 1 <= brightest <= 10")
        return self


class RuntimeCheck(_Record):
    """One runtime x precision as `edged-train verify` found it on this bundle: score parity and speed.

    The reference of a precision is ONNX Runtime running the same file, whose scores set that file's
    threshold; `max_diff` is the largest |score - reference| over the images as a fraction of the threshold,
    so `passed` (max_diff <= tolerance) means no part further than that from the threshold changes verdict.
    """

    runtime: RuntimeName
    precision: Literal["int8", "fp32"]
    passed: bool
    max_diff: float | None = Field(None, ge=0)  # None: it could not run (see error)
    tolerance: float = Field(gt=0, le=1)
    n_images: int = Field(0, ge=0)
    images: str = ""  # what was scored (calibration images, or the stand-in)
    latency_ms: tuple[float, float] | None = None  # median, p99: batch 1, 1 thread, after warm-up
    cpu: str = ""  # the CPU the latency was measured on (/proc/cpuinfo model name)
    version: str = ""  # the runtime library's version
    checked_at: str = ""  # ISO 8601, UTC
    error: str = ""  # why it could not load or run, when it could not


REFERENCE_PARTS_FILE = "reference_parts.npz"


class ReferenceParts(_Strict):
    """A few good training parts as the daemon's `Detector` takes them, with the scores each precision gave them at
    fit under `runtime`: the station scores them again at load, so a model that scores differently on this CPU or
    with this runtime's build (int8 kernels that saturate without VNNI, a changed library) is caught before the
    first part, not read off the reject rate weeks later."""

    file: str = REFERENCE_PARTS_FILE  # uint8 images, N x H x W [x C], key "images"
    sha256: str
    runtime: RuntimeName = "onnxruntime"
    scores: dict[Literal["int8", "fp32"], tuple[float, ...]]
    # largest difference allowed, as a fraction of the model's threshold (7-bit weights score alike everywhere)
    tolerance: float = Field(0.02, gt=0, le=1)

    @field_validator("file")
    @classmethod
    def _plain_name(cls, v: str) -> str:
        return bundle_file_name(v)


class Manifest(_Strict):
    """A bundle's manifest.json: what its models take and give, and their thresholds. Validated on load; a
    format_version this edged does not read is refused."""

    format_version: int = FORMAT_VERSION
    bundle_id: str
    method: str  # "classic", "cae", "cae-reference", "patchcore", ...
    created: str  # ISO 8601, UTC
    input: InputSpec
    outputs: OutputSpec = OutputSpec()
    models: dict[Literal["int8", "fp32"], ModelFile]
    default: Literal["int8", "fp32"] = "int8"
    # runtimes the fp32 model was checked to give the same scores in (tools/fit.py); cv2.dnn imports some
    # graphs it then runs wrongly, so OpenCV is allowed only where that check passed
    # (edged-train verify rewrites it with every runtime whose fp32 check passed, openvino included)
    runtimes: tuple[RuntimeName, ...] = ("onnxruntime",)
    # per runtime and precision: parity with ONNX Runtime and measured latency (edged-train verify); empty in
    # bundles before it, where `runtimes` alone decides and model.runtime: auto runs ONNX Runtime
    verified: tuple[RuntimeCheck, ...] = ()
    training: TrainingSummary = TrainingSummary()
    quantization: dict[str, object] = Field(default_factory=dict)  # parity figures, what was quantized
    versions: dict[str, str] = Field(default_factory=dict)  # onnx, onnxruntime, torch, ...
    # False while edged-train is still writing the bundle (placeholder thresholds): never loaded to run
    complete: bool = True
    history: list[dict[str, object]] = Field(default_factory=list)  # earlier ids/thresholds (re-calibrations)
    # ranges of the training images for input health; None in bundles fitted before it (still loaded)
    input_stats: InputStatistics | None = None
    # good parts scored again at load (edged.detector); None in bundles fitted before it
    reference_parts: ReferenceParts | None = None

    @model_validator(mode="before")
    @classmethod
    def _known_runtimes_only(cls, raw: object) -> object:
        """Drop runtimes (and their checks) a newer edged-train verified that this edged cannot run anyway,
        logged once per load so that a station that never uses a verified runtime can be told why."""
        if not isinstance(raw, dict):
            return raw
        raw = dict(raw)
        if isinstance(raw.get("runtimes"), list):
            unknown = [r for r in raw["runtimes"] if r not in RUNTIME_NAMES]
            if unknown:
                log.info("bundle lists runtimes this edged does not know, ignored: %s (update edged to use them)",
                         ", ".join(escape(r, 40) for r in unknown[:8]))
            raw["runtimes"] = [r for r in raw["runtimes"] if r in RUNTIME_NAMES]
        if isinstance(raw.get("verified"), list):
            raw["verified"] = [c for c in raw["verified"]
                               if not isinstance(c, dict) or c.get("runtime") in RUNTIME_NAMES]
        return raw

    @model_validator(mode="after")
    def _has_default(self) -> Manifest:
        if self.format_version != FORMAT_VERSION:
            raise ValueError(f"format_version {self.format_version} is not supported (this edged reads "
                             f"{FORMAT_VERSION})")
        if self.default not in self.models:
            raise ValueError(f"default model {self.default!r} is not listed in models")
        if self.input.kind == "image" and self.outputs.map is None:
            pass  # an image model without a map is allowed: regions are then empty
        return self

    def check(self, runtime: str, precision: str) -> RuntimeCheck | None:
        """The verification record of `runtime` running the `precision` file, if `edged-train verify` made one."""
        return next((c for c in self.verified if c.runtime == runtime and c.precision == precision), None)

    def model(self, precision: str | None = None) -> ModelFile:
        """The model file for `precision` (None: the bundle's default); raises BundleError when the bundle has none."""
        key = precision or self.default
        if key not in self.models:
            raise BundleError(f"bundle {self.bundle_id} has no {key} model (has: {', '.join(self.models)})")
        return self.models[key]


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (model files are large)."""
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


_UNFINISHED_ALLOWED: set[Path] = set()


@contextlib.contextmanager
def unfinished_allowed(bundle_dir: str | Path) -> Iterator[None]:
    """Let edged-train score the bundle it is still writing (``complete: false``); nothing else may load one."""
    key = Path(bundle_dir).resolve()
    _UNFINISHED_ALLOWED.add(key)
    try:
        yield
    finally:
        _UNFINISHED_ALLOWED.discard(key)


def inside_bundle(bundle_dir: str | Path, name: str) -> Path:
    """BUNDLE/name, refused unless it stays inside the bundle folder once symlinks are followed.

    The bundle folder itself may be a link (models/current -> models/line1-v3); what is in it may not
    point elsewhere: a manifest or model linked to another folder is not the file that was verified.
    """
    root = Path(bundle_dir).resolve()
    path = Path(bundle_dir) / name
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as exc:  # a symlink loop
        raise BundleError(f"model bundle {bundle_dir}: {name}: cannot resolve the path: {exc}") from None
    if real != root and root not in real.parents:
        raise BundleError(f"model bundle {bundle_dir}: {name} points outside the bundle folder (to {real}): "
                          "refused; copy the file into the bundle")
    return real


def load_manifest(bundle_dir: str | Path) -> Manifest:
    """Read and validate BUNDLE/manifest.json (no ONNX file is opened); an unfinished bundle is refused."""
    if not Path(bundle_dir).is_dir():
        raise BundleError(f"model bundle {bundle_dir}: not a directory")
    path = inside_bundle(bundle_dir, MANIFEST_NAME)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"model bundle {bundle_dir}: no {MANIFEST_NAME}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError(f"model bundle {bundle_dir}: cannot read {MANIFEST_NAME}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise BundleError(f"model bundle {bundle_dir}: {MANIFEST_NAME} is not valid JSON: {exc}") from None
    try:
        manifest = Manifest.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        why = first["msg"]
        if first["type"] == "extra_forbidden":  # a scoring key from a newer edged-train (see _Strict)
            why = (f"unknown to this edged ({__version__}): the bundle was written by a newer edged-train and "
                   f"scores frames in a way this edged cannot; update edged on this station")
        raise BundleError(f"model bundle {bundle_dir}: {MANIFEST_NAME}: {where}: {why}") from None
    if not manifest.complete and Path(bundle_dir).resolve() not in _UNFINISHED_ALLOWED:
        raise BundleError(f"model bundle {bundle_dir}: unfinished (edged-train fit was interrupted or is still "
                          f"writing it; its thresholds are placeholders): fit again")
    return manifest


def resolve_model(bundle_dir: str | Path, manifest: Manifest, precision: str | None = None,
                  verify: bool = True) -> Path:
    """The path of the ONNX file to run, after checking it exists and matches its sha256."""
    entry = manifest.model(precision)
    path = inside_bundle(bundle_dir, entry.file)
    if not path.is_file():
        raise BundleError(f"model bundle {bundle_dir}: {entry.file} is missing")
    if verify:
        digest = sha256_file(path)
        if digest != entry.sha256:
            raise BundleError(f"model bundle {bundle_dir}: {entry.file} does not match its sha256 in the "
                              f"manifest (file damaged or replaced)")
    return path


def write_manifest(bundle_dir: str | Path, manifest: Manifest) -> Path:
    """Write the manifest atomically (tools/ calls this; the daemon never writes bundles)."""
    path = Path(bundle_dir) / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
