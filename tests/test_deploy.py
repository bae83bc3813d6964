"""deploy/: the unit passes `systemd-analyze verify`, and install.sh --root stages an idempotent tree."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "deploy" / "edged.service"
INSTALL = REPO / "deploy" / "install.sh"
BINARY = "/opt/edged/venv/bin/edged"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")

needs_systemd_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None,
                                           reason="systemd-analyze is not installed (apt-get install systemd)")


# --- the unit -------------------------------------------------------------------------------------

def unit_copy(tmp_path: Path, text: str | None = None) -> Path:
    """The unit with the venv binary replaced by an executable that exists here: `verify` checks that
    every ExecStart*= binary exists, and /opt/edged is only there on an installed device."""
    fake = tmp_path / "bin" / "edged"
    fake.parent.mkdir(parents=True, exist_ok=True)
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    unit_text = UNIT.read_text() if text is None else text
    assert BINARY in unit_text
    out = tmp_path / "unit" / "edged.service"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(unit_text.replace(BINARY, str(fake)))
    return out


def verify(unit: Path) -> tuple[int, list[str]]:
    assert SYSTEMD_ANALYZE is not None
    proc = subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""})
    # Only complaints about our unit count: a host may have unrelated broken units.
    ours = [line for line in (proc.stdout + proc.stderr).splitlines() if "edged.service" in line]
    return proc.returncode, ours


@needs_systemd_analyze
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    rc, complaints = verify(unit_copy(tmp_path))
    assert rc == 0 and complaints == [], complaints


@needs_systemd_analyze
@pytest.mark.parametrize(("old", "new"), [
    ("\nType=notify\n", "\nType=notifyy\n"),  # an unknown value: warning only, rc 0; the complaints catch it
    ("\nWatchdogSec=30\n", "\nWatchdogSeconds=30\n"),  # an unknown key
])
def test_verify_catches_a_broken_unit(tmp_path: Path, old: str, new: str) -> None:
    """Control: the check above can fail."""
    text = UNIT.read_text()
    assert old in text
    rc, complaints = verify(unit_copy(tmp_path, text.replace(old, new, 1)))
    assert rc != 0 or complaints


@needs_systemd_analyze
def test_unit_binary_must_exist(tmp_path: Path) -> None:
    """Why the test substitutes the binary: verify refuses a unit whose ExecStart= is not executable."""
    if Path(BINARY).exists():
        pytest.skip(f"{BINARY} exists on this machine")
    copy = tmp_path / "edged.service"
    copy.write_text(UNIT.read_text())
    rc, complaints = verify(copy)
    assert rc != 0 and any("not executable" in c for c in complaints)


def test_unit_settings() -> None:
    """The choices the issue asks for, as written in the [Service] section."""
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    assert settings["Type"] == ["notify"]
    assert settings["ExecStartPre"] == [f"{BINARY} check-config -c /etc/edged/edged.yaml"]
    assert settings["ExecStart"] == [f"{BINARY} run -c /etc/edged/edged.yaml"]
    assert settings["Restart"] == ["on-failure"] and settings["RestartPreventExitStatus"] == ["2"]
    assert int(settings["WatchdogSec"][0]) > 0
    assert settings["StartLimitBurst"] and settings["StartLimitIntervalSec"]
    assert settings["User"] == ["edged"] and settings["SupplementaryGroups"] == ["video"]
    assert settings["StateDirectory"] == ["edged"] and settings["ConfigurationDirectory"] == ["edged"]
    assert settings["LoadCredential"] == ["mqtt-password:/etc/edged/mqtt-password",
                                          "web-password:/etc/edged/web-password",
                                          "opcua-password:/etc/edged/opcua-password"]
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "NoNewPrivileges", "RestrictAddressFamilies",
                "SystemCallFilter"):
        assert key in settings, key
    assert "@system-service" in settings["SystemCallFilter"]


def test_staged_credentials_are_the_ones_the_config_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The unit's credential names are those config reads: empty (as installed) they mean "not used";
    with a password each section finds its own."""
    from edged.config import MqttConfig, WebConfig
    from edged.opcua.config import OpcUaConfig

    root = tmp_path / "root"
    install(root, "--no-venv")
    creds = root / "etc/edged"
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert WebConfig().read_password() is None
    assert OpcUaConfig().read_password() is None
    assert MqttConfig(username="line").read_password() == ""
    for name, secret in (("mqtt-password", "m-secret"), ("web-password", "w-secret"), ("opcua-password", "o-secret")):
        (creds / name).write_text(secret + "\n")
    assert MqttConfig(username="line").read_password() == "m-secret"
    assert WebConfig(bind="0.0.0.0").read_password() == "w-secret"
    assert OpcUaConfig(bind="0.0.0.0", anonymous=False, username="plc").read_password() == "o-secret"


@needs_systemd_analyze
def test_security_exposure(tmp_path: Path) -> None:
    """Guards the hardening against regressions: `systemd-analyze security` must stay 'OK' (<= 2.5)."""
    assert SYSTEMD_ANALYZE is not None
    proc = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(unit_copy(tmp_path))],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0 and "--offline" in proc.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    match = re.search(r"Overall exposure level for edged\.service: ([0-9.]+)", proc.stdout)
    assert match, proc.stdout + proc.stderr
    assert float(match.group(1)) <= 2.5, proc.stdout


# --- the installer --------------------------------------------------------------------------------

def install(root: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60,
            ) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["bash", str(INSTALL), "--root", str(root), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def snapshot(root: Path) -> dict[str, tuple[str, ...]]:
    """Every path under root: kind, mode, mtime and content hash (or link target)."""
    out: dict[str, tuple[str, ...]] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", oct(st.st_mode & 0o7777))
        else:
            out[rel] = ("file", oct(st.st_mode & 0o7777), str(st.st_mtime_ns),
                        hashlib.sha256(path.read_bytes()).hexdigest())
    return out


EXPECTED_FILES = {
    "etc/edged/edged.yaml": "0o640",
    "etc/edged/mqtt-password": "0o600",
    "etc/edged/web-password": "0o600",
    "etc/edged/opcua-password": "0o600",
    "etc/systemd/system/edged.service": "0o644",
    "opt/edged/share/README.md": "0o644",
    "opt/edged/share/edged.yaml.example": "0o644",
}
EXPECTED_DIRS = {"etc/edged": "0o750", "var/lib/edged": "0o750", "var/lib/edged/models": "0o750",
                 "opt/edged": "0o755"}


def test_install_stages_the_expected_tree(tmp_path: Path) -> None:
    root = tmp_path / "root"
    proc = install(root, "--no-venv")
    assert "nothing on this machine was changed" in proc.stdout
    tree = snapshot(root)
    for rel, mode in EXPECTED_FILES.items():
        assert tree[rel][:2] == ("file", mode), (rel, tree.get(rel))
    for rel, mode in EXPECTED_DIRS.items():
        assert tree[rel] == ("dir", mode), (rel, tree.get(rel))
    assert tree["usr/local/bin/edged"] == ("link", BINARY)
    assert (root / "etc/systemd/system/edged.service").read_bytes() == UNIT.read_bytes()
    assert (root / "etc/edged/edged.yaml").read_bytes() == (REPO / "config/edged.yaml").read_bytes()
    for credential in ("mqtt-password", "web-password", "opcua-password"):
        assert (root / "etc/edged" / credential).read_bytes() == b"", credential
    assert not (root / "opt/edged/venv").exists()  # --no-venv
    unexpected = set(tree) - set(EXPECTED_FILES) - set(EXPECTED_DIRS) - {"usr/local/bin/edged"}
    assert unexpected <= {"etc", "etc/systemd", "etc/systemd/system", "opt", "opt/edged/share", "usr",
                          "usr/local", "usr/local/bin", "var", "var/lib"}, unexpected


def test_second_run_changes_nothing_and_keeps_an_edited_config(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install(root, "--no-venv")
    first = snapshot(root)
    proc = install(root, env={"EDGED_INSTALL_NO_VENV": "1"})  # the environment switch works too
    assert snapshot(root) == first
    assert "wrote" not in proc.stdout

    config = root / "etc/edged/edged.yaml"
    edited = config.read_text().replace("station: station1", "station: line7-press", 1)
    assert edited != config.read_text()
    config.write_text(edited)
    edited_snapshot = snapshot(root)
    proc = install(root, "--no-venv")
    assert config.read_text() == edited
    assert "kept your /etc/edged/edged.yaml" in proc.stdout
    assert snapshot(root) == edited_snapshot

    (root / "etc/systemd/system/edged.service").write_text("[Service]\nExecStart=/bin/false\n")
    install(root, "--no-venv")  # a damaged or outdated unit is replaced by the shipped one
    assert (root / "etc/systemd/system/edged.service").read_bytes() == UNIT.read_bytes()


def runtime_dependencies() -> list[str]:
    """The names of pyproject's runtime dependencies (what the device venv would get from PyPI)."""
    text = (REPO / "pyproject.toml").read_text()
    block = text.split("\ndependencies = [", 1)[1].split("]", 1)[0]
    return [re.split(r"[<>=!~;\[ ]", line.strip().strip('",'), maxsplit=1)[0]
            for line in block.splitlines() if line.strip().startswith('"')]


@pytest.mark.slow
def test_device_venv_has_the_runtime_only(tmp_path: Path) -> None:
    """The device's venv gets the daemon, never the training package or its command.

    A real install.sh run with a venv (the wheel built from its clean copy of this checkout); the runtime
    dependencies are left out (--skip-dep) because what is tested is what the edged wheel itself holds."""
    deps = runtime_dependencies()
    assert "numpy" in deps and "onnxruntime" in deps, deps
    root = tmp_path / "root"
    install(root, "--python", sys.executable, *[a for d in deps for a in ("--skip-dep", d)], timeout=600)
    venv = root / "opt/edged/venv"
    assert (venv / "bin/edged").is_file()
    assert not (venv / "bin/edged-train").exists()
    probe = ("import importlib.metadata as md, importlib.util as u, json; "
             "print(json.dumps([u.find_spec('edged') is not None, u.find_spec('tools') is None, "
             "u.find_spec('devkit') is None, sorted(e.name for e in md.distribution('edged').entry_points), "
             "sorted({str(f).split('/')[0] for f in md.files('edged')})]))")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    proc = subprocess.run([str(venv / "bin/python"), "-c", probe], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path, env=env)  # not the checkout: its tools/ would be importable from there
    assert proc.returncode == 0, proc.stderr
    has_edged, no_tools, no_devkit, scripts, top = json.loads(proc.stdout)
    assert has_edged and no_tools and no_devkit
    assert scripts == ["edged"]
    assert {t for t in top if not t.endswith(".dist-info") and t != ".."} == {"edged"}, top


def test_bundle_is_copied_and_made_current(tmp_path: Path, tiny_bundle: Path) -> None:
    root = tmp_path / "root"
    install(root, "--no-venv", "--bundle", str(tiny_bundle))
    models = root / "var/lib/edged/models"
    assert os.readlink(models / "current") == "test-max"
    assert (models / "test-max/manifest.json").read_bytes() == (tiny_bundle / "manifest.json").read_bytes()
    before = snapshot(root)
    install(root, "--no-venv", "--bundle", str(tiny_bundle))
    assert snapshot(root) == before
    assert not [p for p in models.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_bundle_without_manifest_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(INSTALL), "--root", str(tmp_path / "r"), "--no-venv", "--bundle",
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "no manifest.json" in proc.stderr


def test_uninstall_keeps_data_unless_purged(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install(root, "--no-venv")
    (root / "var/lib/edged/edged.db").write_bytes(b"data")
    (root / "etc/edged/edged.yaml").write_text("station: edited\n")
    proc = install(root, "--uninstall")
    assert "kept /etc/edged" in proc.stdout
    assert not (root / "opt/edged").exists()
    assert not (root / "etc/systemd/system/edged.service").exists()
    assert not (root / "usr/local/bin/edged").is_symlink()
    assert (root / "var/lib/edged/edged.db").read_bytes() == b"data"
    assert (root / "etc/edged/edged.yaml").read_text() == "station: edited\n"
    install(root, "--no-venv")  # reinstalling continues with the kept config and data
    assert (root / "etc/edged/edged.yaml").read_text() == "station: edited\n"
    install(root, "--uninstall", "--purge")
    assert not (root / "var/lib/edged").exists() and not (root / "etc/edged").exists()


def test_refuses_to_touch_the_machine_without_root(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("running as root: the installer would really install")
    proc = subprocess.run(["bash", str(INSTALL), "--no-venv"], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "run as root" in proc.stderr


def test_unknown_option_is_refused(tmp_path: Path) -> None:
    proc = subprocess.run(["bash", str(INSTALL), "--root", str(tmp_path), "--frobnicate"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0 and "unknown option --frobnicate" in proc.stderr
    assert not list(tmp_path.iterdir())


def test_installer_syntax() -> None:
    subprocess.run(["bash", "-n", str(INSTALL)], check=True, timeout=30)
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", "-S", "warning", str(INSTALL)], check=True, timeout=60)


def test_help_lists_the_options() -> None:
    proc = subprocess.run(["bash", str(INSTALL), "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
    for option in ("--root DIR", "--no-venv", "--uninstall", "--purge", "--bundle DIR", "--jetson", "--wheel"):
        assert option in proc.stdout, option
    assert "set -euo" not in proc.stdout  # the help ends with the header comment
