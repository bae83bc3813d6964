"""Latency of fitted bundles' int8 model: batch 1, 1 and 2 intra-op threads, median and p99.

    python scripts/experiments/exp_patchcore_bundle_latency.py BUNDLE [BUNDLE ...]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from exp_patchcore import latency

from edged.bundle import load_manifest


def main() -> None:
    for bundle in sys.argv[1:]:
        manifest = load_manifest(Path(bundle))
        model = Path(bundle) / "model.onnx"
        figures = {**latency(model, manifest.input, 1, runs=200), **latency(model, manifest.input, 2, runs=200)}
        print(bundle, json.dumps(figures), f"{model.stat().st_size / 1e6:.2f} MB", flush=True)


if __name__ == "__main__":
    main()
