"""Round trip: generated images -> fit -> bundle -> the daemon's Detector gives the right verdicts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edged.bundle import load_manifest, sha256_file
from edged.detector import Detector
from tools import synth
from tools.fit import FitConfig, FitError, available_methods, fit_bundle, get_method
from tools.methods.base import FitOptions


def _fresh_parts(n: int, seed: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    good = [synth.make_part(rng, (64, 64))[0] for _ in range(n)]
    bad = [synth.make_part(rng, (64, 64), synth.DEFECTS[i % 3])[0] for i in range(n)]
    return good, bad


@pytest.fixture(scope="module")
def band_bundle(synth_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fit") / "bundle"
    fit_bundle(FitConfig(data=synth_data, method="band-test", out=out,
                         options=FitOptions(size=64, seed=1, progress=False)))
    return out


def test_bundle_is_complete_and_honest(band_bundle: Path, synth_data: Path) -> None:
    m = load_manifest(band_bundle)
    assert m.method == "band-test" and m.bundle_id.startswith("band-test-")
    assert {e.file for e in m.models.values()} == {"model.onnx", "model.fp32.onnx"}
    for entry in m.models.values():
        assert entry.sha256 == sha256_file(band_bundle / entry.file)
        t = entry.threshold
        assert t.method == "percentile" and t.percentile == 99.5
        assert t.n_images == m.training.holdout == round(30 * 0.15)
        assert entry.map_threshold is not None
    assert m.training.count + m.training.holdout == 30
    assert len(m.training.file_list_sha256) == 64
    assert m.versions["onnxruntime"] and m.versions["onnx"]
    q = m.quantization
    assert q["enabled"] and q["format"] == "QDQ" and q["ops"]["int8"].get("Conv") == 1
    assert q["parity"]["test"]["auroc_int8"] is not None
    assert not any(p.name.endswith(".partial") for p in band_bundle.parent.iterdir())


def test_daemon_verdicts_separate_good_and_defective(band_bundle: Path) -> None:
    good, bad = _fresh_parts(12, seed=99)  # parts the model never saw
    for precision in ("fp32", "int8"):
        det = Detector(band_bundle, precision=precision)
        good_rejected = sum(o.score > det.threshold for o in det.infer(good))
        bad_rejected = sum(o.score > det.threshold for o in det.infer(bad))
        assert bad_rejected >= 11, (precision, bad_rejected)
        assert good_rejected <= 1, (precision, good_rejected)
        # regions: the map exceeds the map threshold on defective parts, not on good ones
        maps_bad = [o.anomaly_map for o in det.infer(bad)]
        assert det.map_threshold is not None
        assert sum((m > det.map_threshold).any() for m in maps_bad) >= 11


def test_fit_is_reproducible(synth_data: Path, tmp_path: Path) -> None:
    hashes = []
    for i in range(2):
        m = fit_bundle(FitConfig(data=synth_data, method="classic", out=tmp_path / f"b{i}",
                                 options=FitOptions(size=64, seed=3, progress=False), check_test=False)).manifest
        hashes.append((m.models["fp32"].sha256, m.models["fp32"].threshold.value, m.training.file_list_sha256))
    assert hashes[0] == hashes[1]


def test_classic_bundle_round_trip(synth_data: Path, tmp_path: Path) -> None:
    """classic runs features in the daemon; a strongly different part (no part at all) is rejected."""
    result = fit_bundle(FitConfig(data=synth_data, method="classic", out=tmp_path / "c",
                                  options=FitOptions(size=64, progress=False)))
    m = result.manifest
    assert m.input.kind == "features" and m.input.features == "classic-v1"
    assert m.models["int8"].file == m.models["fp32"].file and m.default == "fp32"
    assert "int8 entry points to model.fp32.onnx" in str(m.quantization["note"])
    det = Detector(tmp_path / "c")
    good, _ = _fresh_parts(6, seed=5)
    empty_belt = np.full((64, 64, 3), 55, np.uint8)
    scores = [o.score for o in det.infer([*good, empty_belt])]
    assert scores[-1] > det.threshold > float(np.median(scores[:-1]))


def test_holdout_never_trained_and_out_dir_safety(synth_data: Path, tmp_path: Path) -> None:
    victim = tmp_path / "notabundle"
    victim.mkdir()
    (victim / "precious.txt").write_text("x")
    with pytest.raises(FitError, match="refusing"):
        fit_bundle(FitConfig(data=synth_data, method="classic", out=victim,
                             options=FitOptions(size=64, progress=False)))
    assert (victim / "precious.txt").exists()
    with pytest.raises(FitError, match="unknown method"):
        get_method("no-such-method")


def test_methods_are_discovered() -> None:
    names = available_methods()
    assert "classic" in names and "band-test" in names


def test_holdout_outliers_are_named(tmp_path: Path) -> None:
    from tools.dataset import Record
    from tools.fit import holdout_outliers

    records = [Record(tmp_path / f"{i}.png") for i in range(20)]
    scores = np.r_[np.linspace(0.0, 1.0, 19), 25.0]
    assert holdout_outliers(scores, records, tmp_path) == [{"file": "19.png", "score": 25.0, "index": 19}]
    assert holdout_outliers(np.linspace(0.0, 1.0, 20), records, tmp_path) == []


def test_int8_parity_without_test_data_uses_synthetic_blemishes(tmp_path: Path) -> None:
    good = tmp_path / "good"
    synth.write_folder(good, 24, [], size=(64, 64), seed=2)  # a plain folder of good images
    m = fit_bundle(FitConfig(data=good, method="band-test", out=tmp_path / "b",
                             options=FitOptions(size=64, progress=False))).manifest
    check = m.quantization["parity"]["synthetic"]
    assert check["n"] == 2 * m.training.holdout and check["auroc_fp32"] > 0.9
    assert m.default == "int8" and "synthetic" in str(m.quantization["default_reason"])


def test_int8_that_loses_ranking_is_not_the_default() -> None:
    from tools.dataset import Record
    from tools.fit import _parity

    rng = np.random.default_rng(0)
    labels_good = [Record(Path(f"g{i}"), "good", None, "test") for i in range(20)]
    labels_bad = [Record(Path(f"b{i}"), "spot", None, "test") for i in range(20)]
    fp32_test = np.r_[rng.normal(0, 1, 20), rng.normal(3, 1, 20)]
    cfg = FitConfig(data=Path("."), method="x", out=Path("."))
    fine = {"hold": rng.normal(0, 1, 6), "test": fp32_test}
    same = {k: v + 1e-3 for k, v in fine.items()}
    parity, default = _parity({"fp32": fine, "int8": same}, labels_good + labels_bad, True, cfg)
    assert default == "int8" and "warning" not in parity
    broken = {"hold": fine["hold"], "test": rng.permutation(fp32_test)}
    parity, default = _parity({"fp32": fine, "int8": broken}, labels_good + labels_bad, True, cfg)
    assert default == "fp32" and "int8 loses" in parity["warning"]
