"""Inference workers: a model that outputs NaN or infinity never passes a part."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import cv2
import onnx
import pytest
from onnx import TensorProto, helper

from devkit.support import spot_frame, write_config
from edged.bundle import InputSpec, Manifest, ModelFile, OutputSpec, Threshold, sha256_file, write_manifest
from edged.config import load_config
from edged.sdnotify import Notifier
from edged.service import Service


def build_blowup_bundle(out: Path, op: str, size: int = 32) -> Path:
    """A real bundle that is finite on dark frames (a blank one included) and blows up on a bright spot:
    map = 1 / (1 - x) gives +inf where a pixel is 255 ('Reciprocal'); log(0.5 - x) gives NaN ('Log')."""
    out.mkdir(parents=True, exist_ok=True)
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, size, size])
    amap = helper.make_tensor_value_info("anomaly_map", TensorProto.FLOAT, ["N", 1, size, size])
    score = helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N"])
    c = helper.make_tensor("c", TensorProto.FLOAT, [], [1.0 if op == "Reciprocal" else 0.5])
    nodes = [helper.make_node("Sub", ["c", "input"], ["d"]), helper.make_node(op, ["d"], ["anomaly_map"]),
             helper.make_node("ReduceSum", ["anomaly_map"], ["s"], keepdims=0),
             helper.make_node("Reshape", ["s", "shape"], ["score"])]
    shape = helper.make_tensor("shape", TensorProto.INT64, [1], [-1])
    graph = helper.make_graph(nodes, "blowup", [x], [score, amap], initializer=[c, shape])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, out / "model.onnx")
    entry = ModelFile(file="model.onnx", sha256=sha256_file(out / "model.onnx"), precision="int8",
                      threshold=Threshold(value=1e9, method="manual"), map_threshold=1e9)
    write_manifest(out, Manifest(bundle_id="blowup", method="test", created="2026-12-01T00:00:00Z",
                                 input=InputSpec(width=size, height=size), models={"int8": entry},
                                 outputs=OutputSpec(score="score", map="anomaly_map")))
    return out


@pytest.mark.parametrize("op", ["Reciprocal", "Log"])
def test_a_model_that_outputs_nan_or_inf_never_passes_a_part(tmp_path: Path, op: str,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    bundle = build_blowup_bundle(tmp_path / "bundle", op)
    folder = tmp_path / "frames"
    folder.mkdir()
    broken = {2, 5, 6, 9}
    for i in range(12):
        cv2.imwrite(str(folder / f"{i:02d}.png"), spot_frame(i in broken, seed=i))
    cfg = load_config(write_config(tmp_path / "edged.yaml", bundle, folder, tmp_path / "state"))
    service = Service(cfg, notifier=Notifier({}), handle_signals=False)
    with caplog.at_level("ERROR"):
        assert service.run() == 0
    c = service.counters
    assert c.invalid_outputs == len(broken) and c.inspected == 12 - len(broken) and c.rejects == 0
    assert "NOT INSPECTED: model output is not finite" in caplog.text
    assert caplog.text.count("NOT INSPECTED") < len(broken), "logged rate-limited, not once per frame"
    db = sqlite3.connect(tmp_path / "state" / "edged.db")
    seqs = {s for (s,) in db.execute("SELECT seq FROM inspections")}
    assert seqs == set(range(12)) - broken, "no row (and never reason 'ok') for a frame the model blew up on"
    health = (tmp_path / "state" / "health.json").read_text()
    assert "NaN" not in health and "Infinity" not in health
    assert json.loads(health)["invalid_outputs"] == len(broken)
