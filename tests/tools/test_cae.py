"""The autoencoder methods: both variants train, export one ONNX graph (map + score) that matches torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from tools.methods.base import FitOptions
from tools.methods.cae import METHOD
from tools.methods.cae.export import CaeTrained
from tools.methods.cae.model import SSIM_C1, SSIM_C2, ErrorHead, ssim_map, ssim_window
from tools.methods.cae.options import CaeConfig
from tools.methods.cae.train import CaeMethod
from tools.methods.components.blur import gaussian_kernel
from tools.methods.registry import get_method

SIZE = 32
TINY = {"widths": "4/8/8/8/8", "batch_size": "4"}


def _images(n: int, channels: int, seed: int = 0) -> list[np.ndarray]:
    """Smooth noisy gradients: a texture an autoencoder can learn a little in two epochs."""
    rng = np.random.default_rng(seed)
    xx = np.mgrid[0:SIZE, 0:SIZE][1]
    out = []
    for _ in range(n):
        base = 100 + 60 * np.sin(xx / 5 + rng.uniform(0, 6)) + rng.normal(0, 8, (SIZE, SIZE))
        img = np.clip(base, 0, 255).astype(np.uint8)
        out.append(np.repeat(img[:, :, None], 3, axis=2) if channels == 3 else img)
    return out


def _cae(name: str) -> CaeMethod:
    method = get_method(name)
    assert isinstance(method, CaeMethod), method
    return method


def _fit(name: str, n: int = 12, **extra: str) -> tuple[CaeTrained, FitOptions]:
    opts = FitOptions(size=SIZE, seed=0, epochs=2, extra={**TINY, **extra}, progress=False)
    method = _cae(name)
    spec = method.input_spec(opts)
    return method.fit(_images(n, spec.channels), opts), opts


def _batch(trained: CaeTrained, n: int) -> np.ndarray:
    from edged.preprocess import to_tensor

    spec = trained.spec
    return np.stack([to_tensor(im, spec) for im in _images(n, spec.channels, seed=1)])


@pytest.mark.parametrize("name", ["cae", "cae-reference"])
def test_export_matches_torch_and_has_dynamic_batch(name: str, tmp_path: Path) -> None:
    trained, _ = _fit(name)
    path = tmp_path / "model.onnx"
    trained.export_onnx(path)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert [i.name for i in model.graph.input] == ["input"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch axis
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        batch = _batch(trained, n)
        amap, score = sess.run(["anomaly_map", "score"], {"input": batch})
        assert amap.shape == (n, 1, SIZE, SIZE)
        assert score.shape == (n,)
        tmap, tscore = trained.score(batch)
        np.testing.assert_allclose(score, tscore, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(amap, tmap, rtol=1e-3, atol=1e-5)
    ops = {node.op_type for node in model.graph.node}
    assert ("ConvTranspose" in ops) == (name == "cae-reference")
    assert "BatchNormalization" not in ops  # folded into the convolutions before export


def test_variants_differ_as_documented() -> None:
    ref = _cae("cae-reference").config(FitOptions())
    default = METHOD.config(FitOptions())
    assert METHOD.name == "cae"
    assert ref.widths == (32, 64, 128, 256, 512) and ref.decoder == "convT" and ref.score == "mean"
    assert ref.loss == "mse" and ref.channels == 3
    assert default.decoder == "resize" and default.score != "mean" and default.relative and default.position_norm
    assert not ref.relative and not ref.position_norm


def test_quantize_options_keep_the_error_head_fp32(tmp_path: Path) -> None:
    trained, _ = _fit("cae")
    trained.export_onnx(tmp_path / "m.onnx")
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    excluded = set(trained.quantize.nodes_to_exclude)
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert excluded and excluded <= {n.name for n in graph.node}
    assert any(n.name not in excluded for n in convs)  # the autoencoder's convolutions get quantized
    assert all(n.name in excluded for n in graph.node if n.op_type == "TopK")


def test_training_is_reproducible_with_a_seed() -> None:
    a, _ = _fit("cae", n=8, epochs="1")
    b, _ = _fit("cae", n=8, epochs="1")
    batch = _batch(a, 2)
    np.testing.assert_array_equal(a.score(batch)[1], b.score(batch)[1])
    assert a.params["final_loss"] == b.params["final_loss"]


def test_options_are_parsed_and_checked() -> None:
    opts = FitOptions(extra={"channels": "1", "flip": "yes", "topk": "0.02", "widths": "8/16"})
    cfg = METHOD.config(opts)
    assert (cfg.channels, cfg.flip, cfg.topk, cfg.widths) == (1, True, 0.02, (8, 16))
    assert METHOD.input_spec(opts).color_order == "gray"
    typed = METHOD.config(FitOptions(extra={"channels": 1, "flip": True, "blur": 3, "augment": 0}))  # as the CLI parses
    assert (typed.channels, typed.flip, typed.blur, typed.augment) == (1, True, 3.0, False)
    assert isinstance(typed.blur, float)
    with pytest.raises(ValueError, match="cae: unknown option"):
        METHOD.config(FitOptions(extra={"colour": "1"}))
    with pytest.raises(ValueError, match="score"):
        METHOD.config(FitOptions(extra={"score": "median"}))
    with pytest.raises(ValueError, match="multiple of 32"):
        METHOD.input_spec(FitOptions(size=100))


@pytest.mark.parametrize("channels", [1, 3])
def test_stacked_ssim_equals_the_textbook_formula(channels: int) -> None:
    """The head filters its five SSIM statistics in one depthwise convolution (for speed); the numbers
    must be those of filtering each statistic of each channel on its own."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, channels, 24, 40, generator=gen)
    y = (x + 0.2 * torch.rand(2, channels, 24, 40, generator=gen)).clamp(0, 1)
    g = gaussian_kernel(1.5, 11)
    k2 = (g[:, None] * g[None, :]).view(1, 1, 11, 11)

    def win(t: torch.Tensor) -> torch.Tensor:
        planes = [torch.nn.functional.pad(t[:, i:i + 1], (5, 5, 5, 5), mode="reflect") for i in range(channels)]
        return torch.cat([torch.nn.functional.conv2d(p, k2) for p in planes], dim=1)

    mx, my = win(x), win(y)
    sxx, syy, sxy = win(x * x) - mx * mx, win(y * y) - my * my, win(x * y) - mx * my
    want = ((2 * mx * my + SSIM_C1) * (2 * sxy + SSIM_C2)) / ((mx**2 + my**2 + SSIM_C1) * (sxx + syy + SSIM_C2))
    got = ssim_map(x, y, ssim_window(CaeConfig(channels=channels), 24, 40), channels)
    assert got.shape == want.shape
    assert torch.allclose(got, want, atol=1e-5)


@pytest.mark.parametrize("error", ["l2", "l1", "ssim", "ssim+l1"])
def test_error_head_scores_a_local_defect_higher(error: str) -> None:
    """A small spot that the reconstruction misses must raise the top-k score more than the mean."""
    cfg = CaeConfig(error=error, blur=1.0, score="topk", topk=0.01)
    head = ErrorHead(cfg, SIZE, SIZE)
    gen = torch.Generator().manual_seed(0)
    x = 0.5 + 0.05 * torch.rand(2, 3, SIZE, SIZE, generator=gen)
    recon = x.clone()
    x[1, :, 10:13, 10:13] = 0.0  # a dark blowhole in image 1 only
    amap, score = head(x, recon)
    assert amap.shape == (2, 1, SIZE, SIZE)
    assert score[1] > score[0] + 1e-3
    assert amap[1, 0, 11, 11] > amap[1, 0, 25, 25]


def test_position_norm_discounts_places_where_good_parts_always_differ() -> None:
    """An error every good image has at one place (e.g. a rim) must score lower than a new one elsewhere."""
    from tools.methods.cae.train import position_stats

    class Rim(torch.nn.Module):  # "reconstruction" that always misses the top-left corner
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.full_like(x, 0.325)  # the mean good image
            y[:, :, 2:6, 2:6] = 1.0
            return y

    cfg = CaeConfig(channels=1, error="l1", blur=1.0, score="topk", topk=0.01)
    gen = torch.Generator().manual_seed(0)
    good = 0.3 + 0.05 * torch.rand(16, 1, SIZE, SIZE, generator=gen)
    head = ErrorHead(cfg, SIZE, SIZE)
    head.set_position_stats(*position_stats(Rim(), ErrorHead(cfg, SIZE, SIZE), good))
    test = 0.3 + 0.05 * torch.rand(2, 1, SIZE, SIZE, generator=gen)
    test[1, :, 20:23, 20:23] = 0.9  # a new defect far from the rim
    _, plain = ErrorHead(cfg, SIZE, SIZE)(test, Rim()(test))
    _, normed = head(test, Rim()(test))
    assert plain[0] > 0.1  # without the statistics the rim alone gives a large score
    assert normed[1] > normed[0] + 1.0


def test_int8_model_runs_the_autoencoder_in_int8(tmp_path: Path) -> None:
    """After the shared quantizer, ONNX Runtime's optimized graph has no float Conv outside the error head."""
    from tools.quantize import quantize

    trained, _ = _fit("cae")
    fp32, int8, optimized = tmp_path / "m.fp32.onnx", tmp_path / "m.onnx", tmp_path / "opt.onnx"
    trained.export_onnx(fp32)
    quantize(fp32, int8, _batch(trained, 8), "input", trained.quantize)
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(optimized)
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(int8), so, providers=["CPUExecutionProvider"])
    nodes = onnx.load(str(optimized)).graph.node
    ae = [n for n in nodes if not n.name.startswith("/head/")]
    assert sum(n.op_type == "QLinearConv" for n in ae) == 10  # 5 encoder + 5 decoder convolutions
    assert not [n.name for n in ae if n.op_type in ("Conv", "ConvTranspose")]
    batch = _batch(trained, 8)
    q_score = sess.run(["score"], {"input": batch})[0]
    assert np.corrcoef(q_score, trained.score(batch)[1])[0, 1] > 0.9


def test_relative_error_does_not_depend_on_the_light() -> None:
    cfg = CaeConfig(error="l1", blur=1.0, score="topk", relative=True)
    head = ErrorHead(cfg, SIZE, SIZE)
    gen = torch.Generator().manual_seed(0)
    x = 0.2 + 0.1 * torch.rand(1, 3, SIZE, SIZE, generator=gen)
    y = x + 0.05 * torch.rand(1, 3, SIZE, SIZE, generator=gen)
    _, dim = head(x, y)
    _, bright = head(2 * x, 2 * y)  # twice the light: twice the absolute error, the same relative one
    torch.testing.assert_close(dim, bright, rtol=1e-5, atol=1e-6)


def test_fit_bundle_round_trip_through_the_daemon_detector(tmp_path: Path) -> None:
    """`edged-train fit --method cae` on generated parts -> bundle the daemon's Detector loads and scores."""
    from edged.detector import Detector
    from tools import synth
    from tools.fit import FitConfig, fit_bundle

    data = tmp_path / "data"
    synth.write_dataset(data, n_train=16, n_test_good=3, n_test_defect=3, size=(SIZE, SIZE), seed=0)
    opts = FitOptions(size=SIZE, seed=0, epochs=1, extra=dict(TINY), progress=False)
    fit_bundle(FitConfig(data=data, method="cae", out=tmp_path / "bundle", options=opts))
    for precision in ("int8", "fp32"):
        det = Detector(tmp_path / "bundle", precision=precision)
        frames = [synth.make_part(np.random.default_rng(i), (48, 40))[0] for i in range(2)]
        outs = det.infer(frames)
        assert len(outs) == 2 and all(np.isfinite(o.score) for o in outs)
        assert outs[0].anomaly_map is not None and outs[0].anomaly_map.shape == (SIZE, SIZE)
    assert det.manifest.method == "cae" and det.manifest.outputs.map == "anomaly_map"
