"""classic's ``--opt`` table and the feature set it is defined on."""

from __future__ import annotations

from typing import Any

import numpy as np

from edged.features import LBP_BINS
from tools.methods.components.options import Option

FEATURES = "classic-v1"
N_FEATURES = LBP_BINS + 7


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
