"""Export a model saved by exp_cae.py, quantize it like the bundle does, and compare fp32/int8 in ONNX Runtime.

    PYTHONPATH=. python scripts/experiments/exp_cae_onnx.py NAME

Prints image/pixel AUROC for fp32 and int8, ms/image (1 thread), and which op types ONNX Runtime runs
in the optimized int8 graph (QLinearConv etc.). Benchmark only.
"""

from __future__ import annotations

import collections
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from exp_cae import load_saved
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from sklearn.metrics import roc_auc_score

from edged.bundle import InputSpec
from tools.methods.cae.export import CaeTrained, quantize_options


class Reader(CalibrationDataReader):
    def __init__(self, data: np.ndarray) -> None:
        self.it = iter([{"input": data[i:i + 8]} for i in range(0, len(data), 8)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.it, None)


def session(path: Path, optimized: Path | None = None) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimized:
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def main(name: str) -> None:
    torch.set_num_threads(1)
    cfg, model = load_saved(name)
    spec = (InputSpec(width=128, height=128, channels=1, color_order="gray") if cfg.channels == 1
            else InputSpec(width=128, height=128, channels=3, color_order="rgb"))
    trained = CaeTrained(spec=spec, cfg=cfg, model=model, quantize=quantize_options(cfg))
    out = Path(f"/tmp/cae_exp/{name}")
    out.mkdir(exist_ok=True)
    fp32, pre, int8 = out / "model.fp32.onnx", out / "pre.onnx", out / "model.onnx"
    trained.export_onnx(fp32)
    d = np.load("/tmp/cae_exp/mtd128.npz")

    def tensor(arr: np.ndarray) -> np.ndarray:
        x = arr.astype(np.float32)[:, None] / 255
        return np.repeat(x, 3, 1) if cfg.channels == 3 else x

    calib = tensor(d["train"][::4])
    quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
    q = trained.quantize
    pre_names = {n.name for n in onnx.load(str(pre)).graph.node}
    excl = [n for n in q.nodes_to_exclude if n in pre_names]
    print("excluded head nodes:", len(excl), "of", len(q.nodes_to_exclude))
    quantize_static(str(pre), str(int8), Reader(calib), quant_format=QuantFormat.QDQ, per_channel=q.per_channel,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, op_types_to_quantize=q.op_types,
                    nodes_to_exclude=excl)
    test = tensor(d["test"])
    for label, path in (("fp32", fp32), ("int8", int8)):
        sess = session(path, out / f"{label}.opt.onnx")
        ops = collections.Counter(n.op_type for n in onnx.load(str(out / f"{label}.opt.onnx")).graph.node)
        scores, maps = [], []
        for i in range(0, len(test), 32):
            m, s = sess.run(["anomaly_map", "score"], {"input": test[i:i + 32]})
            scores.append(s)
            maps.append(m[:, 0])
        score, amap = np.concatenate(scores), np.concatenate(maps)
        one = test[:1]
        for _ in range(5):
            sess.run(None, {"input": one})
        t = time.perf_counter()
        for _ in range(30):
            sess.run(None, {"input": one})
        ms = (time.perf_counter() - t) / 30 * 1000
        img, pix = roc_auc_score(d["label"], score), roc_auc_score(d["mask"].ravel(), amap.ravel())
        print(f"{label} image_auroc {img:.4f} pixel_auroc {pix:.4f} ms/image {ms:.2f}")
        print("  ops:", dict(ops))
        if label == "fp32":
            ref = score
        else:
            print(f"  score corr fp32/int8: {np.corrcoef(ref, score)[0, 1]:.4f}")


if __name__ == "__main__":
    main(sys.argv[1])
