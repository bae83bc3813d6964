"""`edged-train verify BUNDLE`: which runtimes give this bundle's scores, and how fast each runs here.

Each installed runtime (edged.runtimes: ONNX Runtime, OpenVINO, OpenCV DNN for fp32) runs each of the
bundle's files on the same prepared images (the daemon's own preprocessing, `Detector.prepare`). The
reference of a file is ONNX Runtime running it: its scores set that file's threshold. A runtime passes
when no score differs from the reference by more than PARITY_TOLERANCE of the threshold (1%: only a part
within 1% of the threshold could change verdict). The result, with the latency measured here (batch 1,
one thread, median and p99) and the CPU's model string, goes into the manifest's `verified` list; the
daemon's `model.runtime: auto` picks among those that passed, and an explicit choice of one that failed
is refused. Only manifest.json is rewritten (atomically): the model files and their sha256 stay as they
are, so the bundle stays verifiable and its id and thresholds unchanged.

Images: `--images DIR` (good images of the line: a folder, or an MVTec folder's train/good), which fit
passes its training data for; without, a documented stand-in of STAND_IN_IMAGES synthetic frames at the
model's input size (black, grey levels, gradients, seeded noise, noise with bright spots), which exercises
every layer but not the score range of real parts: verify with real images where there are any.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edged.bundle import BundleError, Manifest, RuntimeCheck, load_manifest, resolve_model, write_manifest
from edged.detector import Detector
from edged.runtimes import registry
from edged.runtimes.base import Backend
from edged.runtimes.choice import cpu_model

log = logging.getLogger("edged-train")

PARITY_TOLERANCE = 0.01  # max |score - ONNX Runtime's score| as a fraction of |threshold|
N_IMAGES = 16  # images scored per runtime and precision
STAND_IN_IMAGES = 16
WARMUP_RUNS = 10
TIMING_ROUNDS = 10  # interleaved rounds at most (a shared CPU is noisy: every runtime sees the same bursts)
MIN_ROUNDS = 3
RUNS_PER_ROUND = 10
TIMING_BUDGET_S = 1.0  # per precision: more rounds only while within it (fit runs verify on every bundle)


@dataclass(frozen=True)
class Measured:
    """One runtime's scores on the images and its timing, before it is judged against the reference."""

    runtime: str
    scores: np.ndarray | None
    times_s: list[float]
    error: str = ""


def stand_in_images(manifest: Manifest, n: int = STAND_IN_IMAGES, seed: int = 0) -> list[np.ndarray]:
    """Synthetic frames at the model's input size, for a bundle verified without images of its line."""
    spec = manifest.input
    h, w = spec.height, spec.width
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    out: list[np.ndarray] = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            img = np.full((h, w), min(255, 32 * (i // 4) * 2), np.uint8)
        elif kind == 1:
            img = ((xx * 255 // max(w - 1, 1) + yy * 97 // max(h - 1, 1) + 16 * i) % 256).astype(np.uint8)
        else:
            img = rng.integers(0, 256 if kind == 2 else 96, (h, w), dtype=np.uint8)
            if kind == 3:
                y, x = int(rng.integers(0, h)), int(rng.integers(0, w))
                img[max(0, y - 3):y + 4, max(0, x - 3):x + 4] = 255
        out.append(img if spec.channels == 1 else np.stack([img, np.roll(img, 1, 0), np.roll(img, 1, 1)], -1))
    return out


def good_images(folder: Path, n: int = N_IMAGES) -> list[np.ndarray]:
    """Up to n good images of a dataset folder (MVTec: train/good), spread over it, as edged-train reads them."""
    from tools.dataset import load_dataset, read_image

    records = [r for r in load_dataset(folder).train if r.is_good]
    step = max(1, len(records) // n)
    images = [read_image(r.path) for r in records[::step][:n]]
    return [im for im in images if im is not None]


def _measure(name: str, backend: Backend | None, rows: np.ndarray, error: str) -> Measured:
    if backend is None:
        return Measured(name, None, [], error)
    try:
        scores = np.array([backend.run(np.ascontiguousarray(r[None]))[0][0] for r in rows], np.float64)
    except Exception as exc:  # each runtime raises its own types for a graph it cannot run
        return Measured(name, None, [], _last_line(exc))
    return Measured(name, scores, [])


def _time(measured: list[Measured], backends: dict[str, Backend], row: np.ndarray) -> None:
    """Latency of each runtime that ran, in interleaved rounds, batch 1: 30 to 100 runs each."""
    batch = np.ascontiguousarray(row[None], dtype=np.float32)
    running = [m for m in measured if m.scores is not None]
    for m in running:
        for _ in range(WARMUP_RUNS):
            backends[m.runtime].run(batch)
    started = time.perf_counter()
    for done in range(TIMING_ROUNDS):
        if done >= MIN_ROUNDS and time.perf_counter() - started > TIMING_BUDGET_S:
            break
        for m in running:
            backend = backends[m.runtime]
            for _ in range(RUNS_PER_ROUND):
                start = time.perf_counter()
                backend.run(batch)
                m.times_s.append(time.perf_counter() - start)


def _open(bundle: Path, manifest: Manifest, name: str, precision: str) -> tuple[Backend | None, str]:
    try:
        path = resolve_model(bundle, manifest, precision)
        return registry.open_backend(name, path, manifest, ("cpu",), 1), ""
    except Exception as exc:  # BundleError, or a runtime's own error for a graph it cannot load
        return None, _last_line(exc)


def check_precision(bundle: Path, manifest: Manifest, precision: str, images: Sequence[np.ndarray],
                    what: str, runtimes: Sequence[str]) -> list[RuntimeCheck]:
    """Every runtime in `runtimes` on the `precision` file, judged against ONNX Runtime on the same file."""
    reference = Detector(bundle, precision=precision, runtime=registry.REFERENCE, intra_op_threads=1)
    rows = np.stack([reference.prepare(im) for im in images]).astype(np.float32)
    threshold = max(abs(reference.threshold), 1e-12)
    backends: dict[str, Backend] = {}
    measured: list[Measured] = []
    for name in runtimes:
        if name in registry.FP32_ONLY and precision != "fp32":
            continue
        backend, error = _open(bundle, manifest, name, precision)
        if backend is not None:
            backends[name] = backend
        measured.append(_measure(name, backend, rows, error))
    _time(measured, backends, rows[0])
    ref = next(m for m in measured if m.runtime == registry.REFERENCE)
    if ref.scores is None:
        raise BundleError(f"model bundle {bundle}: ONNX Runtime cannot run the {precision} model: {ref.error}")
    when = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    cpu = cpu_model()
    out = []
    for m in measured:
        diff = None if m.scores is None else float(np.max(np.abs(m.scores - ref.scores)) / threshold)
        latency = None if not m.times_s else (round(1e3 * float(np.median(m.times_s)), 4),
                                              round(1e3 * float(np.percentile(m.times_s, 99)), 4))
        out.append(RuntimeCheck(
            runtime=m.runtime, precision=precision, passed=diff is not None and diff <= PARITY_TOLERANCE,
            max_diff=diff, tolerance=PARITY_TOLERANCE, n_images=len(images), images=what, latency_ms=latency,
            cpu=cpu, version=registry.version(m.runtime), checked_at=when, error=m.error))
    return out


def verify_bundle(bundle: str | Path, images: Sequence[np.ndarray] | None = None, what: str = "",
                  runtimes: Sequence[str] | None = None) -> Manifest:
    """Check every installed runtime on every precision of the bundle and record it in its manifest."""
    bundle = Path(bundle)
    manifest = load_manifest(bundle)
    if not images:
        images, what = stand_in_images(manifest), f"stand-in: {STAND_IN_IMAGES} synthetic frames (no images given)"
    names = [n for n in (runtimes or registry.NAMES) if registry.installed(n)]
    if registry.REFERENCE not in names:
        names.insert(0, registry.REFERENCE)  # the reference of every check; missing: Detector says so
    checks = [c for p in manifest.models for c in check_precision(bundle, manifest, p, images, what, names)]
    done = {(c.runtime, c.precision) for c in checks}
    kept = [c for c in manifest.verified if (c.runtime, c.precision) not in done]  # other runtimes' earlier checks
    verified = tuple(sorted([*kept, *checks], key=lambda c: (registry.NAMES.index(c.runtime), c.precision)))
    passed_fp32 = {c.runtime for c in verified if c.precision == "fp32" and c.passed} | {registry.REFERENCE}
    updated = manifest.model_copy(update={
        "verified": verified, "runtimes": tuple(n for n in registry.NAMES if n in passed_fp32)})
    Manifest.model_validate(updated.model_dump())  # the same checks as a load, before it is written
    try:
        write_manifest(bundle, updated)
    except OSError as exc:  # an installed bundle the user may not write
        raise BundleError(f"model bundle {bundle}: cannot write its manifest: {exc}") from None
    for c in checks:
        log.info("verify %s: %s", bundle, describe(c))
    return updated


def describe(c: RuntimeCheck) -> str:
    """One line per check, for the log and the CLI."""
    verdict = "ok" if c.passed else "FAILED"
    diff = f"max diff {100 * c.max_diff:.3g}% of threshold" if c.max_diff is not None else f"error: {c.error}"
    speed = f", {c.latency_ms[0]:.3f} ms median / {c.latency_ms[1]:.3f} ms p99" if c.latency_ms else ""
    return f"{c.runtime:<11} {c.precision}: {verdict} ({diff}, tolerance {100 * c.tolerance:g}%{speed})"


def _last_line(exc: BaseException) -> str:
    """The error as one line (OpenCV's end in a lone '>'), short enough for a manifest field."""
    text = " ".join(line.strip() for line in str(exc).strip().splitlines() if line.strip())
    return text[-300:] if text else type(exc).__name__
