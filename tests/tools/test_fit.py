"""Round trip: generated images -> fit -> bundle -> the daemon's Detector gives the right verdicts."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from devkit.support import json_array, json_object, read_image
from edged.bundle import load_manifest, sha256_file
from edged.detector import Detector
from tests.tools.conftest import write_good
from tools import synth
from tools.fit import FitConfig, FitError, check_fit, fit_bundle, with_copies
from tools.methods.base import FitOptions
from tools.methods.registry import UnknownMethodError, get_method


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
        # cross-fitting (the default): every image trains the model and gives one out-of-fold score
        assert t.n_images == m.training.count == 30 and m.training.holdout == 0
        assert "5-fold cross-fit" in t.source
        assert entry.map_threshold is not None
    assert m.training.params["calibration"] == "cross-fit" and m.training.params["folds"] == 5
    assert len(m.training.file_list_sha256) == 64
    assert m.versions["onnxruntime"] and m.versions["onnx"]
    q = json_object(m.quantization)
    assert q["enabled"] and q["format"] == "QDQ" and q["ops"]["int8"].get("Conv") == 1
    assert q["parity"]["test"]["auroc_int8"] is not None
    assert not any(p.name.endswith(".partial") for p in band_bundle.parent.iterdir())
    stats = m.input_stats  # the training images as the daemon's input health measures frames
    assert stats is not None and stats.n_images == 30 and stats.mean[0] <= stats.mean[1]
    assert len(stats.reference_low) == stats.reference_size[0] * stats.reference_size[1]
    # the synthetic line's lamp is steady (+-5%): `--normalize auto` (the default) normalizes, and says so
    assert m.input.normalize == "mean_std" and m.training.params["normalize_chosen_from_data"] is True
    span = m.training.params["light_span"]
    assert isinstance(span, float) and 1.0 <= span < 1.3
    assert stats.light_gain == (0.7, 1.3)  # ... and so its input health tolerates the lamps the graph hides


def test_daemon_verdicts_separate_good_and_defective(band_bundle: Path) -> None:
    good, bad = _fresh_parts(12, seed=99)  # parts the model never saw
    for precision in ("fp32", "int8"):
        det = Detector(band_bundle, precision=precision)
        good_rejected = sum(o.score > det.threshold for o in det.infer(good))
        bad_rejected = sum(o.score > det.threshold for o in det.infer(bad))
        assert bad_rejected >= 11, (precision, bad_rejected)
        assert good_rejected <= 1, (precision, good_rejected)
        # regions: the map exceeds the map threshold on defective parts, not on good ones
        maps_bad = [o.anomaly_map for o in det.infer(bad) if o.anomaly_map is not None]
        assert det.map_threshold is not None and len(maps_bad) == len(bad)
        assert sum(bool((m > det.map_threshold).any()) for m in maps_bad) >= 11


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
    with pytest.raises(UnknownMethodError, match="unknown method"):
        get_method("no-such-method")
    with pytest.raises(FitError, match="unknown method"):
        check_fit(FitConfig(data=synth_data, method="no-such-method", out=tmp_path / "b"))


def test_methods_are_discovered() -> None:
    assert get_method("classic").name == "classic" and get_method("band-test").name == "band-test"


def test_holdout_outliers_are_named(tmp_path: Path) -> None:
    from tools.dataset import Record
    from tools.fit import holdout_outliers

    records = [Record(tmp_path / f"{i}.png") for i in range(20)]
    scores = np.r_[np.linspace(0.5, 1.0, 19), 25.0]
    assert holdout_outliers(scores, records, tmp_path) == [{"file": "19.png", "score": 25.0, "index": 19}]
    assert holdout_outliers(np.linspace(0.0, 1.0, 20), records, tmp_path) == []


def test_int8_parity_without_test_data_uses_synthetic_blemishes(tmp_path: Path) -> None:
    good = tmp_path / "good"
    synth.write_folder(good, 24, [], size=(64, 64), seed=2)  # a plain folder of good images
    m = fit_bundle(FitConfig(data=good, method="band-test", out=tmp_path / "b",
                             options=FitOptions(size=64, progress=False))).manifest
    check = json_object(m.quantization["parity"])["synthetic"]
    assert check["n"] == 2 * m.training.count and check["auroc_fp32"] > 0.9  # each image with and without
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
    # the same ranking of good vs bad, but scores shuffled within each group: AUROC kept, correlation lost
    shuffled = np.r_[rng.permutation(fp32_test[:20]), rng.permutation(fp32_test[20:])]
    loose = {"hold": fine["hold"], "test": shuffled}
    parity, default = _parity({"fp32": fine, "int8": loose}, labels_good + labels_bad, True, cfg)
    assert parity["test"]["auroc_change"] == 0.0
    assert default == "fp32" and "follow fp32 only loosely" in parity["warning"]


# --- issue 21: validation before work, safe output, outliers, bit depth ---------------------------------------------

def _cfg(data: Path, out: Path, method: str = "band-test", size: int = 48, **kw: Any) -> FitConfig:
    extra = kw.pop("extra", {})
    seed = kw.pop("seed", 0)
    return FitConfig(data=data, method=method, out=out, options=FitOptions(size=size, seed=seed, extra=extra,
                                                                           progress=False), **kw)


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_good(tmp_path_factory.mktemp("good") / "good", 16)


@pytest.mark.parametrize(("change", "named"), [
    ({"size": 1}, "--size 1"), ({"size": 7}, "--size 7"), ({"size": 10000}, "--size 10000"),
    ({"method": "classic", "size": 16}, "--size 16: method classic takes 32"),
    ({"holdout": float("nan")}, "--holdout"), ({"percentile": float("inf")}, "--percentile"),
    ({"target_frr": -0.1}, "--target-frr"), ({"int8_auroc_tolerance": float("nan")}, "--int8-tolerance"),
    ({"int8_auroc_tolerance": float("inf")}, "--int8-tolerance"), ({"seed": -1}, "--seed -1"),
    ({"extra": {"colour": 1}}, "band-test: unknown option(s) colour"),
    ({"method": "classic", "extra": {"n_estimators": "many"}}, "classic: --opt n_estimators='many': expected a whole"),
    ({"method": "classic", "extra": {"ratio": 0.1}}, "classic: unknown option(s) ratio"),
    ({"method": "classic", "extra": {"nu": float("nan")}}, "classic: --opt nu=nan: expected a finite number"),
    ({"method": "classic", "extra": {"detector": "forest"}}, "choose one of iforest, ocsvm"),
    ({"method": "cae", "size": 64, "extra": {"lr": -1}}, "cae: --opt lr=-1: must be > 0"),
    ({"method": "cae", "size": 64, "extra": {"ratio": 1}}, "cae: unknown option(s) ratio"),
    ({"method": "cae", "size": 100}, "multiple of 32"),
    ({"method": "patchcore", "size": 32}, "--size 32: method patchcore takes 64"),
    ({"method": "patchcore", "size": 64, "extra": {"coreset": 2}}, "patchcore: --opt coreset=2: must be <= 1"),
    ({"method": "patchcore", "size": 64, "extra": {"ratio": 0.1}}, "patchcore: unknown option(s) ratio"),
])
def test_bad_options_are_named_before_any_work(good_folder: Path, tmp_path: Path, change: dict[str, Any],
                                               named: str) -> None:
    """Each bad option is one FitError naming it, raised before an image is read or a folder is made."""
    out = tmp_path / "deep" / "bundle"
    size = change.pop("size", 48)
    method = change.pop("method", "band-test")
    with pytest.raises(FitError) as exc:
        check_fit(_cfg(good_folder, out, method=method, size=size, **change))
    assert named in str(exc.value)
    assert not (tmp_path / "deep").exists()


def test_too_few_images_is_an_error_saying_how_many(tmp_path: Path) -> None:
    data = write_good(tmp_path / "three", 3)
    with pytest.raises(FitError, match=r"3 good image\(s\) \(2 to train on, 1 held out\): method band-test needs "
                                       r"at least 8 to train on and 2 held out \(with --holdout 0.15: 10 good"):
        check_fit(_cfg(data, tmp_path / "o", folds=0))
    check_fit(_cfg(write_good(tmp_path / "ten", 10), tmp_path / "o", folds=0))  # the number it named is enough
    with pytest.raises(FitError, match=r"3 good image\(s\): method band-test with 5-fold cross-fitting needs at "
                                       r"least 10 \(each fold model trains on 8 or more\)"):
        check_fit(_cfg(data, tmp_path / "o"))
    check_fit(_cfg(write_good(tmp_path / "ten", 10), tmp_path / "o"))
    with pytest.raises(FitError, match=r"--folds 1: must be 0 \(a hold-out split\) or 2 to 20"):
        check_fit(_cfg(data, tmp_path / "o", folds=1))


def test_out_folder_with_foreign_files_is_refused_and_kept(good_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "line1"
    fit_bundle(_cfg(good_folder, out))
    (out / "report").mkdir()
    (out / "report" / "report.html").write_text("an evaluation the user wrote into the bundle")
    (out / "notes.txt").write_text("x")
    with pytest.raises(FitError, match=r"also holds notes\.txt, report"):
        fit_bundle(_cfg(good_folder, out))
    assert (out / "report" / "report.html").read_text().startswith("an evaluation")
    assert load_manifest(out).complete
    assert sorted(p.name for p in tmp_path.iterdir()) == ["line1"]  # no staging folder left
    bystander = tmp_path / "plain"
    bystander.mkdir()
    (bystander / "manifest.json").write_text("{}")  # a manifest.json alone does not make a bundle
    (bystander / "data.csv").write_text("1,2")
    with pytest.raises(FitError, match="not a model bundle"):
        fit_bundle(_cfg(good_folder, bystander))
    assert (bystander / "data.csv").exists()


def test_refit_swaps_the_bundle_and_removes_only_its_files(good_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "line1"
    first = fit_bundle(_cfg(good_folder, out, seed=1)).manifest
    second = fit_bundle(_cfg(good_folder, out, seed=2)).manifest
    assert load_manifest(out) == second and second.complete and first.complete
    assert second.reference_parts is not None
    assert sorted(p.name for p in out.iterdir()) == sorted({"manifest.json", second.reference_parts.file,
                                                            *[e.file for e in second.models.values()]})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["line1"]


KILL_SCRIPT = """
import sys, time
sys.path.insert(0, {root!r})
import tests.tools.conftest  # registers band-test
import tools.fit
parity = tools.fit.opencv_parity
def slow_parity(*args, **kwargs):
    open({ready!r}, "w").close()  # scored with the provisional manifest: now is the worst moment to die
    time.sleep(60)
    return parity(*args, **kwargs)
tools.fit.opencv_parity = slow_parity
from tools.cli import main
sys.exit(main(["fit", "-q", {data!r}, "--method", "band-test", "--out", {out!r}, "--size", "48"]))
"""


def _fit_until_scored(good: Path, out: Path, tmp_path: Path) -> subprocess.Popen[bytes]:
    ready = tmp_path / "ready"
    ready.unlink(missing_ok=True)
    script = KILL_SCRIPT.format(root=str(Path(__file__).parents[2]), ready=str(ready), data=str(good), out=str(out))
    proc = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 120
    while not ready.exists():
        assert proc.poll() is None and time.monotonic() < deadline, "fit ended before it scored"
        time.sleep(0.05)
    return proc


def _check_config(bundle: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "edged.yaml"
    cfg.write_text(f"model: {{bundle: {bundle}}}\ncameras: [{{name: c, source: '0'}}]\n")
    return subprocess.run([sys.executable, "-m", "edged", "check-config", "-c", str(cfg)], capture_output=True,
                          text=True, timeout=120)


def test_killed_fit_leaves_the_old_bundle_and_nothing_check_config_accepts(good_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "line1"
    old = fit_bundle(_cfg(good_folder, out)).manifest
    proc = _fit_until_scored(good_folder, out, tmp_path)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert load_manifest(out) == old  # the previous bundle is untouched
    partial = [p for p in tmp_path.iterdir() if p.name.startswith(".line1.partial-")]
    assert len(partial) == 1 and (partial[0] / "manifest.json").is_file()
    assert json.loads((partial[0] / "manifest.json").read_text())["complete"] is False
    result = _check_config(partial[0], tmp_path)
    assert result.returncode == 2 and "unfinished" in result.stderr and "Traceback" not in result.stderr
    assert _check_config(out, tmp_path).returncode == 0
    fit_bundle(_cfg(good_folder, out))  # the next fit clears what the killed one left
    assert not partial[0].exists()

    proc = _fit_until_scored(good_folder, out, tmp_path)  # SIGTERM: unwinds and cleans up
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 143
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".line1")) == []
    assert load_manifest(out).complete


def test_holdout_outliers_stop_the_fit_or_are_dropped_and_named(tmp_path: Path) -> None:
    data = write_good(tmp_path / "good", 24, odd=2)  # two parts of another product among the good ones
    with pytest.raises(FitError, match=r"2 of 13 hold-out images score far above .*odd_\d.png .*odd_\d.png.* "
                                       r"--drop-outliers"):
        fit_bundle(_cfg(data, tmp_path / "b", method="mean-distance-test", holdout=0.5, folds=0))
    assert not (tmp_path / "b").exists()
    result = fit_bundle(_cfg(data, tmp_path / "b", method="mean-distance-test", holdout=0.5, drop_outliers=True,
                             folds=0))
    m = result.manifest
    dropped = json_array(m.training.params["holdout_outliers"])
    assert sorted(o["file"] for o in dropped) == ["odd_0.png", "odd_1.png"]
    assert m.training.holdout == 11 and m.models["fp32"].threshold.n_images == 11
    assert any("dropped 2 hold-out image(s)" in w for w in result.warnings)
    assert m.models["fp32"].threshold.value < min(o["score"] for o in dropped)


def test_training_outliers_stop_a_cross_fit_or_are_dropped_from_model_and_threshold(tmp_path: Path) -> None:
    """Cross-fitting scores every training image out of fold, so an odd one among them is found too, and
    dropping it leaves it out of the model as well as the threshold."""
    data = write_good(tmp_path / "good", 24, odd=1)
    with pytest.raises(FitError, match=r"1 of 25 good training images score far above .*odd_0.png"):
        fit_bundle(_cfg(data, tmp_path / "b", method="mean-distance-test"))
    assert not (tmp_path / "b").exists()
    result = fit_bundle(_cfg(data, tmp_path / "b", method="mean-distance-test", drop_outliers=True))
    m = result.manifest
    assert [o["file"] for o in json_array(m.training.params["holdout_outliers"])] == ["odd_0.png"]
    assert m.training.count == 24 and m.models["fp32"].threshold.n_images == 24
    assert any("dropped 1 training image(s)" in w for w in result.warnings)


def test_few_holdout_images_come_with_an_interval_that_says_so(good_folder: Path, tmp_path: Path) -> None:
    result = fit_bundle(_cfg(good_folder, tmp_path / "b", folds=0))
    t = result.manifest.models["fp32"].threshold
    assert t.n_images == 2 and t.expected_frr == 0.0
    assert t.frr_interval is not None and t.frr_interval[1] > 0.8  # 2 images promise nothing
    assert any("too few to trust" in w for w in result.warnings)


def test_12_bit_images_are_detected_and_scaled_like_8_bit_ones(tmp_path: Path) -> None:
    """The same parts stored as 8-bit and as 12-bit-in-16-bit PNGs give the same model and scores."""
    eight = write_good(tmp_path / "eight", 14)
    twelve = tmp_path / "twelve"
    twelve.mkdir()
    for f in sorted(eight.iterdir()):
        image = read_image(f, cv2.IMREAD_UNCHANGED)
        cv2.imwrite(str(twelve / f.name), image.astype(np.uint16) << 4 | 0x7)  # 0..4095, as a 12-bit camera
    m8 = fit_bundle(_cfg(eight, tmp_path / "b8")).manifest
    m12 = fit_bundle(_cfg(twelve, tmp_path / "b12")).manifest
    assert m12.input.bit_depth == 12 and m12.training.params["bit_depth"] == 12
    assert m12.models["fp32"].sha256 == m8.models["fp32"].sha256  # trained on the same pixels
    frame = read_image(sorted(twelve.iterdir())[0], cv2.IMREAD_UNCHANGED)
    det12, det8 = Detector(tmp_path / "b12"), Detector(tmp_path / "b8")
    assert det12.infer([frame])[0].score == det8.infer([(frame >> 4).astype(np.uint8)])[0].score
    forced = fit_bundle(_cfg(twelve, tmp_path / "b16", bit_depth=16)).manifest
    assert forced.input.bit_depth == 16 and forced.models["fp32"].sha256 != m8.models["fp32"].sha256


def test_unsupported_image_types_are_named_and_skipped(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = synth.write_dataset(tmp_path / "d", n_train=16, n_test_good=3, n_test_defect=3, size=(48, 48))
    for where in ("train/good", "test/good", "test/crack"):
        cv2.imwrite(str(data / where / "float.tiff"), np.full((48, 48), 0.5, np.float32))
        cv2.imwrite(str(data / where / "signed.tiff"), np.full((48, 48), -5, np.int16))
    with caplog.at_level(logging.WARNING):
        result = fit_bundle(_cfg(data, tmp_path / "b", holdout=0.3))
    for name, kind in (("float.tiff", "float32"), ("signed.tiff", "int16")):
        skipped = [r.getMessage() for r in caplog.records if name in r.getMessage()]
        assert len(skipped) >= 2, (name, skipped)  # train/good (train or hold-out) and the test images
        assert all(f"unsupported pixel type {kind}" in m for m in skipped), skipped
    assert result.manifest.training.count + result.manifest.training.holdout == 16


def test_defect_images_verify_the_threshold_and_choose_nothing(band_bundle: Path, synth_data: Path) -> None:
    """With test/<defect> folders, fit reports what its own threshold does on them, per defect type."""
    from tools.dataset import load_dataset

    v = load_manifest(band_bundle).training.params["verification"]
    assert isinstance(v, dict)
    labels = {r.label for r in load_dataset(synth_data).test if not r.is_good}
    assert set(v["per_defect"]) == labels and v["n_defective"] == 9 and v["n_good"] == 8
    assert v["recall"] > 0.5 and v["frr"] is not None and v["chosen_on_these_images"] is False
    assert v["threshold"] == load_manifest(band_bundle).models[load_manifest(band_bundle).default].threshold.value
    assert "recall at the threshold" in v["summary"]


def test_choose_keeps_the_candidate_that_ranks_the_defects_best_and_evaluate_says_so(
        synth_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--choose fits each candidate, keeps the best by cross-validated AUROC, records the table and why;
    evaluate on the same defect images warns that its figures are optimistic."""
    from tools import choose
    from tools.evaluate import evaluate_bundle

    monkeypatch.setitem(choose.CANDIDATES, "band-test", (
        choose.Candidate("default"), choose.Candidate("mean distance", budget=48)))
    cfg = _cfg(synth_data, tmp_path / "b", size=64, folds=2, auto_size=True)
    result = choose.choose_and_fit(cfg, fit_bundle)
    m = load_manifest(tmp_path / "b")
    choice = json_object(m.training.params["choice"])
    rows = choice["candidates"]
    assert [r["candidate"] for r in rows] == ["default", "mean distance"]
    best = max(rows, key=lambda r: r["crossval_auroc"])
    assert choice["chosen"] == best["candidate"] and "cross-validated" in choice["why"]
    assert json_object(m.training.params["verification"])["chosen_on_these_images"] is True
    assert result.bundle == tmp_path / "b" and sorted(p.name for p in tmp_path.iterdir()) == ["b"]
    report = evaluate_bundle(tmp_path / "b", synth_data, tmp_path / "r", progress=False, write_html=False,
                             timing_images=0)
    assert report["chosen_on_these_defects"] is True
    plain = fit_bundle(_cfg(synth_data, tmp_path / "p", size=64, folds=2)).bundle
    assert evaluate_bundle(plain, synth_data, tmp_path / "r2", progress=False, write_html=False,
                           timing_images=0)["chosen_on_these_defects"] is False


def test_choose_without_defect_images_is_a_clear_error(good_folder: Path, tmp_path: Path) -> None:
    from tools import choose

    with pytest.raises(choose.ChooseError, match="needs defect images"):
        choose.choose_and_fit(_cfg(good_folder, tmp_path / "b", folds=2), fit_bundle)
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
@pytest.mark.parametrize("pool", ["top", "fused"])
def test_calibration_through_jpeg_keeps_good_parts_from_a_camera_that_compresses(tmp_path: Path, pool: str) -> None:
    """patchcore fitted on PNG stills of finely textured parts, then fed new parts through JPEG (a camera's
    MJPG): calibrated on stills only, compression alone rejects good parts; calibrated through JPEG (threshold
    and fused pooling's units), not."""

    from edged.detector import Detector
    from tools.calibrate import score_images
    from tools.camera_effects import through_jpeg

    data = write_good(tmp_path / "good", 30, size=96, seed=5)
    new_parts = write_good(tmp_path / "new", 40, size=96, seed=6)
    frames = [through_jpeg(read_image(p), 50) for p in sorted(new_parts.iterdir())]
    extra = {"coreset": 0.05, "backbone": "lite0", "layers": "s5,s6", "pool": pool}
    rates = {}
    for quality in (0, 50):
        out = tmp_path / f"b{quality}"
        m = fit_bundle(_cfg(data, out, method="patchcore", size=64, folds=3, jpeg_quality=quality,
                            extra=extra)).manifest
        assert m.training.params["calibration_jpeg_quality"] == (quality or None)
        # fused pooling's units count each training image through JPEG too when the fit calibrates so
        if pool == "fused":
            assert json_object(m.training.params["fused_pool"])["camera_copies"] == (30 if quality else 0)
        scores, _ = score_images(Detector(out, precision="fp32"), frames, keep_maps=False)
        rates[quality] = float(np.mean(scores > m.models["fp32"].threshold.value))
    assert rates[0] >= 0.5  # measured 1.0: the still-only threshold rejects compressed good parts
    assert rates[50] <= 0.1  # measured 0.0 (top), 0.025 (fused; 0.225 with its units from the stored images alone)
    with pytest.raises(FitError, match="--calibrate-jpeg 101"):
        check_fit(_cfg(data, tmp_path / "x", jpeg_quality=101))


def test_jpeg_calibration_is_on_for_lossless_training_images_and_off_for_jpegs(tmp_path: Path) -> None:
    from tools.dataset import Record
    from tools.fit import CALIBRATION_JPEG_QUALITY, jpeg_quality_for

    cfg = _cfg(tmp_path, tmp_path / "o")
    pngs = [Record(tmp_path / f"{i}.png") for i in range(4)]
    jpgs = [Record(tmp_path / f"{i}.JPG") for i in range(5)]
    assert jpeg_quality_for(cfg, pngs) == CALIBRATION_JPEG_QUALITY
    assert jpeg_quality_for(cfg, pngs + jpgs) == 0  # mostly JPEGs: the model has seen the artefacts
    assert jpeg_quality_for(_cfg(tmp_path, tmp_path / "o", jpeg_quality=90), jpgs) == 90  # as given


def test_an_out_path_nobody_can_write_is_refused_before_any_work(good_folder: Path) -> None:
    """Root passes every permission check (os.access), but not a virtual file system: the check tries."""
    with pytest.raises(FitError, match=r"--out /proc/.*cannot write in /proc"):
        check_fit(_cfg(good_folder, Path("/proc/edged-test/bundle")))


def test_light_normalization_and_augmentation_reach_the_daemon(tmp_path: Path) -> None:
    good = tmp_path / "good"
    synth.write_folder(good, 24, [], size=(64, 64), seed=3)
    m = fit_bundle(FitConfig(data=good, method="band-test", out=tmp_path / "b", normalize="mean_std",
                             augment_light=1, options=FitOptions(size=64, progress=False))).manifest
    assert m.input.normalize == "mean_std" and m.training.count == 24  # the copies train, they are not counted
    det = Detector(tmp_path / "b", precision="fp32")
    image = read_image(next(good.glob("*.png")))
    dim = (image * 0.7).astype(np.uint8)
    assert abs(det.infer([image])[0].score - det.infer([dim])[0].score) < 0.05 * max(det.threshold, 1e-6) + 1e-3


def test_light_copies_are_the_images_plus_variants() -> None:
    images = [np.full((8, 8), 100, np.uint8), np.full((8, 8), 200, np.uint8)]
    assert with_copies(images, 0, 0) is images
    out = with_copies(images, 2, 0)
    assert len(out) == 6 and out[:2] == images
    assert {int(im[0, 0]) for im in out[2:]} != {100, 200}  # changed light
    assert with_copies(images, 2, 0)[2:][0].tolist() == out[2].tolist()  # seeded


def test_the_first_light_copy_is_under_the_bright_corner_clipped_like_a_sensor() -> None:
    """Clipping is what a brighter lamp brings that no good image shows, so every seed's first copy has it."""
    images = [np.full((8, 8), 250, np.uint8), np.full((8, 8), 100, np.uint8)]
    for seed in range(5):
        out = with_copies(images, 1, seed)
        assert int(out[2][0, 0]) == 255 and int(out[3][0, 0]) > 100


def test_auto_light_copies_follow_the_light_normalization(tmp_path: Path) -> None:
    from edged.bundle import InputSpec
    from tools.fit import light_copies_for

    spec = InputSpec(width=64, height=64)
    cfg = _cfg(tmp_path, tmp_path / "o")
    patchcore, featae = get_method("patchcore"), get_method("featae")
    assert cfg.augment_light is None  # auto is the default
    assert light_copies_for(cfg, spec.model_copy(update={"normalize": "none"}), patchcore) == 1
    assert light_copies_for(cfg, spec.model_copy(update={"normalize": "mean_std"}), patchcore) == 0
    assert light_copies_for(cfg, spec.model_copy(update={"normalize": "none"}), featae) == 0  # not measured worth it
    assert light_copies_for(_cfg(tmp_path, tmp_path / "o", augment_light=3), spec, featae) == 3  # as given


def test_encoded_copies_follow_each_original_after_its_light_copies() -> None:
    """The layout the methods rely on (`FitOptions.copies`, patchcore's `bank_sources`): the originals, then
    each original's light copies and its encoded copy in turn."""
    images = [np.full((8, 8), 100, np.uint8), np.full((8, 8), 250, np.uint8)]
    encoded = [np.full((8, 8), 101, np.uint8), np.full((8, 8), 251, np.uint8)]
    out = with_copies(images, 1, 0, encoded)
    assert len(out) == 6 and out[:2] == images
    assert out[3] is encoded[0] and out[5] is encoded[1]
    assert int(out[2][0, 0]) > 101 and int(out[4][0, 0]) == 255  # light copies of 100 and 250 (x1.3, clipped)
    assert with_copies(images, 0, 0, encoded) == images + encoded
    with pytest.raises(ValueError, match="1 encoded copies for 2 images"):
        with_copies(images, 0, 0, encoded[:1])


def test_encoded_copies_are_made_at_the_size_stored_at_qualities_in_range(tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Each copy is the stored image with sensor noise and through JPEG, then brought to the model's size (a
    camera's blocks, not blocks of the small image); seeded."""
    from edged.bundle import InputSpec
    from edged.preprocess import prepare_uint8
    from tools import fit
    from tools.camera_effects import through_jpeg
    from tools.dataset import Record, model_sized
    from tools.dataset import read_image as read_stored

    good = write_good(tmp_path / "good", 6, size=96, seed=2)
    records = [Record(p) for p in sorted(good.glob("*.png"))]
    spec = InputSpec(width=48, height=48)
    copies = fit.encoded_copies(records, spec, seed=3, progress=False)
    again = fit.encoded_copies(records, spec, seed=3, progress=False)
    assert len(copies) == 6 and all(a.tolist() == b.tolist() for a, b in zip(copies, again, strict=True))
    monkeypatch.setattr(fit, "ENCODED_NOISE", (0.0, 0.0))
    jpeg_only = fit.encoded_copies(records, spec, seed=3, progress=False)
    assert all(a.tolist() != b.tolist() for a, b in zip(copies, jpeg_only, strict=True))  # noise as well
    image = read_stored(records[0].path)
    assert image is not None
    as_stored = prepare_uint8(model_sized(spec)(image), spec)
    assert jpeg_only[0].shape == as_stored.shape and jpeg_only[0].tolist() != as_stored.tolist()
    candidates = [prepare_uint8(model_sized(spec)(through_jpeg(image, q)), spec).tolist()
                  for q in range(fit.ENCODED_QUALITY[0], fit.ENCODED_QUALITY[1] + 1)]
    assert jpeg_only[0].tolist() in candidates  # one of the range's qualities, encoded before the resize


def test_auto_encoded_copies_follow_the_jpeg_calibration(tmp_path: Path) -> None:
    from tools.fit import encoded_copies_for

    patchcore, featae = get_method("patchcore"), get_method("featae")
    lossless = _cfg(tmp_path, tmp_path / "o", jpeg_quality=75)  # jpeg_quality_for's choice for PNG training images
    assert lossless.augment_jpeg is None  # auto is the default
    assert encoded_copies_for(lossless, patchcore)
    assert not encoded_copies_for(_cfg(tmp_path, tmp_path / "o", jpeg_quality=0), patchcore)  # JPEG images
    assert not encoded_copies_for(lossless, featae)  # would double its training patches: not measured worth it
    assert encoded_copies_for(_cfg(tmp_path, tmp_path / "o", jpeg_quality=0, augment_jpeg=True), featae)
    assert not encoded_copies_for(_cfg(tmp_path, tmp_path / "o", jpeg_quality=75, augment_jpeg=False), patchcore)


@pytest.mark.slow
def test_encoded_copies_teach_a_png_trained_model_the_cameras_compression(tmp_path: Path) -> None:
    """patchcore on PNG stills, calibrated through JPEG 75 (the default for lossless images), fed new parts
    through JPEG 50, harsher than the calibration: without the encoded copies the compressed good parts are
    rejected; with them the model knows the blocks, and its threshold need not stretch to cover them."""
    from edged.detector import Detector
    from tools.calibrate import score_images
    from tools.camera_effects import through_jpeg

    data = write_good(tmp_path / "good", 30, size=96, seed=5)
    new_parts = write_good(tmp_path / "new", 40, size=96, seed=6)
    frames = [through_jpeg(read_image(p), 50) for p in sorted(new_parts.iterdir())]
    extra = {"coreset": 0.05, "backbone": "lite0", "layers": "s5,s6"}
    rates, thresholds = {}, {}
    for on in (False, True):
        out = tmp_path / f"b{on}"
        m = fit_bundle(_cfg(data, out, method="patchcore", size=64, folds=3, jpeg_quality=75, augment_jpeg=on,
                            extra=extra)).manifest
        assert m.training.params["encoded_copies"] == ({"jpeg_quality": [40, 90], "noise_sigma": [0.0, 8.0]}
                                                        if on else None)
        assert not m.training.params["encoded_copies_chosen_from_data"]
        scores, _ = score_images(Detector(out, precision="fp32"), frames, keep_maps=False)
        assert m.input_stats is not None and m.input_stats.noise_jpeg_quality == 75  # the calibration's JPEG
        thresholds[on] = m.models["fp32"].threshold.value
        rates[on] = float(np.mean(scores > thresholds[on]))
    assert rates[False] >= 0.5  # measured 1.0
    assert rates[True] <= 0.4  # measured 0.175 (0.075 with JPEG alone in the copy, no noise)
    assert thresholds[True] < 0.8 * thresholds[False]  # measured 24.9 against 43.5: calibration through JPEG 75
    # no longer lifts it far above the stills' scores, so defects get the room


def test_light_corners_are_the_tolerated_range_ends() -> None:
    from tools.fit import LIGHT_CORNERS

    assert max(LIGHT_CORNERS) == 1.3 and min(LIGHT_CORNERS) == 0.7  # the tolerated range's ends (issue 20)


def test_light_calibration_scores_each_calibration_image_under_the_corners(tmp_path: Path) -> None:
    """Same folds, same models: each calibration image keeps its highest score of as stored and under x1.3 and
    x0.7, so the threshold can only rise; the manifest says which corners were used."""
    from tools.fit import camera_variants

    data = write_good(tmp_path / "good", 16)  # the light left as it is: a normalized model would not see the corners
    # no light copies: a model shown the corners would score them as it scores the images (this test's toy)
    plain = fit_bundle(_cfg(data, tmp_path / "plain", folds=3, jpeg_quality=0, normalize="none",
                            augment_light=0)).manifest
    light = fit_bundle(_cfg(data, tmp_path / "light", folds=3, jpeg_quality=0, normalize="none", augment_light=0,
                            calibrate_light=True)).manifest
    assert plain.training.params["calibration_light"] is None
    assert light.training.params["calibration_light"] == [1.3, 0.7]
    assert light.models["fp32"].threshold.value > plain.models["fp32"].threshold.value
    # the same models' scores as stored give the plain bundle's threshold: the manifest says what light cost
    as_stored = light.training.params["threshold_as_stored"]
    assert isinstance(as_stored, dict) and as_stored["fp32"] == pytest.approx(plain.models["fp32"].threshold.value)
    assert "threshold_as_stored" not in plain.training.params
    assert list(camera_variants(_cfg(data, tmp_path / "x", jpeg_quality=75, calibrate_light=True))) == [
        "through JPEG", "under light x1.3", "under light x0.7"]
    assert camera_variants(_cfg(data, tmp_path / "x", jpeg_quality=0)) == {}


@pytest.mark.slow
def test_light_calibration_keeps_good_parts_when_the_lamp_brightens(tmp_path: Path) -> None:
    """patchcore fitted on good parts of a steady lamp, then fed new good parts under a lamp 30% brighter: with
    the light left as it is and calibrated on the images as stored, the light change alone rejects good parts;
    calibrated under the light corners, few; with the default `--normalize auto` (which normalizes such a set), few
    without any light calibration."""
    from tools.calibrate import score_images
    from tools.camera_effects import under_light
    from tools.dataset import Record
    from tools.input_check import verdicts

    data = write_good(tmp_path / "good", 30, size=96, seed=5)
    new_parts = write_good(tmp_path / "new", 40, size=96, seed=6)
    frames = [under_light(read_image(p), 1.3) for p in sorted(new_parts.iterdir())]
    records = [Record(p) for p in sorted(new_parts.iterdir())]
    extra = {"coreset": 0.05, "backbone": "lite0", "layers": "s5,s6"}
    rates: dict[str, float] = {}
    flagged: dict[str, float] = {}
    for name, normalize, on, copies in (("plain", "none", False, 0), ("corners", "none", True, 0),
                                        ("copies", "none", False, None), ("default", "auto", False, None)):
        out = tmp_path / name
        m = fit_bundle(_cfg(data, out, method="patchcore", size=64, folds=3, jpeg_quality=0, calibrate_light=on,
                            normalize=normalize, augment_light=copies, extra=extra)).manifest
        scores, _ = score_images(Detector(out, precision="fp32"), frames, keep_maps=False)
        rates[name] = float(np.mean(scores > m.models["fp32"].threshold.value))
        # what the station's input health says of the same frames: the lamp is a camera change only to a
        # bundle not made to tolerate it (tools.fit.tolerated_light); light copies alone do not count
        assert m.input_stats is not None
        assert m.input_stats.light_gain == ((1.0, 1.0) if name in ("plain", "copies") else (0.7, 1.3))
        share = verdicts(m, records, {"x1.3": lambda im, i: under_light(im, 1.3)}, limit=None)["x1.3"]["flagged"]
        assert isinstance(share, float)
        flagged[name] = share
        if name == "copies":  # auto on a bundle that keeps the light: one copy under the bright corner
            assert m.training.params["light_copies"] == 1 and m.training.params["light_copies_chosen_from_data"]
    assert m.input.normalize == "mean_std"  # the default chose it: the synthetic lamp varies by +-5%
    assert m.training.params["light_copies"] == 0  # ... and so no light copies
    assert rates["plain"] >= 0.3, rates  # measured 0.4: the light change alone rejects good parts
    assert rates["corners"] <= 0.1, rates  # measured 0.0
    assert rates["copies"] <= 0.1, rates  # the model has seen the brighter lamp
    assert rates["default"] <= 0.1, rates
    assert flagged["plain"] == flagged["copies"] and flagged["plain"] >= 0.2, flagged  # measured 0.375
    assert flagged["corners"] == flagged["default"] == 0.0, flagged


def test_bad_light_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FitError, match="--normalize gamma: must be one of auto, none, mean_std"):
        check_fit(FitConfig(data=tmp_path, method="classic", out=tmp_path / "b", normalize="gamma"))
