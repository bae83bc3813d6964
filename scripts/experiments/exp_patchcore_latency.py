"""Latency of patchcore bundles by shape alone: input size x stages x memory-bank size.

The cost of the graph does not depend on what the bank holds, only on its size, so this builds each
graph with a random bank of the size a real fit would give (coreset ratio x training patches), exports
it, quantizes it the way the pipeline does (tools/quantize.py, the method's QuantizeOptions) on a few
random calibration inputs, and times batch-1 inference: wall time and, for 1 thread, the CPU time of
the calling thread (the latency on an idle core; this machine is shared).

    nice -n 10 python scripts/experiments/exp_patchcore_latency.py --train 566
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from exp_patchcore import latency

from tools.backbones import STAGE_OUTPUTS, efficientnet_lite0
from tools.methods.base import FitOptions
from tools.methods.components.features import PatchFeatures
from tools.methods.patchcore import METHOD
from tools.methods.patchcore.export import PatchCoreTrained
from tools.methods.patchcore.model import PatchCoreGraph
from tools.quantize import quantize


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="160,224,256,320")
    ap.add_argument("--layers", nargs="+", default=["s5", "s4,s5", "s3,s5"])
    ap.add_argument("--ratios", default="0.01,0.03,0.1")
    ap.add_argument("--train", type=int, default=566, help="training images (MTD: 666 minus 15%% hold-out)")
    a = ap.parse_args()
    torch.set_num_threads(1)
    backbone = efficientnet_lite0()
    print("| size | stages | coreset | bank | fp32 ms (CPU, 1 thr) | int8 ms (CPU, 1 thr) | int8 p99 | int8 MB |")
    print("|---|---|---|---|---|---|---|---|")
    for size in [int(s) for s in a.sizes.split(",")]:
        for layers_s in a.layers:
            layers = layers_s.split(",")
            stride = min(STAGE_OUTPUTS[s][1] for s in layers)
            dims = sum(STAGE_OUTPUTS[s][2] for s in layers)
            grid = -(-size // stride)
            for ratio in [float(r) for r in a.ratios.split(",")]:
                bank_n = max(1, round(ratio * a.train * grid * grid))
                opts = FitOptions(size=size)
                spec = METHOD.input_spec(opts)
                feats = PatchFeatures(backbone, layers).eval()
                graph = PatchCoreGraph(feats, torch.randn(bank_n, dims), 4.0 / stride, (size, size)).eval()
                trained = PatchCoreTrained(spec=spec, graph=graph, params={})
                with tempfile.TemporaryDirectory() as tmp:
                    fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
                    trained.export_onnx(fp32)
                    calib = np.random.default_rng(0).random((8, 3, size, size), dtype=np.float32)
                    quantize(fp32, int8, calib, spec.name, trained.quantize)
                    f = latency(fp32, spec, 1, runs=30)
                    q = latency(int8, spec, 1, runs=50)
                    mb = int8.stat().st_size / 1e6
                print(f"| {size} | {layers_s} | {ratio:g} | {bank_n} | {f['cpu1_med']:.1f} | {q['cpu1_med']:.1f} | "
                      f"{q['cpu1_p99']:.1f} | {mb:.1f} |", flush=True)


if __name__ == "__main__":
    main()
