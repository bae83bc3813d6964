"""edged-train: exit codes and one-line errors for user mistakes, a full synth -> fit -> evaluate run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import build_max_bundle
from tools import synth
from tools.cli import UsageError, main, parse_opt


def test_parse_opt() -> None:
    assert parse_opt("detector=ocsvm") == ("detector", "ocsvm")
    assert parse_opt("n=3") == ("n", 3) and parse_opt("x=0.5") == ("x", 0.5)
    assert parse_opt("gray=true") == ("gray", True) and parse_opt("pca=none") == ("pca", None)
    with pytest.raises(UsageError):
        parse_opt("novalue")


def test_user_errors_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty").mkdir()
    cases = [
        ["fit", str(tmp_path / "empty"), "--method", "classic", "--out", str(tmp_path / "o")],
        ["fit", str(tmp_path / "missing"), "--method", "classic", "--out", str(tmp_path / "o")],
        ["evaluate", str(tmp_path / "nobundle"), str(tmp_path / "empty"), "--report", str(tmp_path / "r")],
        ["calibrate", str(tmp_path / "empty"), str(tmp_path / "empty")],
    ]
    for argv in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith(f"edged-train {argv[0]}: error:") and "Traceback" not in err, err
    bundle = build_max_bundle(tmp_path / "b")
    assert main(["calibrate", str(bundle), str(tmp_path / "empty")]) == 2  # no images
    assert main(["fit", str(bundle), "--method", "nope", "--out", str(tmp_path / "o2")]) == 2
    assert "unknown method" in capsys.readouterr().err
    good = tmp_path / "good"
    synth.write_folder(good, 3, [], size=(32, 32))
    assert main(["fit", str(good), "--method", "classic", "--out", str(tmp_path / "o3"), "--holdout", "0"]) == 2
    assert "hold-out fraction must be > 0" in capsys.readouterr().err


def test_bad_usage_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["fit"], ["fit", "x", "--method", "classic", "--out", "o", "--percentile", "99",
                           "--target-frr", "0.1"], ["evaluate", "b", "d"], ["fit", "x", "-m", "c", "-o", "o",
                                                                            "--holdout", "1.5"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2


def test_synth_fit_calibrate_evaluate(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, bundle, report = tmp_path / "data", tmp_path / "bundle", tmp_path / "report"
    assert main(["synth", str(data), "--size", "48", "--train", "16", "--test-good", "4", "--test-defect", "3"]) == 0
    assert main(["fit", "-q", str(data), "--method", "classic", "--out", str(bundle), "--size", "48",
                 "--opt", "n_estimators=50", "--target-frr", "0.0"]) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["training"]["params"]["options"] == {"n_estimators": 50}
    assert manifest["models"]["fp32"]["threshold"]["method"] == "target_frr"
    assert main(["calibrate", "-q", str(bundle), str(data), "--percentile", "90"]) == 0
    assert json.loads((bundle / "manifest.json").read_text())["models"]["fp32"]["threshold"]["percentile"] == 90
    assert main(["evaluate", "-q", str(bundle), str(data), "--report", str(report), "--timing-images", "2"]) == 0
    assert json.loads((report / "report.json").read_text())["n_defect"] == 3
    assert "image AUROC" in capsys.readouterr().out


def test_console_script_reports_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "tools.cli", "fit", str(tmp_path / "none"), "--method", "classic",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "no such folder" in proc.stderr and "Traceback" not in proc.stderr
