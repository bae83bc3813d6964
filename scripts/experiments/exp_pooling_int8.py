"""Where a fused-pooling bundle's int8 file loses ranking: the three pooled statistics (max, top mean, mean) of
each test image as the fp32 and the int8 ONNX files compute them, each statistic's own AUROC and recall at 1%
false rejects, and the largest z-score of subsets, in the bundle's units and in "oracle" units (mean and spread
of the test's own good parts: what no fit can know, an upper bound for any per-precision units).

    edged-train fit DATA --out B --opt pool=fused
    nice python scripts/experiments/exp_pooling_int8.py B DATA

Benchmark aid only (docs/detection.md, "Pooling, fused, built").
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from edged.bundle import load_manifest
from edged.preprocess import prepare_uint8, to_tensor
from tools.dataset import load_dataset, read_image

MEAN, INV_STD = "head.pool_mean", "head.pool_inv_std"
SUBSETS = {"max,top,mean": [0, 1, 2], "max,top": [0, 1], "top,mean": [1, 2]}


def statistics(path: Path, x: np.ndarray, input_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(N, 3) statistics before z-scoring (the input of the Sub by the pool mean), and the file's units."""
    model = onnx.load(str(path))
    sub = next(n for n in model.graph.node if n.op_type == "Sub" and MEAN in n.input)
    name = next(i for i in sub.input if i != MEAN)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    stats = np.concatenate([session.run([name], {input_name: x[i:i + 1]})[0] for i in range(len(x))])
    return stats, inits[MEAN], inits[INV_STD]


def recall_at(labels: np.ndarray, s: np.ndarray, frr: float = 0.01) -> float:
    return float((s[labels == 1] > np.quantile(s[labels == 0], 1 - frr)).mean())


def main() -> None:
    bundle, data = Path(sys.argv[1]), Path(sys.argv[2])
    spec = load_manifest(bundle).input
    test = [(r, image) for r in load_dataset(data).test if (image := read_image(r.path)) is not None]
    x = np.stack([to_tensor(prepare_uint8(image, spec), spec) for _, image in test])
    y = np.array([0 if r.is_good else 1 for r, _ in test])
    for file in ("model.fp32.onnx", "model.onnx"):
        s, mean, inv_std = statistics(bundle / file, x, spec.name)
        single = [f"{roc_auc_score(y, s[:, i]):.4f} / {recall_at(y, s[:, i]):.3f}" for i in range(3)]
        print(f"{file}: AUROC / recall@1%FRR of max, top, mean: {', '.join(single)}")
        units = {"bundle units": (s - mean) * inv_std,
                 "oracle units": (s - s[y == 0].mean(0)) / s[y == 0].std(0)}
        for name, cols in SUBSETS.items():
            for label, z in units.items():
                v = z[:, cols].max(1)
                print(f"  max z({name}) {label}: AUROC {roc_auc_score(y, v):.4f} recall@1%FRR {recall_at(y, v):.3f}")


if __name__ == "__main__":
    main()
