"""deploy/install.sh --with-genicam: the unit drop-in (AF_NETLINK for GigE Vision discovery) and the GigE
socket-buffer sysctl staged idempotently and removed on uninstall; the unit with its drop-in passes
`systemd-analyze verify`."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
INSTALL = REPO / "deploy" / "install.sh"
DROPIN = "etc/systemd/system/edged.service.d/genicam.conf"
SYSCTL = "etc/sysctl.d/60-edged-gige.conf"


def install(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["bash", str(INSTALL), "--root", str(root), *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "EDGED_INSTALL_NO_VENV": "1"})
    assert proc.returncode == 0, proc.stderr
    return proc


def test_with_genicam_stages_the_dropin_and_sysctl_once(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = install(root, "--with-genicam")
    assert "not installing apt packages here" in first.stdout and "gir1.2-aravis-0.8" in first.stdout
    assert (root / DROPIN).read_bytes() == (REPO / "deploy/genicam/edged-genicam.conf").read_bytes()
    assert "net.core.rmem_max = 33554432" in (root / SYSCTL).read_text()
    assert oct((root / SYSCTL).stat().st_mode & 0o777) == "0o644"
    again = install(root, "--with-genicam")
    assert "wrote" not in again.stdout  # idempotent
    install(root, "--uninstall")
    assert not (root / DROPIN).exists() and not (root / SYSCTL).exists()


def test_without_genicam_nothing_of_it_is_installed(tmp_path: Path) -> None:
    root = tmp_path / "root"
    install(root)
    assert not (root / DROPIN).exists() and not (root / SYSCTL).exists()


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_unit_with_the_genicam_dropin_verifies(tmp_path: Path) -> None:
    fake = tmp_path / "bin" / "edged"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    unit = tmp_path / "unit" / "edged.service"
    (unit.parent / "edged.service.d").mkdir(parents=True)
    unit.write_text((REPO / "deploy/edged.service").read_text().replace("/opt/edged/venv/bin/edged", str(fake)))
    shutil.copy(REPO / "deploy/genicam/edged-genicam.conf", unit.parent / "edged.service.d" / "genicam.conf")
    proc = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SYSTEMD_LOG_COLOR": "0", "SYSTEMD_PAGER": ""})
    complaints = [line for line in (proc.stdout + proc.stderr).splitlines() if "edged.service" in line]
    assert proc.returncode == 0 and complaints == [], complaints


def test_help_lists_with_genicam() -> None:
    proc = subprocess.run(["bash", str(INSTALL), "--help"], capture_output=True, text=True, timeout=30)
    assert "--with-genicam" in proc.stdout
