"""Ablation of `position_norm` on a trained bundle: the same fp32 graph with mean 0 / std 1. Benchmark only.

    PYTHONPATH=. python scripts/experiments/exp_cae_posnorm.py BUNDLE
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper
from sklearn.metrics import roc_auc_score


def scores(model: onnx.ModelProto, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    out = [sess.run(["anomaly_map", "score"], {"input": x[i:i + 32]}) for i in range(0, len(x), 32)]
    return np.concatenate([o[0][:, 0] for o in out]), np.concatenate([o[1] for o in out])


def main(bundle: str) -> None:
    d = np.load("/tmp/cae_exp/mtd128.npz")
    model = onnx.load(str(Path(bundle) / "model.fp32.onnx"))
    channels = model.graph.input[0].type.tensor_type.shape.dim[1].dim_value
    x = np.repeat(d["test"].astype(np.float32)[:, None] / 255, channels, 1)
    for label in ("with position_norm", "without (mu=0, sd=1)"):
        amap, score = scores(model, x)
        print(f"{label}: image AUROC {roc_auc_score(d['label'], score):.4f} "
              f"pixel AUROC {roc_auc_score(d['mask'].ravel(), amap.ravel()):.4f}")
        for init in model.graph.initializer:
            if init.name in ("head.mu", "head.sd"):
                value = np.zeros if init.name == "head.mu" else np.ones
                init.CopyFrom(numpy_helper.from_array(value(numpy_helper.to_array(init).shape, np.float32), init.name))


if __name__ == "__main__":
    main(sys.argv[1])
