"""The daemon's classic-v1 features (numpy/OpenCV) equal the training code's (scikit-image/SciPy).

Tolerances: LBP codes are compared exactly (same arithmetic, same order); the 33-value feature vector
is float32 in the daemon and must equal the training vector cast to float32 to within 1e-6 relative;
scores from the bundle's ONNX graph must match scikit-learn's within 1e-5 absolute (float32 PCA).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edged import features
from tools import synth

skimage_feature = pytest.importorskip("skimage.feature")


def _gray_parts(n: int, size: tuple[int, int], seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    kinds = [None, *synth.DEFECTS]
    return [cv2.cvtColor(synth.make_part(rng, size, kinds[i % 4])[0], cv2.COLOR_BGR2GRAY) for i in range(n)]


def test_registry_has_classic_v1() -> None:
    assert features.get("classic-v1") is features.classic_v1
    with pytest.raises(KeyError):
        features.get("nope")


@pytest.mark.parametrize("size", [(64, 64), (37, 53), (8, 8)])
def test_lbp_equals_scikit_image(size: tuple[int, int]) -> None:
    images = _gray_parts(4, size, seed=sum(size))
    images.append(np.full(size[::-1], 7, np.uint8))  # flat: every neighbour ties with the centre
    images.append(np.random.default_rng(1).integers(0, 3, size[::-1]).astype(np.uint8))  # many near-ties
    for image in images:
        expected = skimage_feature.local_binary_pattern(image, 24, 3, method="uniform")
        got = features.lbp_uniform(image)
        assert np.array_equal(got, expected.astype(got.dtype))


def test_feature_vector_matches_training_code() -> None:
    from tools.methods.classic.model import training_features
    from tools.methods.classic.options import N_FEATURES

    for image in _gray_parts(8, (64, 48), seed=3):
        runtime = features.classic_v1(image)
        training = training_features(image)
        assert runtime.shape == (N_FEATURES,) and runtime.dtype == np.float32
        np.testing.assert_allclose(runtime, training.astype(np.float32), rtol=1e-6, atol=1e-7)
        assert abs(runtime[:26].sum() - 1.0) < 1e-5  # the LBP histogram is a distribution


def test_color_input_is_converted() -> None:
    color = synth.make_part(np.random.default_rng(0), (32, 32))[0]
    gray = cv2.cvtColor(color, cv2.COLOR_BGR2GRAY)
    assert np.array_equal(features.classic_v1(color), features.classic_v1(gray))


@pytest.mark.parametrize("detector", ["iforest", "ocsvm"])
def test_onnx_scores_match_scikit_learn(detector: str, tmp_path: Path) -> None:
    import onnxruntime as ort

    from tools.methods.base import FitOptions
    from tools.methods.classic import METHOD
    from tools.methods.classic.model import training_features

    train = _gray_parts(30, (48, 48), seed=10)
    test = _gray_parts(16, (48, 48), seed=11)
    trained = METHOD.fit(train, FitOptions(size=48, extra={"detector": detector}, progress=False))
    trained.export_onnx(tmp_path / "m.onnx")
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    runtime = session.run(["score"], {"features": np.stack([features.classic_v1(im) for im in test])})[0]
    training = trained.scores(np.stack([training_features(im) for im in test]).astype(np.float32).astype(np.float64))
    assert runtime.shape == (len(test),)
    np.testing.assert_allclose(runtime, training, atol=1e-5)
    assert np.std(training) > 1e-3  # the comparison is not between constants
