"""Which runtime and precision a Detector runs: the one `model.runtime` names, or with `auto` the fastest of
those the bundle was verified under on this machine.

A runtime may run a bundle's file only where `edged-train verify` found its scores equal to ONNX Runtime's
(the reference the threshold was calibrated on); bundles from before verify keep their old rule (the
manifest's `runtimes` list, ONNX Runtime always). `auto` times the candidates at start, a few interleaved
rounds of the self-test input, unless the manifest holds figures measured on the same CPU model.
"""

from __future__ import annotations

import logging
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edged.bundle import BundleError, Manifest
from edged.runtimes import registry
from edged.runtimes.base import Backend, RuntimeUnavailable

log = logging.getLogger("edged.detector")

ROUNDS = 5  # interleaved timing rounds per candidate at start (a shared CPU is noisy: alternate, take medians)
RUNS_PER_ROUND = 4
WARMUP_RUNS = 3


@dataclass(frozen=True, slots=True)
class Timing:
    """One candidate's model time: measured at start, or taken from the manifest (same CPU)."""

    runtime: str
    precision: str
    median_ms: float
    source: str  # "measured" or "manifest"


@dataclass(frozen=True, slots=True)
class RuntimeChoice:
    """What a Detector runs and why, for the log, check-config and the health file."""

    runtime: str
    precision: str
    mode: str  # "auto" or "explicit"
    reason: str
    timings: tuple[Timing, ...] = ()

    def describe(self) -> str:
        """One line: `auto: fastest of openvino/int8 3.1 ms, onnxruntime/int8 4.7 ms (measured at start)`."""
        if not self.timings:
            return f"{self.mode}: {self.reason}"
        figures = ", ".join(f"{t.runtime}/{t.precision} {t.median_ms:.2f} ms" for t in self.timings)
        sources = {t.source for t in self.timings}
        where = "measured at start" if sources == {"measured"} else "manifest figures, same CPU"
        return f"{self.mode}: fastest of {figures} ({where})"

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form for the health file."""
        return {"runtime": self.runtime, "precision": self.precision, "mode": self.mode, "reason": self.describe(),
                "timings_ms": {f"{t.runtime}/{t.precision}": round(t.median_ms, 3) for t in self.timings}}


def cpu_model() -> str:
    """This machine's CPU model string, as /proc/cpuinfo names it (what manifest timings are matched on)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# x86 instructions that add int8 products into 32 bits; without them int8 kernels use 16-bit pair sums (VPMADDUBSW)
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})
X86 = frozenset({"x86_64", "amd64", "i386", "i686"})


def cpu_flags() -> frozenset[str]:
    """This CPU's feature flags (/proc/cpuinfo's first `flags` line; x86 only); empty when unknown."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key.strip() == "flags":
                    return frozenset(value.split())
    except OSError:
        pass
    return frozenset()


def int8_saturation_warning(manifest: Manifest, precision: str, machine: str | None = None,
                            flags: frozenset[str] | None = None) -> str | None:
    """Why this bundle's int8 scores may stray on this CPU, or None.

    An int8 model quantized with 8-bit weights (bundles from before edged-train's `reduce_range`) on an x86 CPU
    without VNNI: its int8 convolutions add pairs of products into 16 bits and saturate where inputs and weights
    are both large. Measured on such a CPU: the tiles' default bundle, int8 image AUROC 0.871 against fp32 0.965
    (7-bit weights: 0.964). The fit's own parity check only saw the CPU it ran on."""
    int8, fp32 = manifest.models.get("int8"), manifest.models.get("fp32")
    if precision != "int8" or int8 is None or (fp32 is not None and fp32.file == int8.file):
        return None  # not an int8 file (a method without quantization points both entries at the fp32 one)
    quant = manifest.quantization
    if quant.get("enabled") is not True or quant.get("reduce_range") is True:
        return None  # not quantized by edged-train (nothing known of its weights), or with 7-bit weights
    if (machine or platform.machine()).lower() not in X86:
        return None
    found = cpu_flags() if flags is None else flags
    if not found or found & INT8_DOT_FLAGS:
        return None
    return ("its int8 model has 8-bit weights and this CPU has no VNNI, so int8 convolutions add products in "
            "16 bits and can saturate: scores may differ from those the threshold was set on (measured once: image "
            "AUROC 0.965 -> 0.871). Refit the bundle with this edged-train (7-bit weights), or set "
            "model.precision: fp32")


def refusal(manifest: Manifest, runtime: str, precision: str) -> str | None:
    """Why `runtime` may not run the bundle's `precision` file (None: it may), for a message naming model.runtime."""
    if not registry.installed(runtime):
        extra = "edged[openvino]" if runtime == "openvino" else runtime
        return f"{runtime} is not installed here (pip install '{extra}')"
    if runtime == registry.REFERENCE:
        return None
    check = manifest.check(runtime, precision)
    if check is not None:
        if check.passed:
            return None
        found = (f"scores differ from ONNX Runtime's by up to {100 * check.max_diff:.2g}% of the threshold, "
                 f"tolerance {100 * check.tolerance:.2g}%" if check.max_diff is not None else
                 f"it could not run the model: {check.error or 'no detail'}")
        return f"the {precision} model failed the parity check under {runtime} ({found})"
    if runtime == "opencv" and "opencv" in manifest.runtimes and not manifest.verified:
        return None  # bundles from before edged-train verify: fit's own OpenCV check
    if runtime == "opencv":
        return (f"this model was not verified to run correctly under OpenCV DNN (manifest runtimes: "
                f"{', '.join(manifest.runtimes)})")
    return f"the {precision} model was not verified under {runtime}: run edged-train verify on the bundle"


def refuse(bundle_dir: str | Path, manifest: Manifest, runtime: str, precision: str) -> None:
    """Raise the clear error for a runtime the bundle may not run (RuntimeUnavailable when not installed)."""
    why = refusal(manifest, runtime, precision)
    if why is None:
        return
    text = f"model bundle {bundle_dir}: model.runtime: {runtime}: {why}; use model.runtime: auto or onnxruntime"
    raise RuntimeUnavailable(text) if not registry.installed(runtime) else BundleError(text)


def precisions(manifest: Manifest, precision: str | None) -> list[str]:
    """The precisions `auto` may pick: the configured one, else the bundle's default and fp32 (the reference
    precision is never less accurate than int8, so choosing it for speed costs no accuracy)."""
    if precision is not None:
        return [precision]
    out: list[str] = [manifest.default]
    if manifest.default != "fp32" and "fp32" in manifest.models:
        out.append("fp32")
    return out


def candidates(manifest: Manifest, precision: str | None) -> list[tuple[str, str]]:
    """(runtime, precision) pairs `auto` may run, reference first; a bundle without verification records
    runs ONNX Runtime at its default precision, as before (OpenCV where ONNX Runtime is missing)."""
    if not manifest.verified:
        chosen = precision or manifest.default
        if registry.installed(registry.REFERENCE):
            return [(registry.REFERENCE, chosen)]
        return [("opencv", "fp32")] if refusal(manifest, "opencv", "fp32") is None else []
    out: list[tuple[str, str]] = []
    for p in precisions(manifest, precision):
        for name in registry.NAMES:
            if (name in registry.FP32_ONLY and p != "fp32") or not registry.installed(name):
                continue
            if refusal(manifest, name, p) is None:
                out.append((name, p))
    concurrent = [pair for pair in out if pair[0] not in registry.SERIALIZED]
    return concurrent or out


Loader = Callable[[str, str], Backend]


def choose_auto(manifest: Manifest, precision: str | None, load: Loader, sample: np.ndarray,
                threads: int, cpu_only: bool = True) -> tuple[RuntimeChoice, Backend]:
    """The fastest candidate and its loaded backend; the others are loaded only to be timed, then dropped.
    The manifest's figures (verify: one thread, CPU provider) count only for a run like theirs."""
    pairs = candidates(manifest, precision)
    if not pairs:
        raise RuntimeUnavailable("model.runtime: auto: no runtime that may run this bundle is installed "
                                 "(pip install onnxruntime)")
    if len(pairs) == 1:
        runtime, prec = pairs[0]
        reason = ("the only runtime verified for this bundle" if manifest.verified
                  else "bundle not verified for other runtimes (edged-train verify)")
        return RuntimeChoice(runtime, prec, "auto", f"{runtime}/{prec}: {reason}"), load(runtime, prec)
    known = _manifest_timings(manifest, pairs) if threads == 1 and cpu_only else None
    backends: dict[tuple[str, str], Backend] = {}
    if known is None:
        backends = _load_all(pairs, load)
        known = measure(backends, sample)
    ranked = sorted(known, key=lambda t: t.median_ms)
    if backends:
        best = ranked[0]
        return RuntimeChoice(best.runtime, best.precision, "auto", "fastest", tuple(ranked)), \
            backends[(best.runtime, best.precision)]
    return _first_loading(ranked, load)


def _first_loading(ranked: list[Timing], load: Loader) -> tuple[RuntimeChoice, Backend]:
    """The fastest by the manifest's figures that loads here; one that does not (a broken install) is passed over."""
    for i, best in enumerate(ranked):
        try:
            backend = load(best.runtime, best.precision)
        except BundleError as exc:
            if i == len(ranked) - 1:
                raise
            log.warning("model.runtime: auto: %s/%s left out: %s", best.runtime, best.precision, exc)
            continue
        return RuntimeChoice(best.runtime, best.precision, "auto", "fastest", tuple(ranked[i:])), backend
    raise RuntimeUnavailable("model.runtime: auto: no candidate")  # not reached: ranked is never empty


def _load_all(pairs: Sequence[tuple[str, str]], load: Loader) -> dict[tuple[str, str], Backend]:
    """Each candidate loaded; one that fails here (a broken install) is left out with a warning, not fatal,
    unless it is the last one."""
    out: dict[tuple[str, str], Backend] = {}
    for i, pair in enumerate(pairs):
        try:
            out[pair] = load(*pair)
        except BundleError as exc:
            if not out and i == len(pairs) - 1:
                raise
            log.warning("model.runtime: auto: %s/%s left out: %s", pair[0], pair[1], exc)
    return out


def _manifest_timings(manifest: Manifest, pairs: Sequence[tuple[str, str]]) -> list[Timing] | None:
    """The verify run's medians when every candidate has one measured on this CPU model (else None: time here)."""
    here = cpu_model()
    out = []
    for runtime, prec in pairs:
        check = manifest.check(runtime, prec)
        if check is None or check.latency_ms is None or check.cpu != here:
            return None
        out.append(Timing(runtime, prec, check.latency_ms[0], "manifest"))
    return out


def measure(backends: dict[tuple[str, str], Backend], sample: np.ndarray) -> list[Timing]:
    """Median model time of each backend on `sample`, in interleaved rounds so a burst of load hits all alike."""
    batch = np.ascontiguousarray(sample[None], dtype=np.float32)
    for backend in backends.values():
        for _ in range(WARMUP_RUNS):
            backend.run(batch)
    times: dict[tuple[str, str], list[float]] = {pair: [] for pair in backends}
    for _ in range(ROUNDS):
        for pair, backend in backends.items():
            for _ in range(RUNS_PER_ROUND):
                start = time.perf_counter()
                backend.run(batch)
                times[pair].append(time.perf_counter() - start)
    return [Timing(r, p, 1e3 * float(np.median(ts)), "measured") for (r, p), ts in times.items()]
