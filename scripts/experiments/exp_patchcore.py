"""Experiment driver for `--method patchcore` on an MVTec-layout dataset (benchmark only, not a test).

Fits with `tools.methods.patchcore.METHOD`, exports the ONE-graph ONNX, quantizes it with onnxruntime
(QDQ, several `QuantizeOptions`), and reports image/pixel AUROC, latency (batch 1, 1 and 2 threads)
and size for fp32 and each int8 variant. Appends one JSON line per configuration to --out.

    nice -n 10 python scripts/experiments/exp_patchcore.py --data /work/shared/datasets/mtd --size 224 \
        --layers s3,s5 --coreset 0.01 --out /tmp/pc/sweep.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from edged.bundle import InputSpec
from edged.preprocess import prepare_uint8, to_tensor
from tools.methods.base import FitOptions, QuantizeOptions
from tools.methods.patchcore import METHOD

EXTS = (".png", ".jpg", ".jpeg", ".bmp")


def imread(path: Path, flags: int = cv2.IMREAD_UNCHANGED) -> np.ndarray:
    """cv2.imread that raises, naming the file, where the image cannot be read."""
    image = cv2.imread(str(path), flags)
    if image is None:
        raise OSError(f"cannot read {path}")
    return image


def load(data: Path, spec: InputSpec) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray, np.ndarray]:
    train = sorted(p for p in (data / "train" / "good").iterdir() if p.suffix.lower() in EXTS)
    test: list[Path] = []
    labels: list[int] = []
    masks: list[np.ndarray] = []
    for d in sorted((data / "test").iterdir()):
        for p in sorted(q for q in d.iterdir() if q.suffix.lower() in EXTS):
            test.append(p)
            labels.append(0 if d.name == "good" else 1)
            mp = data / "ground_truth" / d.name / f"{p.stem}_mask.png"
            if d.name != "good" and mp.exists():
                gray = imread(mp, cv2.IMREAD_GRAYSCALE)
                masks.append(cv2.resize(gray, (spec.width, spec.height), interpolation=cv2.INTER_NEAREST) > 127)
            else:
                masks.append(np.zeros((spec.height, spec.width), bool))
    tr = [prepare_uint8(imread(p), spec) for p in train]
    te = [prepare_uint8(imread(p), spec) for p in test]
    return tr, te, np.array(labels), np.stack(masks)


def session(path: Path, threads: int) -> ort.InferenceSession:
    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    o.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=o, providers=["CPUExecutionProvider"])


def score(path: Path, images: list[np.ndarray], spec: InputSpec, batch: int = 8) -> tuple[np.ndarray, np.ndarray]:
    s = session(path, 1)
    scores: list[np.ndarray] = []
    maps: list[np.ndarray] = []
    for i in range(0, len(images), batch):
        x = np.stack([to_tensor(im, spec) for im in images[i:i + batch]])
        sc, am = s.run(None, {spec.name: x})
        scores.append(sc)
        maps.append(am[:, 0].astype(np.float16))
    return np.concatenate(scores), np.concatenate(maps)


def latency(path: Path, spec: InputSpec, threads: int, runs: int = 100) -> dict[str, float]:
    """Batch-1 wall time, and with 1 thread also the CPU time of the calling thread (ORT runs a 1-thread
    session in the caller): on a shared, overloaded machine that is the better estimate of the latency
    the model has on an idle core."""
    s = session(path, threads)
    x = np.random.default_rng(0).random((1, 3, spec.height, spec.width), dtype=np.float32)
    for _ in range(10):
        s.run(None, {spec.name: x})
    wall: list[float] = []
    cpu: list[float] = []
    for _ in range(runs):
        c0, t0 = time.thread_time(), time.perf_counter()
        s.run(None, {spec.name: x})
        wall.append((time.perf_counter() - t0) * 1000)
        cpu.append((time.thread_time() - c0) * 1000)
    out = {f"ms{threads}_med": round(float(np.median(wall)), 2),
           f"ms{threads}_p99": round(float(np.percentile(wall, 99)), 2)}
    if threads == 1:
        out.update({"cpu1_med": round(float(np.median(cpu)), 2), "cpu1_p99": round(float(np.percentile(cpu, 99)), 2)})
    return out


class Reader(CalibrationDataReader):
    def __init__(self, images: list[np.ndarray], spec: InputSpec) -> None:
        self.items = iter([{spec.name: to_tensor(im, spec)[None]} for im in images])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.items, None)


def quantize(fp32: Path, out: Path, q: QuantizeOptions, calib: list[np.ndarray], spec: InputSpec) -> None:
    quantize_static(str(fp32), str(out), Reader(calib, spec), quant_format=QuantFormat.QDQ,
                    per_channel=q.per_channel, op_types_to_quantize=q.op_types,
                    nodes_to_exclude=q.nodes_to_exclude, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=getattr(CalibrationMethod, q.calibrate_method),
                    extra_options=q.extra_options)


def evaluate(scores: np.ndarray, maps: np.ndarray, labels: np.ndarray, masks: np.ndarray) -> dict:
    return {"image_auroc": round(float(roc_auc_score(labels, scores)), 4),
            "pixel_auroc": round(float(roc_auc_score(masks.ravel(), maps.astype(np.float32).ravel())), 4)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=Path("/work/shared/datasets/mtd"))
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--layers", default="s3,s5")
    ap.add_argument("--coreset", default="0.01")
    ap.add_argument("--opt", action="append", default=[], help="extra KEY=VALUE for the method")
    ap.add_argument("--quant", default="all", help="comma list of int8 variants: all,conv,backbone,none,"
                    "all_pct,all_ent,all_tensor")
    ap.add_argument("--calib", type=int, default=64)
    ap.add_argument("--lat2", action="store_true", help="also measure with 2 threads")
    ap.add_argument("--out", type=Path, default=Path("/tmp/pc/sweep.jsonl"))
    a = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("PC_THREADS", "1")))
    a.out.parent.mkdir(parents=True, exist_ok=True)
    extra = dict(kv.split("=", 1) for kv in a.opt)
    opts = FitOptions(size=a.size, extra={"layers": a.layers, **extra}, progress=False)
    spec = METHOD.input_spec(opts)
    t0 = time.perf_counter()
    train, test, labels, masks = load(a.data, spec)
    print(f"loaded {len(train)} train, {len(test)} test in {time.perf_counter() - t0:.1f}s", flush=True)
    calib = [train[i] for i in np.random.default_rng(0).permutation(len(train))[: a.calib]]
    for ratio in a.coreset.split(","):
        opts.extra["coreset"] = ratio
        t0 = time.perf_counter()
        trained = METHOD.fit(train, opts)
        fit_s = time.perf_counter() - t0
        work = a.out.parent / f"pc_{a.size}_{a.layers.replace(',', '')}_{ratio}"
        work.mkdir(exist_ok=True)
        fp32 = work / "model.fp32.onnx"
        trained.export_onnx(fp32)
        rec = {"size": a.size, "layers": a.layers, "coreset": float(ratio), **extra,
               "bank": trained.params["bank_size"], "dims": trained.params["feature_dims"],
               "grid": trained.params["grid"], "fit_s": round(fit_s, 1),
               "feature_s": trained.params["feature_seconds"], "coreset_s": trained.params["coreset_seconds"],
               "load1": round(os.getloadavg()[0], 2)}
        variants: dict[str, Path] = {"fp32": fp32}
        tail = trained.quantize.nodes_to_exclude
        qvars = {
            "all": QuantizeOptions(nodes_to_exclude=tail),
            "all_incl_tail": QuantizeOptions(),
            "conv": QuantizeOptions(op_types=["Conv"], nodes_to_exclude=tail),
            "conv_add": QuantizeOptions(op_types=["Conv", "Add", "Clip", "AveragePool", "Resize", "Concat"],
                                        nodes_to_exclude=tail),
            "all_pct": QuantizeOptions(nodes_to_exclude=tail, calibrate_method="Percentile"),
            "all_ent": QuantizeOptions(nodes_to_exclude=tail, calibrate_method="Entropy"),
            "all_tensor": QuantizeOptions(nodes_to_exclude=tail, per_channel=False),
        }
        for name in [q for q in a.quant.split(",") if q and q != "none"]:
            path = work / f"model.{name}.onnx"
            t1 = time.perf_counter()
            quantize(fp32, path, qvars[name], calib, spec)
            rec[f"{name}_quant_s"] = round(time.perf_counter() - t1, 1)
            variants[name] = path
        for name, path in variants.items():
            sc, mp = score(path, test, spec)
            r = evaluate(sc, mp, labels, masks)
            rec[name] = {**r, **latency(path, spec, 1), "mb": round(path.stat().st_size / 1e6, 2)}
            if a.lat2:
                rec[name].update(latency(path, spec, 2))
            print(name, rec[name], flush=True)
        rec["load1_end"] = round(os.getloadavg()[0], 2)
        print(json.dumps(rec), flush=True)
        with a.out.open("a") as fh:
            fh.write(json.dumps(rec) + "\n")


if __name__ == "__main__":
    main()
