"""edged-train: exit codes and one-line errors for user mistakes, a full synth -> fit -> evaluate run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devkit.support import build_max_bundle
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


def test_fit_calibrate_light_reaches_the_manifest(tmp_path: Path) -> None:
    """--calibrate-light on a hold-out split: the corners are recorded, with what the threshold was without them."""
    from tests.tools.conftest import write_good

    good, bundle = write_good(tmp_path / "good", 16, size=32), tmp_path / "bundle"
    assert main(["fit", "-q", str(good), "--method", "band-test", "--size", "32", "--holdout", "0.3",
                 "--calibrate-light", "--out", str(bundle)]) == 0
    manifest = json.loads((bundle / "manifest.json").read_text())
    params = manifest["training"]["params"]
    assert params["calibration_light"] == [1.3, 0.7]
    assert manifest["models"]["fp32"]["threshold"]["value"] >= params["threshold_as_stored"]["fp32"]


@pytest.mark.parametrize(("given", "copies", "chosen"), [("auto", 0, True), ("2", 2, False), ("0", 0, False)])
def test_fit_augment_light_reaches_the_manifest(tmp_path: Path, given: str, copies: int, chosen: bool) -> None:
    """--augment-light auto (the default) or a number: the copies the model was shown are recorded (auto gives
    this toy method none: only methods that say so get copies, patchcore in test_fit's slow light test)."""
    from tests.tools.conftest import write_good

    good, bundle = write_good(tmp_path / "good", 16, size=32), tmp_path / "bundle"
    assert main(["fit", "-q", str(good), "--method", "band-test", "--size", "32", "--holdout", "0.3",
                 "--normalize", "none", "--augment-light", given, "--out", str(bundle)]) == 0
    params = json.loads((bundle / "manifest.json").read_text())["training"]["params"]
    assert (params["light_copies"], params["light_copies_chosen_from_data"]) == (copies, chosen)


@pytest.mark.parametrize(("given", "copies"), [("auto", None), ("on", {"jpeg_quality": [40, 90],
                                                                       "noise_sigma": [0.0, 8.0]}), ("off", None)])
def test_fit_augment_jpeg_reaches_the_manifest(tmp_path: Path, given: str, copies: dict[str, Any] | None) -> None:
    """--augment-jpeg auto (the default: only methods that say so, patchcore, get the copy of lossless images)."""
    from tests.tools.conftest import write_good

    good, bundle = write_good(tmp_path / "good", 16, size=32), tmp_path / "bundle"
    assert main(["fit", "-q", str(good), "--method", "band-test", "--size", "32", "--holdout", "0.3",
                 "--augment-jpeg", given, "--out", str(bundle)]) == 0
    params = json.loads((bundle / "manifest.json").read_text())["training"]["params"]
    assert (params["encoded_copies"], params["encoded_copies_chosen_from_data"]) == (copies, given == "auto")


@pytest.mark.parametrize("given", ["9", "-1", "many"])
def test_fit_refuses_a_bad_augment_light(tmp_path: Path, given: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["fit", str(tmp_path), "--augment-light", given, "--out", str(tmp_path / "b")])
    assert exc.value.code == 2 and "--augment-light" in capsys.readouterr().err


def test_console_script_reports_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "tools.cli", "fit", str(tmp_path / "none"), "--method", "classic",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "no such folder" in proc.stderr and "Traceback" not in proc.stderr


# --- issue 21: every argument combination exits 0 or 2, never a traceback; quiet means quiet -------------------------


NASTY = ["0", "-1", "1", "7", "48", "1e9", "nan", "inf", "-inf", "0.5", "1.5", "abc", "", "99.5", "100", "10000",
         "0x10", "3.0"]
OPTS = ["k=v", "n_estimators=5", "n_estimators=nan", "n_estimators=2.5", "detector=ocsvm", "pca=0.5", "pca=-3",
        "colour=1", "=", "nu=2", "gamma=-1", "gamma=auto"]


@pytest.fixture(scope="module")
def arena(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Inputs a user may point the commands at: good data, nothing, an empty folder, a file, a bundle."""
    from tests.tools.conftest import write_good

    root = tmp_path_factory.mktemp("arena")
    places = {"good": write_good(root / "good", 12, size=32), "missing": root / "missing", "empty": root / "empty",
              "file": root / "file.txt", "bundle": root / "bundle"}
    places["empty"].mkdir()
    places["file"].write_text("x")
    assert main(["fit", "-q", str(places["good"]), "--method", "band-test", "--size", "32", "--holdout", "0.2",
                 "--out", str(places["bundle"])]) == 0
    return places


def _flags(names: list[str]) -> st.SearchStrategy[list[str]]:
    pair = st.tuples(st.sampled_from(names), st.sampled_from(NASTY))
    return st.lists(pair, max_size=3).map(lambda pairs: [x for p in pairs for x in p])


COMMANDS = st.one_of(
    st.tuples(st.just("fit"), st.sampled_from(["good", "missing", "empty", "file"]),
              st.sampled_from(["band-test", "classic", "nope"]), _flags(
                  ["--size", "--seed", "--epochs", "--holdout", "--percentile", "--target-frr", "--int8-tolerance",
                   "--bit-depth"]), st.lists(st.sampled_from(OPTS), max_size=2), st.booleans()),
    st.tuples(st.just("calibrate"), st.sampled_from(["bundle", "missing", "file", "good"]),
              st.sampled_from(["good", "missing", "empty", "file"]), _flags(["--percentile", "--target-frr"]),
              st.just([]), st.booleans()),
    st.tuples(st.just("evaluate"), st.sampled_from(["bundle", "missing", "good"]),
              st.sampled_from(["good", "missing", "empty", "file"]), _flags(["--timing-images"]), st.just([]),
              st.booleans()),
)


def _argv(case: tuple[Any, ...], places: dict[str, Path], out: Path) -> list[str]:
    command, a, b, flags, opts, flag = case
    if command == "fit":
        argv = ["fit", "-q", str(places[a]), "--method", b, "--out", str(out), *flags]
        argv += [x for o in opts for x in ("--opt", o)] + (["--drop-outliers"] if flag else [])
    elif command == "calibrate":
        argv = ["calibrate", "-q", str(places[a]), str(places[b]), *flags] + (["--drop-outliers"] if flag else [])
    else:
        argv = ["evaluate", "-q", str(places[a]), str(places[b]), "--report", str(out), *flags]
        argv += ["--fp32"] if flag else []
    return argv


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=COMMANDS)
def test_any_arguments_exit_0_or_2_never_a_traceback(arena: dict[str, Path], tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str], case: tuple[Any, ...]) -> None:
    out = Path(tempfile.mkdtemp(dir=tmp_path)) / "out"  # fresh per example
    argv = _argv(case, arena, out)
    code: int | str | None
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse: bad syntax
        code = exc.code
    err = capsys.readouterr().err
    assert code in (0, 2), (argv, code, err)
    assert "Traceback" not in err, (argv, err)
    if code == 2 and "usage:" not in err:
        errors = [line for line in err.splitlines() if line.startswith("edged-train")]
        assert len(errors) == 1 and ": error: " in errors[0], (argv, err)


def test_quiet_means_quiet_and_logs_have_no_control_characters(tmp_path: Path) -> None:
    """A torch method (tracer warnings, ONNX Runtime quantization) through the console script, its stderr
    a file as under systemd or cron: -q prints our warnings only; without -q only our own log lines."""
    from tests.tools.conftest import write_good

    data = write_good(tmp_path / "good", 12, size=32)
    base = [sys.executable, "-m", "tools.cli", "fit", str(data), "--method", "cae", "--size", "32", "--epochs", "1",
            "--holdout", "0.2", "--opt", "widths=4/8/8/8/8", "--opt", "batch_size=4"]
    for quiet in (True, False):
        log = tmp_path / f"stderr-{quiet}.log"
        with log.open("w") as fh:
            proc = subprocess.run([*base, "--out", str(tmp_path / f"b{quiet}"), *(["-q"] if quiet else [])],
                                  stderr=fh, stdout=subprocess.PIPE, text=True, timeout=600)
        text = log.read_text()
        assert proc.returncode == 0, text
        assert "\r" not in text and "\x1b" not in text  # no progress bars in a file
        for noise in ("TracerWarning", "Diagnostic", "UserWarning", "DeprecationWarning", "[W:onnxruntime"):
            assert noise not in text, (noise, text)
        for line in text.splitlines():
            if quiet:
                assert line.startswith("WARNING: ") or " WARNING " in line, line
            else:
                assert re.match(r"\d\d:\d\d:\d\d (INFO|WARNING) (tools|edged)[.\w-]*: |WARNING: |!!!", line), line


def test_methods_lists_every_method_and_each_option_with_its_meaning(capsys: pytest.CaptureFixture[str]) -> None:
    from tools.methods.registry import METHODS, get_method

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in METHODS:
        assert f"\n{name}" in f"\n{out}"
        table = getattr(get_method(name), "options", {})
        for key, option in table.items():
            assert option.doc, f"{name} option {key} has no description"
            assert f"--opt {key}=" in out
    assert "(the default)" in out
    assert main(["methods", "nope"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
