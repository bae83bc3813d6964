"""The input size chosen from the training images: aspect kept, small images never enlarged; and a
non-square bundle end to end (fit -> manifest -> the daemon's preprocessing and detector)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from devkit.support import read_image
from edged.bundle import load_manifest
from edged.detector import Detector
from tools import input_size, synth


def test_long_parts_keep_their_aspect_at_the_pixel_budget() -> None:
    w, h = input_size.choose([(1280, 320)] * 5, base=160, low=64, high=1024)
    assert (w, h) == (320, 80) and w * h == 160 * 160  # 4:1 kept, 25600 px
    assert input_size.choose([(320, 1280)], 160, 64, 1024) == (80, 320)


def test_small_images_are_not_enlarged() -> None:
    assert input_size.choose([(100, 90), (110, 96), (104, 92)], base=224, low=16, high=1024) == (96, 80)
    assert input_size.choose([(400, 300)], base=160, low=64, high=1024) == (192, 144)  # shrunk, aspect 4:3
    assert input_size.choose([(160, 120)], base=160, low=64, high=1024) == (160, 112)  # 120 is not rounded up


def test_square_only_methods_and_limits() -> None:
    assert input_size.choose([(1280, 320)], 160, 64, 1024, non_square=False) == (160, 160)
    assert input_size.choose([(60, 40)], 160, 64, 1024, non_square=False) == (64, 64)  # the method's floor
    w, h = input_size.choose([(4000, 100)], 160, 64, 1024)
    assert w / h == pytest.approx(4.0, rel=0.2)  # clamped to 4:1
    assert input_size.choose([], 160, 64, 1024) == (160, 160)


def test_parse_size() -> None:
    assert input_size.parse_size("auto") is None
    assert input_size.parse_size("224") == (224, 224)
    assert input_size.parse_size("384x128") == (384, 128)
    for bad in ("", "x", "12x", "1e3", "-5", "224x224x3"):
        with pytest.raises(ValueError, match="--size"):
            input_size.parse_size(bad)


@pytest.mark.slow
def test_non_square_bundle_end_to_end(tmp_path: Path) -> None:
    """`edged-train fit` on long parts with no --size: the bundle keeps their 4:1 shape, and the daemon
    (check-config, Detector, `edged replay`) runs it and finds the defects in frame coordinates."""
    data = synth.write_dataset(tmp_path / "rail", n_train=24, n_test_good=6, n_test_defect=6, size=(256, 64),
                               seed=3)
    out = tmp_path / "bundle"
    fit = subprocess.run([sys.executable, "-m", "tools.cli", "fit", str(data), "--out", str(out), "--folds", "3",
                          "--opt", "coreset=0.05", "-q"], capture_output=True, text=True, timeout=600)
    assert fit.returncode == 0, fit.stderr
    m = load_manifest(out)
    assert (m.input.width, m.input.height) == (256, 64) and m.training.params["size_chosen_from_data"]
    frames = [read_image(p) for p in sorted((data / "test").rglob("*.png"))]
    labels = [p.parent.name != "good" for p in sorted((data / "test").rglob("*.png"))]
    results = Detector(out).infer(frames)
    assert results[0].anomaly_map is not None and results[0].anomaly_map.shape == (64, 256)
    scores = np.array([r.score for r in results])
    assert scores[np.array(labels)].min() > scores[~np.array(labels)].max()  # these defects are plain
    cfg = tmp_path / "edged.yaml"
    cfg.write_text(f"station: t\nmodel: {{bundle: {out}}}\ncameras: [{{name: c, source: '{data / 'test'}'}}]\n"
                   f"mqtt: {{enabled: false}}\nstorage: {{state_dir: {tmp_path / 'state'}}}\n")
    check = subprocess.run([sys.executable, "-m", "edged", "check-config", "-c", str(cfg)], capture_output=True,
                           text=True, timeout=120)
    assert check.returncode == 0, check.stderr
    assert "256x64" in check.stdout + check.stderr
    assert "light normalized per image" in check.stdout  # the synthetic line's steady lamp: --normalize auto chose it
