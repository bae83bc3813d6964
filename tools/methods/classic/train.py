"""Fitting classic: features of the good images, then the pipeline; `ClassicMethod` is ``--method classic``."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from edged.bundle import InputSpec
from tools.methods.base import FitOptions
from tools.methods.classic.export import TrainedClassic
from tools.methods.classic.model import build_pipeline, training_features
from tools.methods.classic.options import FEATURES, N_FEATURES, OPTIONS

log = logging.getLogger(__name__)


class ClassicMethod:
    """LBP + gradient features (`edged.features`, computed by the daemon) scored by an IsolationForest or OCSVM."""

    name = "classic"
    min_size = 32  # the LBP radius is 3 px and the gradient statistics need some texture to describe
    options = OPTIONS

    def input_spec(self, opts: FitOptions) -> InputSpec:
        """Gray images at --size, square; the model's input is their feature vector, not the pixels."""
        return InputSpec(name="features", kind="features", width=opts.size, height=opts.size, channels=1,
                         color_order="gray", scale=1.0, features=FEATURES, resize="halve_area")

    def fit(self, images: list[np.ndarray], opts: FitOptions) -> TrainedClassic:
        """Features of every image, then the pipeline fitted on them in float32 (what the ONNX graph sees)."""
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
