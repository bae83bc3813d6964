"""Outgoing JSON is strict: no NaN or Infinity, ever."""

from __future__ import annotations

import json

import numpy as np

from edged.jsonout import dumps, finite


def test_non_finite_floats_become_null_everywhere() -> None:
    value = {"score": float("nan"), "regions": [{"peak": float("inf")}], "t": (1.5, float("-inf")), "n": 3}
    text = dumps(value)
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"score": None, "regions": [{"peak": None}], "t": [1.5, None], "n": 3}
    assert finite(np.float64("nan")) is None  # numpy's float64 is a float

