"""`classic`: the reference design's feature detector, exported as one ONNX graph.

Features (33 per image, see `edged.features.classic_v1`): LBP histogram (P=24, R=3, uniform, 26 bins),
Sobel gradient magnitude (mean, std, 25th, 75th percentile), gray level (mean, std, median). Training
computes them with scikit-image/SciPy (the reference's libraries); the daemon computes them with
numpy/OpenCV in `edged.features` and never needs either. ``tests/test_features.py`` proves the two agree.

Model: StandardScaler -> PCA -> IsolationForest, or One-Class SVM with ``--opt detector=ocsvm``.
PCA keeps every component by default (a decorrelating rotation): a defect often shows in directions
in which good parts barely vary, exactly the ones a "95% of the variance" cut throws away (measured on
the magnetic tile set at 128 px, 5 seeds: image AUROC 0.61 with all components, 0.54 with 95%).
The forest is exported as one ONNX tree-ensemble node, the scaler and PCA (and an OCSVM) by skl2onnx;
the graph's ``score`` is ``-decision_function`` (higher = more anomalous).

Options (``--opt KEY=VALUE``): ``detector`` (iforest | ocsvm), ``pca`` (none = all components, the
default; a variance fraction in (0, 1); or a number of components), ``n_estimators`` (200), ``nu``
(0.05, OCSVM), ``gamma`` ("scale", OCSVM).

int8 does not apply: the graph is a scaler, a small matrix product and a tree ensemble (or an SVM),
which ONNX Runtime has no int8 kernels for, and its cost is negligible next to the features. The
bundle's int8 entry therefore points at the fp32 file and the manifest says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edged.bundle import InputSpec, OutputSpec
from edged.features import LBP_BINS, LBP_POINTS, LBP_RADIUS
from tools.methods.base import FitOptions, Option, QuantizeOptions, parse_options

log = logging.getLogger(__name__)

FEATURES = "classic-v1"
N_FEATURES = LBP_BINS + 7
ONNX_OPSET = 17
ONNX_ML_OPSET = 3


def training_features(gray: np.ndarray) -> np.ndarray:
    """The reference's features with the reference's libraries (scikit-image LBP, SciPy Sobel), float64."""
    from scipy import ndimage
    from skimage.feature import local_binary_pattern

    if gray.ndim != 2 or gray.dtype != np.uint8:
        raise ValueError(f"expected a gray uint8 image, got {gray.dtype} {gray.shape}")
    lbp = local_binary_pattern(gray, LBP_POINTS, LBP_RADIUS, method="uniform")
    hist, _ = np.histogram(lbp.ravel(), bins=LBP_BINS, range=(0, LBP_BINS))
    hist = hist.astype(np.float64) / lbp.size
    g = gray.astype(np.float64)
    mag = np.hypot(ndimage.sobel(g, axis=1, mode="mirror"), ndimage.sobel(g, axis=0, mode="mirror"))
    stats = [mag.mean(), mag.std(), np.percentile(mag, 25), np.percentile(mag, 75), g.mean(), g.std(), np.median(g)]
    return np.concatenate([hist, np.asarray(stats, dtype=np.float64)])


def _pca(value: Any) -> str | None:
    try:
        v = float(value)
    except ValueError:
        return "none, a variance fraction in (0, 1) or a number of components"
    if 0 < v < 1 or (v >= 1 and v.is_integer() and v <= N_FEATURES):
        return None
    return f"none, a variance fraction in (0, 1) or a whole number of components 1..{N_FEATURES}"


def _gamma(value: Any) -> str | None:
    if str(value).lower() in ("scale", "auto"):
        return None
    try:
        v = float(value)
    except ValueError:
        return "scale, auto or a positive number"
    return None if np.isfinite(v) and v > 0 else "scale, auto or a positive number"


OPTIONS: dict[str, Option] = {
    "detector": Option("iforest", "iforest (IsolationForest) or ocsvm (One-Class SVM)", choices=("iforest", "ocsvm")),
    "pca": Option("none", "none = all components, a variance fraction in (0, 1), or a number of components",
                  none_ok=True, check=_pca),
    "n_estimators": Option(200, "trees of the IsolationForest", low=1, high=10_000),
    "nu": Option(0.05, "OCSVM: upper bound on the fraction of training errors", low=0.0, low_open=True, high=1.0),
    "gamma": Option("scale", "OCSVM kernel width: scale, auto or a number", check=_gamma),
}


def build_pipeline(extra: dict[str, Any], seed: int, n_samples: int) -> Any:
    from sklearn.decomposition import PCA
    from sklearn.ensemble import IsolationForest
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import OneClassSVM

    o = parse_options("classic", OPTIONS, extra)
    pca = o["pca"]
    n_components: float | int | None
    if pca is None or str(pca).lower() in ("none", "all"):
        n_components = None  # keep every component (a rotation only)
    elif 0 < float(pca) < 1:
        n_components = float(pca)  # the fraction of the variance to keep
    else:
        n_components = min(int(float(pca)), N_FEATURES, max(1, n_samples - 1))
    if o["detector"] == "iforest":
        model = IsolationForest(n_estimators=o["n_estimators"], random_state=seed)
    else:
        gamma = o["gamma"] if str(o["gamma"]).lower() in ("scale", "auto") else float(o["gamma"])
        model = OneClassSVM(nu=o["nu"], gamma=gamma)
    return Pipeline([
        ("scaler", StandardScaler()),
        ("pca", PCA(n_components=n_components, svd_solver="full", random_state=seed)),
        ("detector", model),
    ])


@dataclass
class TrainedClassic:
    pipeline: Any
    spec: InputSpec
    outputs: OutputSpec = field(default_factory=lambda: OutputSpec(score="score", map=None))
    params: dict[str, Any] = field(default_factory=dict)
    quantize: QuantizeOptions = field(default_factory=lambda: QuantizeOptions(enabled=False))

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Training-side scores (higher = more anomalous) of a feature matrix."""
        return -self.pipeline.decision_function(features)

    def export_onnx(self, path: Path) -> None:
        import onnx

        detector = self.pipeline.named_steps["detector"]
        model = self._export_iforest() if type(detector).__name__ == "IsolationForest" else self._export_skl2onnx()
        model.graph.name = "edged_classic"  # skl2onnx names graphs with a random uuid: keep builds reproducible
        model.doc_string = f"edged classic ({self.params.get('detector')}): features {FEATURES} -> score"
        onnx.checker.check_model(model)
        onnx.save(model, str(path))

    def _export_skl2onnx(self) -> Any:
        """The whole pipeline through skl2onnx, then score = -decision_function, flattened to [N]."""
        from onnx import TensorProto, helper
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        model = convert_sklearn(self.pipeline, initial_types=[(self.spec.name, FloatTensorType([None, N_FEATURES]))],
                                target_opset={"": ONNX_OPSET, "ai.onnx.ml": ONNX_ML_OPSET})
        graph = model.graph
        decision = "scores" if any(o.name == "scores" for o in graph.output) else graph.output[-1].name
        graph.initializer.append(helper.make_tensor("score_shape", TensorProto.INT64, [1], [-1]))
        graph.node.append(helper.make_node("Neg", [decision], ["neg_decision"], name="negate_decision"))
        graph.node.append(helper.make_node("Reshape", ["neg_decision", "score_shape"], [self.outputs.score],
                                           name="score_flat"))
        del graph.output[:]
        graph.output.append(helper.make_tensor_value_info(self.outputs.score, TensorProto.FLOAT, [None]))
        return model

    def _export_iforest(self) -> Any:
        """Scaler + PCA through skl2onnx, the forest as ONE TreeEnsembleRegressor node.

        skl2onnx's IsolationForest converter emits ~27 nodes per tree (5,400 for 200 trees: a minute to
        convert, ~9 ms per image to run). The forest is only a sum over trees of each leaf's path length,
        so a single tree-ensemble node with leaf value ``depth + c(n_leaf_samples)`` (scikit-learn's own
        formula) gives the same numbers: score = 2 ** (-mean path / c(max_samples)) + offset_, which is
        ``-decision_function``. Thresholds are rounded down to float32 so ``x <= t`` decides exactly as
        scikit-learn does on float32 features.
        """
        from onnx import TensorProto, helper
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType
        from sklearn.pipeline import Pipeline

        front = Pipeline(self.pipeline.steps[:-1])
        model = convert_sklearn(front, initial_types=[(self.spec.name, FloatTensorType([None, N_FEATURES]))],
                                target_opset={"": ONNX_OPSET, "ai.onnx.ml": ONNX_ML_OPSET})
        graph = model.graph
        projected = graph.output[0].name
        forest = self.pipeline.named_steps["detector"]
        attrs = iforest_tree_attributes(forest)
        denominator = len(forest.estimators_) * _average_path_length(forest._max_samples)
        graph.node.extend([
            helper.make_node("TreeEnsembleRegressor", [projected], ["path_sum"], domain="ai.onnx.ml",
                             name="isolation_forest", n_targets=1, aggregate_function="SUM",
                             post_transform="NONE", **attrs),
            helper.make_node("Reshape", ["path_sum", "score_shape"], ["path_sum_flat"], name="flatten"),
            helper.make_node("Mul", ["path_sum_flat", "neg_inv_denominator"], ["exponent"], name="normalize"),
            helper.make_node("Pow", ["two", "exponent"], ["anomaly"], name="pow2"),
            helper.make_node("Add", ["anomaly", "offset"], [self.outputs.score], name="minus_decision"),
        ])
        graph.initializer.extend([
            helper.make_tensor("score_shape", TensorProto.INT64, [1], [-1]),
            helper.make_tensor("neg_inv_denominator", TensorProto.FLOAT, [], [-1.0 / denominator]),
            helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
            helper.make_tensor("offset", TensorProto.FLOAT, [], [float(forest.offset_)]),
        ])
        del graph.output[:]
        graph.output.append(helper.make_tensor_value_info(self.outputs.score, TensorProto.FLOAT, [None]))
        return model


def _average_path_length(n: float) -> float:
    """c(n): average path length of an unsuccessful BST search, scikit-learn's normalization."""
    if n <= 1:
        return 0.0
    if n <= 2:
        return 1.0
    return float(2.0 * (np.log(n - 1.0) + np.euler_gamma) - 2.0 * (n - 1.0) / n)


def _float32_at_most(values: np.ndarray) -> np.ndarray:
    """Largest float32 <= each float64 value: float32 x <= t32 exactly when x <= t."""
    t32 = values.astype(np.float32)
    over = t32.astype(np.float64) > values
    t32[over] = np.nextafter(t32[over], np.float32(-np.inf))
    return t32


def iforest_tree_attributes(forest: Any) -> dict[str, list[Any]]:
    """TreeEnsembleRegressor attributes whose per-tree leaf value is the sample's path length in that tree."""
    a: dict[str, list[Any]] = {k: [] for k in (
        "nodes_treeids", "nodes_nodeids", "nodes_featureids", "nodes_modes", "nodes_values", "nodes_truenodeids",
        "nodes_falsenodeids", "nodes_missing_value_tracks_true", "target_treeids", "target_nodeids",
        "target_ids", "target_weights")}
    for t, (estimator, features) in enumerate(zip(forest.estimators_, forest.estimators_features_, strict=True)):
        tree = estimator.tree_
        left, right = tree.children_left, tree.children_right
        depth = np.zeros(tree.node_count, np.int64)
        for node in range(tree.node_count):  # parents come before children in scikit-learn's node order
            if left[node] != -1:
                depth[left[node]] = depth[node] + 1
                depth[right[node]] = depth[node] + 1
        thresholds = _float32_at_most(tree.threshold)
        for node in range(tree.node_count):
            a["nodes_treeids"].append(t)
            a["nodes_nodeids"].append(node)
            a["nodes_missing_value_tracks_true"].append(0)
            if left[node] == -1:
                a["nodes_featureids"].append(0)
                a["nodes_modes"].append("LEAF")
                a["nodes_values"].append(0.0)
                a["nodes_truenodeids"].append(0)
                a["nodes_falsenodeids"].append(0)
                a["target_treeids"].append(t)
                a["target_nodeids"].append(node)
                a["target_ids"].append(0)
                value = depth[node] + _average_path_length(float(tree.n_node_samples[node]))
                a["target_weights"].append(float(value))
            else:
                a["nodes_featureids"].append(int(features[tree.feature[node]]))
                a["nodes_modes"].append("BRANCH_LEQ")
                a["nodes_values"].append(float(thresholds[node]))
                a["nodes_truenodeids"].append(int(left[node]))
                a["nodes_falsenodeids"].append(int(right[node]))
    return a


class ClassicMethod:
    name = "classic"
    min_size = 32  # the LBP radius is 3 px and the gradient statistics need some texture to describe
    options = OPTIONS

    def input_spec(self, opts: FitOptions) -> InputSpec:
        return InputSpec(name="features", kind="features", width=opts.size, height=opts.size, channels=1,
                         color_order="gray", scale=1.0, features=FEATURES)

    def fit(self, images: list[np.ndarray], opts: FitOptions) -> TrainedClassic:
        import sklearn

        if len(images) < 2:
            raise ValueError("classic needs at least 2 training images")
        iterable: Any = images
        if opts.progress:
            from tqdm import tqdm

            iterable = tqdm(images, desc="classic: features", unit="img", leave=False)
        features = np.stack([training_features(im) for im in iterable])
        # Fit on what the ONNX graph will see (float32 features), so tree splits are placed on those values.
        features = features.astype(np.float32).astype(np.float64)
        pipeline = build_pipeline(opts.extra, opts.seed, len(images))
        pipeline.fit(features)
        detector = type(pipeline.named_steps["detector"]).__name__
        pca = pipeline.named_steps["pca"]
        params = {
            "features": FEATURES,
            "detector": detector,
            "pca_components": int(pca.n_components_),
            "pca_variance_kept": round(float(np.sum(pca.explained_variance_ratio_)), 4),
            "options": dict(opts.extra),
            "sklearn": sklearn.__version__,
            "quantization_note": "int8 not applicable: scaler + PCA + " + detector + " have no useful int8 "
                                 "kernels and cost far less than the features; the int8 entry is the fp32 graph",
        }
        train_scores = -pipeline.decision_function(features)
        log.info("classic: %d images, %d features -> PCA %d components (%.1f%% variance) -> %s; train score "
                 "range %.4f..%.4f", len(images), N_FEATURES, params["pca_components"],
                 100 * params["pca_variance_kept"], detector, train_scores.min(), train_scores.max())
        return TrainedClassic(pipeline=pipeline, spec=self.input_spec(opts), params=params)


METHOD = ClassicMethod()
