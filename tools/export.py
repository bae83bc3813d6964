"""The bundle's manifest: identity, hashes, thresholds, provenance and library versions.

Everything the daemon and an auditor need to trust a bundle: which file is which precision and its
sha256, how each threshold was set, what data the model saw (count and a hash of the file list, not the
images), and which versions of onnx/onnxruntime/torch/scikit-learn produced it.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import logging
import sys
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from edged.bundle import (
    InputSpec,
    Manifest,
    ModelFile,
    OutputSpec,
    Threshold,
    TrainingSummary,
    sha256_file,
)

log = logging.getLogger(__name__)

FP32_FILE = "model.fp32.onnx"
INT8_FILE = "model.onnx"

Precision = Literal["int8", "fp32"]  # the keys of a manifest's models (edged.bundle.ModelFile.precision)
PRECISIONS: tuple[Precision, ...] = ("fp32", "int8")
Runtime = Literal["onnxruntime", "opencv"]  # what a manifest's runtimes may name
# A model entry as fit assembles it: (file name in the bundle, image threshold, map threshold or None)
Entry = tuple[str, Threshold, float | None]


def utc_now() -> datetime:
    """Now in UTC to the second: manifest times (``created``, history's ``replaced``) carry no microseconds."""
    return datetime.now(timezone.utc).replace(microsecond=0)


def make_bundle_id(method: str, created: datetime, fp32_sha256: str) -> str:
    """``<method>-<UTC yyyymmddHHMMSS>-<first 8 hex of the fp32 model's sha256>``."""
    return f"{method}-{created.strftime('%Y%m%d%H%M%S')}-{fp32_sha256[:8]}"


def versions() -> dict[str, str]:
    """Versions of the libraries that shaped the model (torch only when it was imported)."""
    out = {"python": sys.version.split()[0]}
    for dist in ("onnx", "onnxruntime", "numpy", "opencv-python-headless", "scikit-learn", "scikit-image",
                 "skl2onnx"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    if "torch" in sys.modules:
        out["torch"] = str(sys.modules["torch"].__version__)
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        out["edged"] = importlib.metadata.version("edged")
    return out


def _model_entry(bundle_dir: Path, file: str, precision: Precision, threshold: Threshold,
                 map_threshold: float | None) -> ModelFile:
    return ModelFile(file=file, sha256=sha256_file(bundle_dir / file), precision=precision,
                     threshold=threshold, map_threshold=map_threshold)


def build_manifest(bundle_dir: Path, method: str, spec: InputSpec, outputs: OutputSpec,
                   entries: Mapping[Precision, Entry], default: Precision,
                   training: TrainingSummary, quantization: dict[str, Any], created: datetime | None = None,
                   runtimes: tuple[Runtime, ...] = ("onnxruntime",), complete: bool = True) -> Manifest:
    """Hash the ONNX files and assemble the manifest. ``entries``: precision -> (file, threshold, map thr)."""
    created = created or utc_now()
    models = {p: _model_entry(bundle_dir, f, p, thr, mthr) for p, (f, thr, mthr) in entries.items()}
    bundle_id = make_bundle_id(method, created, models["fp32"].sha256)
    return Manifest(
        bundle_id=bundle_id, method=method, created=created.strftime("%Y-%m-%dT%H:%M:%SZ"), input=spec,
        outputs=outputs, models=models, default=default,
        training=training, quantization=jsonable(quantization), versions=versions(),
        runtimes=runtimes, complete=complete,
    )


def jsonable(value: Any) -> Any:
    """numpy scalars and paths -> plain JSON types (the manifest is JSON)."""
    import numpy as np

    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return value.as_posix()
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
