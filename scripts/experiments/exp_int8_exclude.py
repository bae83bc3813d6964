"""Which nodes of a patchcore bundle's graph cost its int8 file the ranking: the bundle's fp32 file quantized again
as fit does (same options, same calibration rows), each time with more nodes left in fp32 (the kNN MatMul, the
first convolution, the feature standardization), then each file's image AUROC, recall at 1% false rejects, the
three pooled statistics' AUROC (a fused-pooling bundle) and its median latency on one thread.

    edged-train fit DATA --out B --opt pool=fused
    nice python scripts/experiments/exp_int8_exclude.py B DATA

Benchmark aid only (docs/detection.md).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from exp_pooling_int8 import recall_at, statistics

from edged.bundle import load_manifest
from edged.preprocess import prepare_uint8, to_tensor
from tools.dataset import load_dataset, read_image
from tools.fit import CALIBRATION_IMAGES, _model_rows
from tools.methods.base import QuantizeOptions
from tools.quantize import quantize


def node_groups(model: onnx.ModelProto) -> dict[str, list[str]]:
    """Names of the nodes each variant leaves in fp32."""
    nodes = list(model.graph.node)
    stop = next(i for i, n in enumerate(nodes) if n.op_type == "ReduceMin")
    knn = [n.name for n in nodes[:stop] if n.op_type == "MatMul"][-1:]
    convs = [n.name for n in nodes if n.op_type == "Conv"]
    return {"knn": knn, **{f"conv{k}": convs[:k] for k in range(1, len(convs) + 1)}}


def session(path: Path) -> ort.InferenceSession:
    """One intra-op thread, as the latency budget counts."""
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = 1, 1
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def measure(path: Path, x: np.ndarray, y: np.ndarray, name: str, has_pool: bool) -> str:
    """AUROC, recall at 1% FRR, median ms, and the pooled statistics' AUROC of one file."""
    s = session(path)
    scores, times = [], []
    for i in range(len(x)):
        t0 = time.perf_counter()
        scores.append(float(s.run(["score"], {name: x[i:i + 1]})[0].ravel()[0]))
        times.append(time.perf_counter() - t0)
    v = np.array(scores)
    out = f"AUROC {roc_auc_score(y, v):.4f} recall@1% {recall_at(y, v):.3f} {1000 * np.median(times):.1f} ms"
    if has_pool:
        st, _, _ = statistics(path, x, name)
        out += " | max/top/mean " + " ".join(f"{roc_auc_score(y, st[:, j]):.4f}" for j in range(3))
    return out


def main() -> None:
    bundle, data = Path(sys.argv[1]), Path(sys.argv[2])
    manifest = load_manifest(bundle)
    spec, q = manifest.input, manifest.quantization
    ds = load_dataset(data)
    prepared = [prepare_uint8(im, spec) for r in ds.train if (im := read_image(r.path)) is not None]
    rows = _model_rows(prepared, spec, CALIBRATION_IMAGES, 0)
    test = [(r, im) for r in ds.test if (im := read_image(r.path)) is not None]
    x = np.stack([to_tensor(prepare_uint8(im, spec), spec) for _, im in test])
    y = np.array([0 if r.is_good else 1 for r, _ in test])
    fp32 = bundle / "model.fp32.onnx"
    model = onnx.load(str(fp32))
    has_pool = any("head.pool_mean" in n.input for n in model.graph.node)
    groups = node_groups(model)
    base_exclude = list(q.get("nodes_to_exclude", []))  # type: ignore[call-overload]
    print(f"fp32: {measure(fp32, x, y, spec.name, has_pool)}", flush=True)
    # variants as argv: "knn+conv3" leaves the kNN MatMul and the first 3 convolutions in fp32; "-" as fit
    names = sys.argv[3:] or ["-", "knn", "conv1", "conv1+knn", "conv3+knn"]
    variants = {v: [n for g in v.split("+") if g != "-" for n in groups[g]] for v in names}
    with tempfile.TemporaryDirectory() as tmp:
        for label, extra in variants.items():
            out = Path(tmp) / "m.onnx"
            options = QuantizeOptions(nodes_to_exclude=base_exclude + extra,
                                      extra_options={"ActivationType": str(q.get("activation_type", "QUInt8"))})
            quantize(fp32, out, rows, spec.name, options)
            print(f"{label} ({len(extra)} nodes): {measure(out, x, y, spec.name, has_pool)}", flush=True)


if __name__ == "__main__":
    main()
