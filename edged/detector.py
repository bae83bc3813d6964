"""Runs a model bundle: frames in, (score, anomaly map) out.

One `Detector` owns one loaded model in one runtime (`edged.runtimes`: ONNX Runtime, OpenVINO or OpenCV
DNN; `auto` picks the fastest the bundle was verified under), which several threads may run at once.
`tools/` scores calibration and test images through this same class, so the threshold is set on
exactly what the daemon computes.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edged import features as feature_extractors
from edged.bundle import BundleError, Manifest, inside_bundle, load_manifest, resolve_model, sha256_file
from edged.preprocess import prepare_uint8, to_tensor
from edged.runtimes import registry
from edged.runtimes.base import Backend, RuntimeUnavailable
from edged.runtimes.choice import RuntimeChoice, choose_auto, int8_saturation_warning, refuse
from edged.runtimes.onnxruntime import PROVIDER_NAMES

log = logging.getLogger(__name__)

__all__ = ["PROVIDER_NAMES", "Detector", "Output"]

@dataclass(frozen=True, slots=True)
class Output:
    """One frame's model output: the image score (compared with the threshold) and the anomaly map, if any."""

    score: float
    anomaly_map: np.ndarray | None  # HxW float32 at the model's input size


class Detector:
    """A loaded bundle ready to score frames. Thread-safe for `infer` calls."""

    def __init__(self, bundle_dir: str | Path, precision: str | None = None, runtime: str = "onnxruntime",
                 providers: Sequence[str] = ("cpu",), intra_op_threads: int = 1, verify: bool = True) -> None:
        self.bundle_dir = Path(bundle_dir)
        self.manifest: Manifest = load_manifest(self.bundle_dir)
        self.spec = self.manifest.input
        self.threads = intra_op_threads
        self._providers = tuple(providers)
        self._verify = verify
        if self.spec.kind == "features":
            try:
                self._features = feature_extractors.get(self.spec.features or "")
            except KeyError:
                raise BundleError(f"model bundle {bundle_dir}: unknown feature extractor "
                                  f"{self.spec.features!r}") from None
        self._use(*self._open(runtime, precision))
        warnings: list[str] = []
        mismatch = self._reference_mismatch()
        if mismatch and self.precision == "int8" and precision is None and self.runtime == "onnxruntime":
            # the bundle's default, not the station's choice: the fp32 file carries the same model
            warnings.append(f"{mismatch}: running the fp32 model instead (refit on this kind of CPU for int8, or "
                            "set model.precision: fp32 to say so)")
            self._use(*self._open("onnxruntime", "fp32"))
            mismatch = self._reference_mismatch()
        if mismatch:
            raise BundleError(f"model bundle {self.bundle_dir}: {mismatch}: refused (model.precision: fp32, or refit "
                              "the bundle)")
        log.info("model %s (%s, %s) loaded from %s: runtime %s (%s), provider %s, %d intra-op thread(s)",
                 self.manifest.bundle_id, self.manifest.method, self.precision, self.model_path.name,
                 self.runtime, self.choice.describe(), self.provider, intra_op_threads)
        saturation = int8_saturation_warning(self.manifest, self.precision) if self.runtime != "opencv" else None
        self.warnings: tuple[str, ...] = (*warnings, saturation) if saturation else tuple(warnings)
        for text in self.warnings:
            log.warning("model %s: %s", self.manifest.bundle_id, text)

    def _use(self, choice: RuntimeChoice, backend: Backend) -> None:
        """Take `backend` as the model to run, after the blank-frame self-test."""
        self.choice, self._backend = choice, backend
        self.runtime = choice.runtime
        self.precision = choice.precision
        entry = self.manifest.model(self.precision)
        self.model_path = resolve_model(self.bundle_dir, self.manifest, self.precision, verify=False)  # checked at load
        self.threshold = entry.threshold.value
        self.map_threshold = entry.map_threshold
        self.provider = backend.provider
        self._self_test()

    def _reference_mismatch(self) -> str | None:
        """What differs when this station scores the bundle's reference parts (`Manifest.reference_parts`) with
        the loaded model; None within the tolerance, or when the fit did not score them under this runtime."""
        ref = self.manifest.reference_parts
        if ref is None or ref.runtime != self.runtime or self.precision not in ref.scores:
            return None
        where = f"model bundle {self.bundle_dir}: {ref.file}"
        path = inside_bundle(self.bundle_dir, ref.file)
        if not path.is_file():
            raise BundleError(f"{where} is missing")
        if self._verify and sha256_file(path) != ref.sha256:
            raise BundleError(f"{where} does not match its sha256 in the manifest (file damaged or replaced)")
        try:
            with np.load(path, allow_pickle=False) as data:
                images = np.asarray(data["images"])
        except Exception as exc:  # a zip numpy cannot read: damaged
            raise BundleError(f"{where} cannot be read ({type(exc).__name__})") from None
        expected = np.asarray(ref.scores[self.precision], dtype=np.float64)
        if images.dtype != np.uint8 or images.ndim not in (3, 4) or len(images) != len(expected) or not len(images):
            raise BundleError(f"{where} does not hold the {len(expected)} uint8 images its manifest entry names")
        got = np.asarray([o.score for o in self.infer(list(images))], dtype=np.float64)
        worst = float(np.max(np.abs(got - expected))) / max(abs(self.threshold), 1e-9)
        if worst <= ref.tolerance:  # NaN is not
            return None
        return (f"the {self.precision} model scores the bundle's {len(expected)} reference parts differently here "
                f"({self.runtime}) than at fit: largest difference {worst:.1%} of the threshold, allowed "
                f"{ref.tolerance:.0%}")

    def _load(self, runtime: str, precision: str) -> Backend:
        """The bundle's `precision` file (hash checked) opened in `runtime`."""
        path = resolve_model(self.bundle_dir, self.manifest, precision, verify=self._verify)
        return registry.open_backend(runtime, path, self.manifest, self._providers, self.threads)

    def _open(self, runtime: str, precision: str | None) -> tuple[RuntimeChoice, Backend]:
        """`auto`: the fastest verified runtime/precision here; otherwise the named one, if the bundle allows it."""
        if runtime == "auto":
            return choose_auto(self.manifest, precision, self._load, self._blank_row(), self.threads,
                               cpu_only=self._providers == ("cpu",))
        chosen = precision or self.manifest.default
        if runtime == "onnxruntime" and not registry.installed("onnxruntime"):
            log.warning("onnxruntime is not installed: running the model with OpenCV DNN instead")
            runtime = "opencv"
        if runtime in registry.FP32_ONLY and chosen == "int8":
            # cv2.dnn cannot run QDQ int8 graphs reliably; the fp32 file carries the same model.
            log.info("runtime %s: using the fp32 model of the bundle", runtime)
            chosen = "fp32"
        refuse(self.bundle_dir, self.manifest, runtime, chosen)
        try:
            backend = self._load(runtime, chosen)
        except RuntimeUnavailable as exc:  # found but does not import: as good as not installed
            raise RuntimeUnavailable(f"model bundle {self.bundle_dir}: model.runtime: {runtime}: {exc}") from None
        return RuntimeChoice(runtime, chosen, "explicit", f"{runtime}/{chosen} as model.runtime says"), backend

    def _blank_row(self) -> np.ndarray:
        """One prepared black frame: the self-test's input, and what `auto` times the candidates on."""
        spec = self.spec
        blank = np.zeros((spec.height, spec.width) if spec.channels == 1 else (spec.height, spec.width, 3), np.uint8)
        return self.prepare(blank)

    @property
    def bundle_id(self) -> str:
        """The bundle's id, recorded with every verdict so each row and message says which model decided."""
        return self.manifest.bundle_id

    def _self_test(self) -> None:
        """One inference on a black frame at load: a graph whose input does not match the manifest (size,
        channels, dtype) or that cannot run is refused now (exit 2), not by killing every worker on the
        first part. Its outputs must be finite and the map one per pixel of the input."""
        spec = self.spec
        where = f"model bundle {self.bundle_dir}: {self.model_path.name} ({self.runtime})"
        try:
            row = self._blank_row()
            self._backend.check_input(row.shape)
            scores, maps = self._backend.run(np.ascontiguousarray(row[None], dtype=np.float32))
        except BundleError as exc:
            raise BundleError(f"{where}: {exc}") from None
        except Exception as exc:  # each runtime raises its own types for a graph that cannot run
            text = str(exc).strip().splitlines()
            raise BundleError(f"{where}: a test inference on a blank {spec.width}x{spec.height} frame failed "
                              f"({text[-1] if text else type(exc).__name__}): does the manifest's input match "
                              "the model?") from None
        if scores.shape[0] != 1:
            raise BundleError(f"{where}: output {self.manifest.outputs.score!r} gave {scores.shape[0]} scores for "
                              "one frame")
        if not np.all(np.isfinite(scores)):
            raise BundleError(f"{where}: the score of a blank frame is {float(scores[0])}: the model is broken")
        if maps is not None:
            amap = maps[0]
            while amap.ndim > 2 and amap.shape[0] == 1:
                amap = amap[0]
            if amap.ndim != 2 or amap.size == 0:
                raise BundleError(f"{where}: anomaly map output {self.manifest.outputs.map!r} has shape "
                                  f"{tuple(maps.shape)}, not [N, 1, H, W] or [N, H, W]")
            if not np.all(np.isfinite(amap)):
                raise BundleError(f"{where}: the anomaly map of a blank frame is not finite: the model is broken")

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """Frame -> one model input row (CxHxW float32, or an F-vector for feature models)."""
        prepared = prepare_uint8(image, self.spec)
        if self.spec.kind == "features":
            return self._features(prepared)
        return to_tensor(prepared, self.spec)

    def infer(self, images: Sequence[np.ndarray]) -> list[Output]:
        """Score a batch of frames (BGR or gray uint8, any size)."""
        if not images:
            return []
        batch = np.stack([self.prepare(image) for image in images])
        return self.infer_tensor(batch)

    def infer_tensor(self, batch: np.ndarray) -> list[Output]:
        """Score an already prepared batch (N x model input)."""
        scores, maps = self._backend.run(np.ascontiguousarray(batch, dtype=np.float32))
        out = []
        for i in range(batch.shape[0]):
            amap = None
            if maps is not None:
                amap = maps[i]
                while amap.ndim > 2:
                    amap = amap[0]
            out.append(Output(float(scores[i]), amap))
        return out
