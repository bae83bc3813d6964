"""PatchCore on EfficientNet-Lite0: the weights are the real ImageNet ones, the ONE ONNX graph computes
exactly what the torch reference computes, the coreset covers the data, and defects score higher.

Small generated images and a tiny coreset keep this fast; the real-data figures are in docs/patchcore.md.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from devkit.support import read_image
from edged.preprocess import prepare_uint8, to_tensor
from tools import backbones
from tools.methods.base import FitOptions
from tools.methods.components.sampling import greedy_coreset
from tools.methods.components.tensors import images_to_tensor
from tools.methods.patchcore import METHOD
from tools.methods.patchcore.export import PatchCoreTrained
from tools.methods.patchcore.model import PatchCoreGraph
from tools.methods.patchcore.options import parse_options
from tools.synth import make_part

SIZE = 64


def reference_patch_distances(graph: PatchCoreGraph, x: torch.Tensor) -> torch.Tensor:
    """Independent check of the graph's kNN step: plain torch.cdist + min over the bank, (N, 1, h, w)."""
    with torch.no_grad():
        f = graph.features(x)
        n, d, h, w = f.shape
        bank = (-0.5 * graph.bank_t).t()
        a = f.flatten(2).transpose(1, 2).reshape(-1, d).double()
        dist = torch.cdist(a, bank.double()).min(dim=1).values
        return dist.view(n, 1, h, w).float()


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def lite0() -> backbones.EfficientNetLite0:
    return backbones.efficientnet_lite0()


def _photo(name: str) -> torch.Tensor:
    """A scikit-image sample photo (shipped inside the wheel) as a normalized 224x224 batch of one."""
    from skimage import data

    rgb = getattr(data, name)()
    x = cv2.resize(rgb, (224, 224), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
    return backbones.Normalize()(torch.from_numpy(x).permute(2, 0, 1)[None])


@pytest.mark.parametrize(("photo", "classes"), [
    ("chelsea", {281, 282, 283, 284, 285}),  # a tabby cat: tabby, tiger cat, Persian, Siamese, Egyptian cat
    ("coffee", {967, 968, 504}),  # espresso, cup, coffee mug
])
def test_backbone_classifies_real_photos(lite0: backbones.EfficientNetLite0, photo: str, classes: set[int]) -> None:
    """The strongest cheap proof that the architecture, the weight mapping, the padding and the
    normalization are right: the ImageNet head names what is in two real photos, confidently.
    A wrong padding or a missing BatchNorm still leaves features, but not these answers."""
    with torch.no_grad():
        probs = lite0(_photo(photo)).softmax(1)[0]
    top = int(probs.argmax())
    assert top in classes
    assert float(probs[sorted(classes)].sum()) > 0.7


def test_untrained_backbone_fails_the_same_check() -> None:
    """The check above can fail: random weights do not find the cat."""
    torch.manual_seed(0)
    with torch.no_grad():
        probs = backbones.efficientnet_lite0(pretrained=False)(_photo("chelsea")).softmax(1)[0]
    assert float(probs[[281, 282, 283, 284, 285]].sum()) < 0.2


def test_stage_strides_and_channels(lite0: backbones.EfficientNetLite0) -> None:
    x = torch.zeros(1, 3, SIZE, SIZE)
    with torch.no_grad():
        feats = lite0.features(x, list(backbones.STAGE_OUTPUTS))
    for (_name, (_block, stride, channels)), f in zip(backbones.STAGE_OUTPUTS.items(), feats, strict=True):
        assert f.shape == (1, channels, SIZE // stride, SIZE // stride)


def _parts(n: int, seed: int, defect: str | None = None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    spec = METHOD.input_spec(FitOptions(size=SIZE))
    images, masks = [], []
    for _ in range(n):
        image, mask = make_part(rng, size=(96, 96), defect=defect)
        images.append(prepare_uint8(image, spec))
        masks.append(cv2.resize(mask, (SIZE, SIZE), interpolation=cv2.INTER_NEAREST))
    return images, masks


@pytest.fixture(scope="module")
def trained() -> PatchCoreTrained:
    torch.set_num_threads(1)
    good, _ = _parts(12, seed=1)
    extra = {"layers": "s3,s5", "coreset": "0.05", "batch": "6"}  # two stages: upsample + concat are exercised
    return METHOD.fit(good, FitOptions(size=SIZE, extra=extra, progress=False))


def test_input_spec_keeps_normalization_in_the_graph() -> None:
    spec = METHOD.input_spec(FitOptions(size=96))
    assert (spec.width, spec.height, spec.channels, spec.color_order) == (96, 96, 3, "rgb")
    assert spec.scale == pytest.approx(1 / 255) and spec.mean == (0.0,) and spec.std == (1.0,)


def test_fit_records_a_small_bank(trained: PatchCoreTrained) -> None:
    p = trained.params
    assert p["grid"] == [SIZE // 8, SIZE // 8]
    assert p["train_patches"] == 12 * (SIZE // 8) ** 2
    assert p["bank_size"] == round(0.05 * p["train_patches"])
    assert p["feature_dims"] == 40 + 112


def test_light_copies_enrich_the_bank_without_enlarging_it() -> None:
    """`--augment-light 1` doubles the images: their patches all compete for the coreset, whose size follows the
    originals (the bundle's size and the kNN's cost stay those of the part's own images)."""
    from tools.fit import with_copies

    good, _ = _parts(6, seed=2)
    extra = {"layers": "s3,s5", "coreset": "0.05", "batch": "6"}
    out = METHOD.fit(with_copies(good, 1, 0), FitOptions(size=SIZE, extra=extra, progress=False, copies=1))
    p = out.params
    assert p["train_patches"] == 12 * (SIZE // 8) ** 2
    assert p["bank_size"] == round(0.05 * p["train_patches"] / 2)


def test_knn_in_the_graph_equals_cdist(trained: PatchCoreTrained) -> None:
    """The matmul form ||a||^2 - 2ab + ||b||^2 + min equals an exact nearest-neighbour search."""
    test, _ = _parts(3, seed=7, defect="spot")
    x = images_to_tensor(test)
    with torch.no_grad():
        got = trained.graph.patch_distances(x)
    want = reference_patch_distances(trained.graph, x)
    np.testing.assert_allclose(got.numpy(), want.numpy(), rtol=1e-4, atol=1e-3)


def test_onnx_graph_equals_torch_reference(trained: PatchCoreTrained, tmp_path: Path) -> None:
    """ONE ONNX graph (normalization, backbone, kNN, map, score) == the torch module, fp32, batch > 1."""
    path = tmp_path / "model.fp32.onnx"
    trained.export_onnx(path)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert {"Loop", "Scan"}.isdisjoint(ops) and ops.count("ReduceMin") == 1  # the kNN: matmul + min, no loop
    assert "TopK" in ops[ops.index("ReduceMin"):]  # the image score (mean of the top cells) is in the fp32 tail
    test = _parts(2, seed=5)[0] + _parts(2, seed=6, defect="scratch")[0]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    batch = np.stack([to_tensor(im, trained.spec) for im in test])
    score, amap = session.run([trained.outputs.score, trained.outputs.map], {trained.spec.name: batch})
    ref_score, ref_map = trained(test)
    assert score.shape == (4,) and amap.shape == (4, 1, SIZE, SIZE)
    np.testing.assert_allclose(score, ref_score, rtol=1e-4)
    np.testing.assert_allclose(amap, ref_map, rtol=1e-4, atol=1e-3 * float(ref_map.max()))
    # The int8 step must leave the distance tail alone: the excluded nodes exist and follow the min.
    names = {n.name for n in model.graph.node}
    excluded = trained.quantize.nodes_to_exclude
    assert excluded and set(excluded) <= names
    assert {"Sqrt", "Resize", "TopK"} <= {n.op_type for n in model.graph.node if n.name in excluded}


def test_defects_score_higher_and_the_map_points_at_them(trained: PatchCoreTrained) -> None:
    good, _ = _parts(6, seed=11)
    bad, masks = _parts(6, seed=12, defect="spot")
    good_scores, _ = trained(good)
    bad_scores, bad_maps = trained(bad)
    assert bad_scores.min() > np.median(good_scores)
    for amap, mask in zip(bad_maps[:, 0], masks, strict=True):
        if mask.any():
            assert amap[mask > 0].mean() > amap[mask == 0].mean()


def test_greedy_coreset_covers_every_cluster() -> None:
    """k-center picking takes one point from each of k far-apart clusters, whatever their sizes."""
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(5, 152, generator=g) * 20
    sizes = [500, 50, 5, 200, 1]
    x = torch.cat([c + torch.randn(n, 152, generator=g) for c, n in zip(centers, sizes, strict=True)])
    labels = torch.cat([torch.full((n,), i) for i, n in enumerate(sizes)])
    picked = greedy_coreset(x, 5, dims=32, seed=3)
    assert sorted(labels[picked].tolist()) == [0, 1, 2, 3, 4]


def test_options_are_checked() -> None:
    assert parse_options({"coreset": "0.02", "layers": "s2,s3"})["coreset"] == 0.02
    with pytest.raises(ValueError, match="unknown"):
        parse_options({"ratio": "0.1"})
    with pytest.raises(ValueError, match="layers"):
        parse_options({"layers": "s9"})
    with pytest.raises(ValueError, match="coreset"):
        parse_options({"coreset": "0"})
    assert parse_options({"standardize": "false"})["standardize"] is False
    assert parse_options({})["standardize"] is True
    with pytest.raises(ValueError, match="standardize"):
        parse_options({"standardize": "maybe"})


def test_standardized_features_weigh_every_channel_evenly(trained: PatchCoreTrained) -> None:
    """The graph divides each feature channel by its spread on the good training patches, so a few
    wide channels cannot decide the distance alone."""
    good, _ = _parts(12, seed=1)  # the fixture's training images
    with torch.no_grad():
        f = trained.graph.features(images_to_tensor(good))
    spread = f.permute(1, 0, 2, 3).flatten(1).std(dim=1)
    assert trained.graph.features.scale is not None
    np.testing.assert_allclose(spread.numpy(), 1.0, rtol=0.02)


def _int8_convolutions(path: Path) -> list[str]:
    """The convolutions of an int8 file whose weights come through a DequantizeLinear (quantized ones)."""
    model = onnx.load(str(path))
    dequantized = {o for n in model.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return [n.name for n in model.graph.node if n.op_type == "Conv" and n.input[1] in dequantized]


def _beyond_the_stem_stage(path: Path) -> list[str]:
    """The fp32 file's backbone convolutions from its second stride-2 one on, by their strides alone."""
    convs = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Conv" and n.name.startswith("/features/")]
    strided = [i for i, n in enumerate(convs) if any(max(a.ints) > 1 for a in n.attribute if a.name == "strides")]
    return [n.name for n in convs[strided[1]:]]


def test_pipeline_bundle_runs_in_the_daemon_detector(synth_data: Path, tmp_path: Path) -> None:
    """`edged-train fit --method patchcore` end to end on generated parts: the int8 bundle loads in the
    daemon's Detector, keeps the kNN tail and the backbone's stem stage in fp32 (every later convolution int8),
    and its scores follow the fp32 model's."""
    from edged.detector import Detector
    from tools.fit import FitConfig, fit_bundle

    result = fit_bundle(FitConfig(data=synth_data, method="patchcore", out=tmp_path / "b",
                                  options=FitOptions(size=SIZE, extra={"coreset": "0.05"}, progress=False)))
    m = result.manifest
    assert m.method == "patchcore" and set(m.models) == {"int8", "fp32"}
    assert (m.input.color_order, m.input.mean, m.input.std) == ("rgb", (0.0,), (1.0,))
    ops = m.quantization["ops"]
    assert isinstance(ops, dict)
    assert "MatMul" in ops["int8"] and {"Sqrt", "TopK"} <= set(ops["fp32"])
    assert _int8_convolutions(result.bundle / "model.onnx") == _beyond_the_stem_stage(result.bundle / "model.fp32.onnx")
    frames = [read_image(p) for p in sorted((synth_data / "test").rglob("*.png"))]
    fp32 = [o.score for o in Detector(result.bundle, precision="fp32").infer(frames)]
    loaded = Detector(result.bundle)  # scores the bundle's reference parts again at load: alike here
    assert m.reference_parts is not None and set(m.reference_parts.scores) == {"int8", "fp32"}
    assert loaded.precision == "int8" and loaded.warnings == ()
    int8 = loaded.infer(frames)
    assert int8[0].anomaly_map is not None and int8[0].anomaly_map.shape == (SIZE, SIZE)
    assert np.corrcoef(fp32, [o.score for o in int8])[0, 1] > 0.9


def test_a_feature_autoencoder_beside_the_bank_is_one_graph_with_fp32_autoencoder(tmp_path: Path) -> None:
    """patchcore's featae option: bank distance and autoencoder error fused on the same features, each divided
    by its training-patch mean; the ONNX graph gives the torch reference's scores and int8 leaves the
    autoencoder alone."""
    from tools.methods.patchcore.export import beside_nodes

    rng = np.random.default_rng(3)
    good = [np.clip(rng.normal(128, 12, (64, 64, 3)), 0, 255).astype(np.uint8) for _ in range(12)]
    trained = METHOD.fit(good, FitOptions(size=64, extra={"backbone": "lite0", "layers": "s5,s6",
                                                           "featae": 1.0, "coreset": 0.5}))
    beside = trained.graph.beside
    assert beside is not None and trained.params["beside_bank"]["weight"] == 1.0
    assert float(beside.bank_scale) > 0 and float(beside.ae_scale) > 0
    bad = good[0].copy()
    bad[20:40, 20:40] = 255
    scores, _ = trained([good[1], bad])
    assert scores[1] > scores[0]
    path = tmp_path / "model.onnx"
    trained.export_onnx(path)
    kept = beside_nodes(onnx.load(str(path)))
    assert kept and all(name in trained.quantize.nodes_to_exclude for name in kept)
    x = images_to_tensor([good[1], bad]).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, scores, rtol=1e-3, atol=1e-4)


def test_an_image_gaussian_beside_the_bank_adds_to_the_score_only_and_sees_a_global_change(tmp_path: Path) -> None:
    """patchcore's gaussian option: the Mahalanobis distance of each channel's mean and spread, in the bank
    score's units, added to the image score. A part shaded a little darker all over (no single patch unusual
    for the bank, since the good parts' shading varies) gains more from it than a good part; the map is the
    bank's alone; the ONNX graph gives the torch scores, with the Gaussian left out of int8."""
    import torch

    from tools.methods.patchcore.export import beside_nodes
    from tools.methods.patchcore.model import feature_statistics

    rng = np.random.default_rng(4)

    def part(level: float, noise: float = 12.0) -> np.ndarray:
        return np.clip(rng.normal(level, noise, (64, 64, 3)), 0, 255).astype(np.uint8)

    good = [part(float(rng.uniform(110, 150))) for _ in range(16)]
    opts = {"backbone": "lite0", "layers": "s5,s6", "coreset": 0.5}
    plain = METHOD.fit(good, FitOptions(size=64, extra=opts))
    trained = METHOD.fit(good, FitOptions(size=64, extra={**opts, "gaussian": 1.0}))
    gaussian = trained.graph.gaussian
    info = trained.params["image_gaussian"]
    assert gaussian is not None and info["weight"] == 1.0 and 0 <= info["shrinkage"] <= 1
    assert float(gaussian.factor) == pytest.approx(info["mean_bank_score"] / info["mean_distance"], rel=1e-3)
    coarse = part(130.0, noise=30.0)  # the texture coarser everywhere
    new_good = part(130.0)
    s_plain, m_plain = plain([new_good, coarse])
    s_fused, m_fused = trained([new_good, coarse])
    np.testing.assert_allclose(m_fused, m_plain, rtol=1e-3)  # same bank (same seed; cached float16 features)
    gained = s_fused - s_plain
    assert np.all(gained >= 0) and gained[1] > gained[0]
    with torch.no_grad():
        f = trained.graph.features(images_to_tensor([coarse]))
        assert feature_statistics(f).shape == (1, 2 * f.shape[1])
    path = tmp_path / "model.onnx"
    trained.export_onnx(path)
    kept = [n for n in beside_nodes(onnx.load(str(path))) if n.startswith("/gaussian/")]
    assert kept and all(name in trained.quantize.nodes_to_exclude for name in kept)
    x = images_to_tensor([new_good, coarse]).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, s_fused, rtol=1e-3, atol=1e-4)


def test_bank_sources_name_the_image_of_every_bank_row() -> None:
    """Rows laid out image by image, originals first, then each original's light copies; through the random cap
    and the coreset, every bank row is traced to its original image."""
    from tools.methods.patchcore.train import bank_sources

    cells, copies = 4, 2
    n = 3 * (1 + copies)  # images 0-2, then copies 0,0,1,1,2,2
    owner = torch.tensor([0, 1, 2, 0, 0, 1, 1, 2, 2]).repeat_interleave(cells)
    kept = torch.randperm(n * cells, generator=torch.Generator().manual_seed(0))[:20]
    coreset = torch.tensor([0, 5, 19, 7, 12])
    assert bank_sources(n, copies, cells, kept, coreset).tolist() == owner[kept[coreset]].tolist()
    assert bank_sources(3, 0, cells, None, torch.tensor([0, 4, 11])).tolist() == [0, 1, 2]


def test_fused_pooling_scores_in_units_of_good_images_the_bank_did_not_see(tmp_path: Path) -> None:
    """pool=fused: the image score is the largest z-score of the grid's max, top mean and mean, whose units come
    from training images scored without their own patches; so fresh good parts score near the training images'
    statistics (not far above an in-sample score of about 0), a defect scores far above them, and the ONNX graph
    gives the torch scores."""
    good, _ = _parts(14, seed=21)
    extra = {"layers": "s3,s5", "coreset": "0.2", "batch": "7", "pool": "fused"}
    trained = METHOD.fit(good, FitOptions(size=SIZE, extra=extra, progress=False))
    info = trained.params["fused_pool"]
    head = trained.graph.head
    assert info["images"] == 14 and head.pool == "fused" and len(info["mean"]) == 3
    assert all(s > 0 for s in info["std"])
    fresh, _ = _parts(8, seed=22)
    bad, _ = _parts(4, seed=23, defect="spot")
    fresh_scores, _ = trained(fresh)
    bad_scores, _ = trained(bad)
    in_sample, _ = trained(good)
    assert abs(float(np.median(fresh_scores))) < 2.0  # z units: good parts the bank never saw sit near 0
    assert np.median(in_sample) < np.median(fresh_scores)  # their own patches in the bank: lower than unseen
    assert bad_scores.min() > fresh_scores.max()
    with torch.no_grad():  # the score is the largest z-score of the three statistics, as documented
        stats = head.statistics(head.smoothed(trained.graph.patch_distances(images_to_tensor(bad))))
    z = (stats - torch.tensor(info["mean"])) / torch.tensor(info["std"])
    np.testing.assert_allclose(bad_scores, z.max(dim=1).values.numpy(), rtol=1e-3, atol=1e-3)
    path = tmp_path / "model.onnx"
    trained.export_onnx(path)
    x = images_to_tensor(fresh[:2] + bad[:2]).numpy()
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, np.concatenate([fresh_scores[:2], bad_scores[:2]]), rtol=1e-3, atol=1e-3)


def test_fused_pooling_refuses_the_image_gaussian() -> None:
    """The Gaussian's weight is in units of the top-mean bank score, which fused pooling replaces."""
    assert parse_options({"pool": "fused"})["pool"] == "fused"
    with pytest.raises(ValueError, match="gaussian needs pool=top"):
        parse_options({"pool": "fused", "gaussian": "1"})
    with pytest.raises(ValueError, match="pool"):
        parse_options({"pool": "median"})
