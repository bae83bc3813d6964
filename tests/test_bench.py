"""scripts/bench.py in a tiny configuration, so the benchmark cannot rot. Nothing here checks speed.

A tiny real ONNX bundle, a 40-frame video, a real mosquitto: one fixed-rate run and one flat-out run
through the real pipeline, the reference loop for a few images, one start-up; then the JSON and the
markdown are checked for their shape and for counts that must hold on any machine.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

from devkit.support import MOSQUITTO, build_max_bundle, load_script, write_spot_video

ROOT = Path(__file__).resolve().parents[1]


def load_bench() -> ModuleType:
    return load_script("bench")


def _tiny_line(tmp_path: Path) -> tuple[ModuleType, Path, Path]:
    """bench.py, a bundles folder with one tiny CAE and a 40-frame video with a spot every 10th frame: what the
    pipeline benchmarks run on in a test (they publish through mosquitto: skipped without it)."""
    if not Path(MOSQUITTO).exists():
        pytest.skip("mosquitto is not installed (scripts/test.sh installs it)")
    bundles = tmp_path / "bundles"
    build_max_bundle(bundles / "cae-128", size=32)
    video = tmp_path / "line.avi"
    write_spot_video(video, 40, set(range(0, 40, 10)), size=(80, 60))
    return load_bench(), bundles, video


@pytest.mark.timeout(300)
def test_tiny_benchmark_writes_json_and_markdown(tmp_path: Path) -> None:
    bench, bundles, video = _tiny_line(tmp_path)
    out_json, out_md = tmp_path / "perf.json", tmp_path / "perf.md"
    rc = bench.main(["run", "--bundles", str(bundles), "--work", str(tmp_path / "work"), "--video", str(video),
                     "--only", "cae-128-int8", "--rates", "30", "0", "--duration", "1.5", "--warmup", "0.3",
                     "--baseline-images", "4", "--baseline-sizes", "32", "--startup-runs", "1",
                     "--json", str(out_json)])  # the markdown goes beside it, never over docs/performance.md
    assert rc == 0 and out_md.is_file()
    report = json.loads(out_json.read_text())
    assert report["machine"]["cores"] >= 1 and report["machine"]["cpu_model"]
    assert len(report["load_avg_start"]) == 3
    assert [(b["size"], b["threads"]) for b in report["baseline"]] == [(32, 1), (32, 2)]
    assert all(b["images"] == 4 and b["images_per_s"] > 0 for b in report["baseline"])
    fixed, flat = report["results"]
    assert (fixed["rate_fps"], flat["rate_fps"]) == (30.0, "max")
    for r in (fixed, flat):
        assert r["bundle"] == "cae-128-int8" and r["precision"] == "int8"
        assert r["inspected"] > 0 and r["throughput_fps"] > 0 and r["peak_rss_mb"] > 0
        assert r["stages_ms"]["infer"]["n"] > 0 and r["verdict_ms"]["p50"] is not None
        assert set(r["stages_ms"]) == set(bench.STAGES)
    assert "vs_reference" not in fixed and flat["vs_reference"]["throughput_x"] > 0  # flat out only
    assert flat["drops"] == 0  # a flat-out replay waits for room instead of dropping
    assert fixed["rejects_received"] + flat["rejects_received"] > 0  # rejects went through MQTT
    assert report["startup_s"]["runs"][0] > 0
    md = out_md.read_text()
    assert "| cae-128-int8 | 30.0 |" in md and "| cae-128-int8 | max |" in md
    assert report["machine"]["cpu_model"] in md


def test_input_health_benchmark_runs(tmp_path: Path) -> None:
    bench = load_bench()
    out = tmp_path / "ih.json"
    assert bench.main(["input-health", "--work", str(tmp_path), "--video-size", "160x120", "--frames", "20",
                       "--calls", "50", "--json", str(out)]) == 0
    runs = json.loads(out.read_text())["runs"]
    assert [r["opencv_threads"] for r in runs] == [1, 2] and all(r["ms"]["n"] == 50 for r in runs)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_tiny_runtimes_benchmark(tmp_path: Path) -> None:
    """bench.py runtimes: each verified runtime x precision through the pipeline, then auto (issue 19)."""
    pytest.importorskip("openvino")
    bench, bundles, video = _tiny_line(tmp_path)
    out_json = tmp_path / "rt.json"
    assert bench.main(["runtimes", "--bundles", str(bundles), "--work", str(tmp_path / "work"), "--video", str(video),
                       "--rates", "0", "--duration", "0.8", "--warmup", "0.3", "--baseline-images", "0",
                       "--json", str(out_json)]) == 0
    report = json.loads(out_json.read_text())
    b = report["bundles"]["cae-128"]
    assert {(r["runtime"], r["precision"]) for r in b["model"]} == {("onnxruntime", "fp32"), ("onnxruntime", "int8"),
                                                                     ("openvino", "fp32"), ("openvino", "int8"),
                                                                     ("opencv", "fp32")}
    assert all(r["passed"] and r["model_ms_p50"] > 0 for r in b["model"])
    assert [(r["case_runtime"], r["runtime"]) for r in b["runs"][:-1]] == [
        (r["runtime"], r["runtime"]) for r in b["model"]]  # each ran in the runtime it was asked for
    auto = b["runs"][-1]
    assert auto["case_runtime"] == "auto" and auto["runtime"] in ("onnxruntime", "openvino")
    assert tuple(b["auto"]["auto_chose"]) == (auto["runtime"], auto["precision"])
    assert all(r["inspected"] > 0 and r["peak_rss_mb"] > 0 for r in b["runs"])
