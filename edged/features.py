"""Hand-made image features for the `classic` method, computed with numpy/OpenCV only.

The daemon must not need scikit-image: this module reproduces the training code's features
(`tools/methods/classic.py`) and a test proves the two agree. Registry: name -> function.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Extractor = Callable[[np.ndarray], np.ndarray]
_REGISTRY: dict[str, Extractor] = {}


def register(name: str) -> Callable[[Extractor], Extractor]:
    def deco(fn: Extractor) -> Extractor:
        _REGISTRY[name] = fn
        return fn
    return deco


def get(name: str) -> Extractor:
    return _REGISTRY[name]
