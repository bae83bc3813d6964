"""fp32 vs int8 latency of a bundle on a busy machine: interleaved runs, 1 thread, min and median. Benchmark only.

    PYTHONPATH=. python scripts/experiments/exp_cae_timing.py BUNDLE [RUNS]
"""

from __future__ import annotations

import sys
import time

import numpy as np

from edged.detector import Detector


def main(bundle: str, runs: int = 60) -> None:
    dets = {p: Detector(bundle, precision=p, intra_op_threads=1) for p in ("fp32", "int8")}
    spec = dets["fp32"].spec
    x = np.random.default_rng(0).random((1, spec.channels, spec.height, spec.width), dtype=np.float32)
    times: dict[str, list[float]] = {p: [] for p in dets}
    for _ in range(3):
        for d in dets.values():
            d.infer_tensor(x)
    for _ in range(runs):
        for p, d in dets.items():
            t = time.perf_counter()
            d.infer_tensor(x)
            times[p].append((time.perf_counter() - t) * 1000)
    for p, ms in times.items():
        print(f"{p}: min {min(ms):.2f} ms, median {np.median(ms):.2f} ms ({runs} interleaved runs, 1 thread)")


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]))
