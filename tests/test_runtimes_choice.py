"""Runtimes (edged/runtimes/): the same scores in each, verify's records, and what `model.runtime` may run.

A real bundle built here (devkit.support.build_max_bundle: the map is the gray input, the score its
maximum), verified by tools/verify.py exactly as `edged-train verify` does; no runtime is mocked.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from devkit.support import build_max_bundle, spot_frame, write_config
from edged import cli
from edged.bundle import BundleError, RuntimeCheck, load_manifest, write_manifest
from edged.detector import Detector
from edged.runtimes import choice, registry
from tools.cli import main as train
from tools.verify import PARITY_TOLERANCE, verify_bundle

pytest.importorskip("openvino")  # the optional extra edged[openvino]; scripts/setup.sh installs it for tests


@pytest.fixture(scope="module")
def verified(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle with both precisions verified under every installed runtime (stand-in images)."""
    bundle = build_max_bundle(tmp_path_factory.mktemp("rt") / "bundle", size=32)
    verify_bundle(bundle)
    return bundle


def frames() -> list[np.ndarray]:
    return [spot_frame(defective=i % 2 == 1, seed=i) for i in range(6)]


def copy_bundle(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def with_check(bundle: Path, runtime: str, precision: str, **update: object) -> None:
    """Rewrite one verification record of the manifest (as verify writes it on another machine or model)."""
    manifest = load_manifest(bundle)
    checks = tuple(c.model_copy(update=update) if (c.runtime, c.precision) == (runtime, precision) else c
                   for c in manifest.verified)
    write_manifest(bundle, manifest.model_copy(update={"verified": checks}))


def test_verify_records_parity_and_latency_of_each_runtime_and_precision(verified: Path) -> None:
    manifest = load_manifest(verified)
    pairs = {(c.runtime, c.precision) for c in manifest.verified}
    assert pairs == {("onnxruntime", "fp32"), ("onnxruntime", "int8"), ("openvino", "fp32"), ("openvino", "int8"),
                     ("opencv", "fp32")}  # cv2.dnn is fp32 only
    for c in manifest.verified:
        assert c.passed and c.max_diff is not None and c.max_diff <= PARITY_TOLERANCE, c
        assert c.tolerance == PARITY_TOLERANCE and c.n_images == 16 and c.images.startswith("stand-in")
        assert c.latency_ms is not None and 0 < c.latency_ms[0] <= c.latency_ms[1]
        assert c.cpu == choice.cpu_model() and c.version == registry.version(c.runtime)
    assert manifest.runtimes == ("onnxruntime", "openvino", "opencv")
    # only manifest.json changed: the model files still match their hashes, so the bundle loads verified
    Detector(verified, runtime="openvino", verify=True)


def test_runtimes_give_the_same_scores_and_maps(verified: Path) -> None:
    ref = Detector(verified, precision="fp32", runtime="onnxruntime").infer(frames())
    for runtime in ("openvino", "opencv"):
        det = Detector(verified, precision="fp32", runtime=runtime)
        assert det.runtime == runtime and det.choice.mode == "explicit"
        for a, b in zip(ref, det.infer(frames()), strict=True):
            assert abs(a.score - b.score) <= 1e-5
            assert a.anomaly_map is not None and b.anomaly_map is not None
            np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=1e-5)
    assert [o.score > 0.5 for o in ref] == [False, True] * 3  # the spots are found, the dark frames pass


def test_openvino_runs_batches_from_several_threads(verified: Path) -> None:
    import threading

    det = Detector(verified, precision="int8", runtime="openvino")
    batch = frames()
    want = [o.score for o in det.infer(batch)]
    got: list[list[float]] = []
    threads = [threading.Thread(target=lambda: got.append([o.score for o in det.infer(batch)])) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == [want] * 4


def test_a_runtime_that_failed_parity_is_refused_by_name_and_left_out_by_auto(verified: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(verified, tmp_path / "b")
    for precision in ("fp32", "int8"):
        with_check(bundle, "openvino", precision, passed=False, max_diff=0.034)
    with pytest.raises(BundleError, match=r"model.runtime: openvino: the int8 model failed the parity check under "
                                          r"openvino \(scores differ from ONNX Runtime's by up to 3.4% of the "
                                          r"threshold, tolerance 1%\)"):
        Detector(bundle, runtime="openvino")
    auto = Detector(bundle, runtime="auto")
    assert auto.runtime != "openvino"
    assert {(t.runtime, t.precision) for t in auto.choice.timings} == {("onnxruntime", "int8"), ("onnxruntime", "fp32")}


def test_an_unverified_runtime_is_refused_until_verify_runs(tmp_path: Path) -> None:
    bundle = build_max_bundle(tmp_path / "b")  # no verification records: as bundles before verify
    with pytest.raises(BundleError, match=r"model\.runtime: openvino: the int8 model was not verified under openvino: "
                                          "run edged-train verify"):
        Detector(bundle, runtime="openvino")
    auto = Detector(bundle, runtime="auto")  # what it always ran: ONNX Runtime, the bundle's default precision
    assert (auto.runtime, auto.precision, auto.choice.timings) == ("onnxruntime", "int8", ())
    assert Detector(bundle, runtime="opencv").runtime == "opencv"  # fit's own OpenCV check still counts
    assert train(["verify", str(bundle), "-q"]) == 0
    assert Detector(bundle, runtime="openvino").runtime == "openvino"


def test_auto_takes_the_manifest_figures_measured_on_this_cpu(verified: Path, tmp_path: Path) -> None:
    bundle = copy_bundle(verified, tmp_path / "b")
    figures = {("onnxruntime", "int8"): 2.0, ("onnxruntime", "fp32"): 3.0, ("openvino", "int8"): 4.0,
               ("openvino", "fp32"): 1.5, ("opencv", "fp32"): 5.0}
    for (runtime, precision), ms in figures.items():
        with_check(bundle, runtime, precision, latency_ms=(ms, 2 * ms))
    det = Detector(bundle, runtime="auto")
    assert (det.runtime, det.precision) == ("openvino", "fp32")
    # cv2.dnn (5.0 ms here) serializes its calls: auto leaves it to machines where nothing else may run
    assert [t.median_ms for t in det.choice.timings] == [1.5, 2.0, 3.0, 4.0]
    assert {t.source for t in det.choice.timings} == {"manifest"}
    assert "fastest of openvino/fp32 1.50 ms" in det.choice.describe()
    # a configured precision limits the choice to it
    assert Detector(bundle, precision="int8", runtime="auto").runtime == "onnxruntime"
    # with a GPU provider configured the CPU figures say nothing: timed here (CPU is the fallback provider)
    det = Detector(bundle, runtime="auto", providers=("cuda", "cpu"))
    assert {t.source for t in det.choice.timings} == {"measured"}
    # figures from another CPU are not trusted: the candidates are timed here
    for runtime, precision in figures:
        with_check(bundle, runtime, precision, cpu="Some Other CPU")
    det = Detector(bundle, runtime="auto")
    assert {t.source for t in det.choice.timings} == {"measured"} and len(det.choice.timings) == 4
    assert (det.runtime, det.precision) == (det.choice.timings[0].runtime, det.choice.timings[0].precision)


def test_check_config_and_the_health_dict_say_what_auto_chose(verified: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path / "edged.yaml", verified, tmp_path / "none.mp4", tmp_path / "state")
    assert cli.main(["check-config", "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    runtime_line = next(line for line in out.splitlines() if line.startswith("runtime:"))
    chosen = next(line for line in out.splitlines() if "chosen:" in line)
    assert chosen.split("chosen: ")[1].startswith("auto: fastest of ")
    # the verify run's figures were measured on this CPU, so the daemon takes them instead of timing again
    assert "onnxruntime/int8" in chosen and "openvino/fp32" in chosen and "(manifest figures, same CPU)" in chosen
    winner = chosen.split("fastest of ")[1].split("/")[0]
    assert runtime_line.startswith(f"runtime:  {winner}, provider ")
    det = Detector(verified, runtime="auto")
    health = det.choice.as_dict()
    assert (health["runtime"], health["precision"], health["mode"]) == (det.runtime, det.precision, "auto")
    assert set(health["timings_ms"]) == {"onnxruntime/int8", "onnxruntime/fp32", "openvino/int8", "openvino/fp32"}
    from edged.payloads import runtime_label

    assert runtime_label({"runtime_choice": health}) == f"{det.runtime}/{det.precision} (auto)"


def test_a_runtime_that_is_not_installed_is_refused_with_exit_2(verified: Path, tmp_path: Path) -> None:
    hidden = tmp_path / "hide"  # a child whose `import openvino` fails, as on a device without the extra
    hidden.mkdir()
    (hidden / "openvino.py").write_text("raise ImportError('openvino is not installed here')\n")
    cfg = write_config(tmp_path / "edged.yaml", verified, tmp_path / "none.mp4", tmp_path / "state")
    cfg.write_text(cfg.read_text().replace(f"model: {{bundle: {verified}}}",
                                           f"model: {{bundle: {verified}, runtime: openvino}}"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(hidden), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "edged", "check-config", "-c", str(cfg)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "model.runtime: openvino: openvino is not installed here (pip install 'edged[openvino]')" in proc.stderr
    assert "Traceback" not in proc.stderr
    # auto on the same machine runs what is installed, even where the manifest says OpenVINO is fastest
    bundle = copy_bundle(verified, tmp_path / "b")
    for precision in ("fp32", "int8"):
        with_check(bundle, "openvino", precision, latency_ms=(1e-6, 1e-6))
    cfg.write_text(cfg.read_text().replace(f"bundle: {verified}, runtime: openvino",
                                           f"bundle: {bundle}, runtime: auto"))
    proc = subprocess.run([sys.executable, "-m", "edged", "check-config", "-c", str(cfg)], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "runtime:  onnxruntime, provider" in proc.stdout
    assert "chosen: auto: fastest of onnxruntime/" in proc.stdout


def test_an_old_manifest_without_verification_still_loads(tmp_path: Path) -> None:
    bundle = build_max_bundle(tmp_path / "b")
    raw = json.loads((bundle / "manifest.json").read_text())
    raw.pop("verified")
    raw["runtimes"] = ["onnxruntime"]
    (bundle / "manifest.json").write_text(json.dumps(raw))
    assert load_manifest(bundle).verified == ()
    with pytest.raises(BundleError, match="not verified to run correctly under OpenCV DNN"):
        Detector(bundle, runtime="opencv")
    assert RuntimeCheck(runtime="openvino", precision="int8", passed=False, tolerance=0.01).max_diff is None


def test_edged_status_shows_the_choice(verified: Path, tmp_path: Path) -> None:
    import io
    import itertools
    import time

    from edged.config import load_config
    from edged.status import render

    det = Detector(verified, runtime="auto")
    cfg = load_config(write_config(tmp_path / "edged.yaml", verified, tmp_path / "none.mp4", tmp_path / "state"))
    health = {"station": "test", "runtime": det.runtime, "provider": det.provider, "threshold": det.threshold,
              "runtime_choice": det.choice.as_dict(), "updated_at": time.time(), "started_at": time.time()}
    out = io.StringIO()
    render(cfg, health, {}, None, out, time.time())
    lines = out.getvalue().splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("chosen"))
    rest = itertools.takewhile(lambda line: line.startswith(" "), lines[at + 1:])
    shown = " ".join([lines[at].split(None, 1)[1], *(line.strip() for line in rest)])
    assert shown == det.choice.describe()  # wrapped under the value column, never cut


@pytest.mark.parametrize(("machine", "flags", "quant", "warned"), [
    ("x86_64", {"avx2"}, {"enabled": True}, True),  # 8-bit weights (a bundle from before reduce_range), no VNNI
    ("x86_64", {"avx2"}, {"enabled": True, "reduce_range": False}, True),
    ("x86_64", {"avx2"}, {"enabled": True, "reduce_range": True}, False),  # 7-bit weights cannot saturate
    ("x86_64", {"avx2", "avx512_vnni"}, {"enabled": True}, False),  # VNNI adds in 32 bits
    ("x86_64", {"avx2", "avx_vnni"}, {"enabled": True}, False),
    ("x86_64", set(), {"enabled": True}, False),  # flags unknown: no guess
    ("aarch64", {"asimd"}, {"enabled": True}, False),  # ARM's int8 dot products add in 32 bits
    ("x86_64", {"avx2"}, {"enabled": False}, False),  # not quantized
    ("x86_64", {"avx2"}, {}, False),  # not made by edged-train: nothing known of its weights
])
def test_an_int8_model_that_may_saturate_on_this_cpu_is_named(tmp_path: Path, machine: str, flags: set[str],
                                                               quant: dict[str, object], warned: bool) -> None:
    bundle = build_max_bundle(tmp_path / "b")  # two real files: model.onnx stands for an int8 one
    man = load_manifest(bundle).model_copy(update={"quantization": quant})
    text = choice.int8_saturation_warning(man, "int8", machine=machine, flags=frozenset(flags))
    assert (text is not None) is warned
    if text:
        assert "no VNNI" in text and "model.precision: fp32" in text
    assert choice.int8_saturation_warning(man, "fp32", machine=machine, flags=frozenset(flags)) is None


def test_check_config_prints_the_saturation_warning_on_such_a_cpu(tmp_path: Path) -> None:
    """This machine's own flags decide; the line is there exactly when the rule says so."""
    bundle = build_max_bundle(tmp_path / "b")
    man = load_manifest(bundle)  # quantized as edged-train did before reduce_range: 8-bit weights
    write_manifest(bundle, man.model_copy(update={"quantization": {"enabled": True, "format": "QDQ"}}))
    cfg = write_config(tmp_path / "edged.yaml", bundle, tmp_path / "frames", tmp_path / "state")
    (tmp_path / "frames").mkdir()
    out = subprocess.run([sys.executable, "-m", "edged", "check-config", "-c", str(cfg)], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    expected = choice.int8_saturation_warning(load_manifest(bundle), "int8") is not None
    assert ("warning:  its int8 model has 8-bit weights" in out.stdout) is expected, out.stdout
