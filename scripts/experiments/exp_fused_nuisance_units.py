"""Fused pooling with its units also set on sensor-noise (sigma 8) and defocused copies of the pool images, the
threshold calibrated as usual: can the units absorb what a camera does to every cell without losing the ranking?
(No: docs/detection.md, "Fused pooling against the camera".)

    nice python scripts/experiments/exp_fused_nuisance_units.py DATA OUT
    edged-train evaluate OUT DATA --report R --robustness --timing-images 0

Benchmark aid only: it wraps `tools.fit._method_options` for this one fit.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
import tools.fit as fit
from edged.preprocess import prepare_uint8
from tools.camera_effects import defocused, with_sensor_noise
from tools.cli import main
from tools.dataset import as_delivered

_plain = fit._method_options


def _with_nuisance(cfg: Any, method: Any, records: list[Any], spec: Any) -> Any:
    """The fit's method options, each pool image also through noise and defocus."""
    opts = _plain(cfg, method, records, spec)
    base = opts.camera_copies

    def copies(i: int) -> list[np.ndarray]:
        rng = np.random.default_rng(i)
        changes = (lambda im, _: with_sensor_noise(im, 8, rng), lambda im, _: defocused(im))
        extra = [prepare_uint8(as_delivered([records[i]], spec, change)[0], spec) for change in changes]
        return (base(i) if base else []) + extra

    return dataclasses.replace(opts, camera_copies=copies)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    fit._method_options = _with_nuisance
    sys.exit(main(["fit", sys.argv[1], "--out", sys.argv[2], "--opt", "pool=fused"]))
