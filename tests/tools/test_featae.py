"""The feature autoencoder: one ONNX graph equal to its torch module, defects reconstruct worse than good
parts, and the pipeline's int8 bundle runs in the daemon's Detector. Small generated images, few epochs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from devkit.support import read_image
from edged.preprocess import prepare_uint8, to_tensor
from tools.methods.base import FitOptions
from tools.methods.components.options import OptionError
from tools.methods.featae import METHOD
from tools.methods.featae.export import FeatAETrained
from tools.methods.featae.options import parse_options
from tools.synth import make_part

SIZE = 64
EXTRA = {"backbone": "lite0", "epochs": 40, "hidden": 64, "bottleneck": 8}


def _parts(n: int, seed: int, defect: str | None = None) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    spec = METHOD.input_spec(FitOptions(size=SIZE))
    return [prepare_uint8(make_part(rng, size=(96, 96), defect=defect)[0], spec) for _ in range(n)]


@pytest.fixture(scope="module")
def trained() -> FeatAETrained:
    torch.set_num_threads(1)
    return METHOD.fit(_parts(16, seed=1), FitOptions(size=SIZE, extra=EXTRA, progress=False))


def test_training_lowers_the_reconstruction_error(trained: FeatAETrained) -> None:
    p = trained.params
    assert p["jitter"] == 1.5  # the default: the noise it adds stays in the loss
    assert p["loss_last"] < 0.8 * p["loss_first"]
    assert p["grid"] == [SIZE // 16, SIZE // 16] and p["feature_dims"] == 112 + 192


def test_defects_reconstruct_worse_than_good_parts(trained: FeatAETrained) -> None:
    good, _ = trained(_parts(8, seed=5))
    bad, _ = trained(_parts(8, seed=6, defect="spot") + _parts(8, seed=7, defect="scratch"))
    assert np.median(bad) > np.max(good) * 0.9 and np.mean(bad > np.median(good)) >= 0.8


def test_onnx_graph_equals_torch_reference(trained: FeatAETrained, tmp_path: Path) -> None:
    path = tmp_path / "model.fp32.onnx"
    trained.export_onnx(path)
    images = _parts(2, seed=8) + _parts(2, seed=9, defect="crack")
    batch = np.stack([to_tensor(im, trained.spec) for im in images])
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    score, amap = session.run(["score", "anomaly_map"], {trained.spec.name: batch})
    ref_score, ref_map = trained(images)
    assert amap.shape == (4, 1, SIZE, SIZE)
    np.testing.assert_allclose(score, ref_score, rtol=1e-4)
    np.testing.assert_allclose(amap, ref_map, rtol=1e-3, atol=1e-4)


def test_options_are_typed_and_checked() -> None:
    assert parse_options({"bottleneck": "16"})["bottleneck"] == 16
    with pytest.raises(OptionError, match="bottleneck"):
        parse_options({"bottleneck": "0"})
    with pytest.raises(OptionError, match="unknown"):
        parse_options({"coreset": "0.1"})


@pytest.mark.slow
def test_pipeline_bundle_runs_in_the_daemon_detector(synth_data: Path, tmp_path: Path) -> None:
    from edged.detector import Detector
    from tools.fit import FitConfig, fit_bundle

    result = fit_bundle(FitConfig(data=synth_data, method="featae", out=tmp_path / "b", folds=2,
                                  options=FitOptions(size=SIZE, extra=EXTRA, progress=False)))
    m = result.manifest
    ops = m.quantization["ops"]
    assert isinstance(ops, dict)
    assert m.method == "featae" and m.quantization["enabled"] and "Conv" in ops["int8"]
    assert ops["fp32"]["Conv"] >= 4 + 3  # the autoencoder's four and the backbone's stem stage (three) stay fp32
    frames = [read_image(p) for p in sorted((synth_data / "test").rglob("*.png"))]
    fp32 = [o.score for o in Detector(result.bundle, precision="fp32").infer(frames)]
    int8 = Detector(result.bundle, precision="int8").infer(frames)
    assert int8[0].anomaly_map is not None and int8[0].anomaly_map.shape == (SIZE, SIZE)
    assert np.corrcoef(fp32, [o.score for o in int8])[0, 1] > 0.9
