"""classic's model: the training-side features (the reference's libraries) and the scikit-learn pipeline."""

from __future__ import annotations

from typing import Any

import numpy as np

from edged.features import LBP_BINS, LBP_POINTS, LBP_RADIUS
from tools.methods.classic.options import N_FEATURES, OPTIONS
from tools.methods.components.options import parse_options


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


def build_pipeline(extra: dict[str, Any], seed: int, n_samples: int) -> Any:
    """The unfitted scikit-learn Pipeline (scaler, PCA, ``detector``) the ``--opt`` values describe."""
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
