"""A fitted classic pipeline and its export: scaler + PCA by skl2onnx, the forest as one tree-ensemble node."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from edged.bundle import InputSpec, OutputSpec
from tools.methods.base import QuantizeOptions
from tools.methods.classic.options import FEATURES, N_FEATURES

ONNX_OPSET = 17
ONNX_ML_OPSET = 3


@dataclass
class TrainedClassic:
    """A fitted scikit-learn pipeline on the daemon's feature vectors; exports one fp32 ONNX graph (no int8)."""

    pipeline: Any
    spec: InputSpec
    outputs: OutputSpec = field(default_factory=lambda: OutputSpec(score="score", map=None))
    params: dict[str, Any] = field(default_factory=dict)
    quantize: QuantizeOptions = field(default_factory=lambda: QuantizeOptions(enabled=False))

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Training-side scores (higher = more anomalous) of a feature matrix."""
        return -self.pipeline.decision_function(features)

    def export_onnx(self, path: Path) -> None:
        """features [N, F] -> score [N] (``-decision_function``); graph name fixed so builds are reproducible."""
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
        attrs = _iforest_tree_attributes(forest)
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


class _TreeEnsembleAttributes(TypedDict):
    """The ai.onnx.ml TreeEnsembleRegressor node's per-node and per-leaf attribute lists (typed keys, so that
    ``make_node(**attributes)`` type-checks; vulture reports the keys as unused variables: they are read as
    ``a["..."]`` and by ``**``)."""

    nodes_treeids: list[int]
    nodes_nodeids: list[int]
    nodes_featureids: list[int]
    nodes_modes: list[str]
    nodes_values: list[float]
    nodes_truenodeids: list[int]
    nodes_falsenodeids: list[int]
    nodes_missing_value_tracks_true: list[int]
    target_treeids: list[int]
    target_nodeids: list[int]
    target_ids: list[int]
    target_weights: list[float]


def _iforest_tree_attributes(forest: Any) -> _TreeEnsembleAttributes:
    """TreeEnsembleRegressor attributes whose per-tree leaf value is the sample's path length in that tree."""
    a = _TreeEnsembleAttributes(
        nodes_treeids=[], nodes_nodeids=[], nodes_featureids=[], nodes_modes=[], nodes_values=[],
        nodes_truenodeids=[], nodes_falsenodeids=[], nodes_missing_value_tracks_true=[], target_treeids=[],
        target_nodeids=[], target_ids=[], target_weights=[])
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
