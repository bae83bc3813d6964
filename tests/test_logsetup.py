"""Logging: human lines on a terminal, sd-daemon priority prefixes or JournalHandler under systemd."""

from __future__ import annotations

import logging
import os
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from edged.logsetup import (
    JournalPrefixFormatter,
    setup_logging,
    stderr_is_journal,
    syslog_priority,
    under_systemd,
)

HUMAN = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO|WARNING|ERROR) edged\.capture: .+$")


@pytest.fixture(autouse=True)
def restore_root_logger(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setitem(sys.modules, "systemd", None)  # systemd-python absent unless a test fakes it
    monkeypatch.setitem(sys.modules, "systemd.journal", None)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    for h in handlers:
        if h not in root.handlers:
            root.addHandler(h)
    root.setLevel(level)
    logging.captureWarnings(False)


def _ours() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if getattr(h, "_edged_handler", False)]


def test_human_lines_on_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", environ={})
    log = logging.getLogger("edged.capture")
    log.debug("hidden at info")
    log.info("cam1: opened rtsp://cam/1")
    log.warning("cam1: stalled")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2, lines
    assert all(HUMAN.match(line) for line in lines), lines
    assert lines[0].endswith(" INFO edged.capture: cam1: opened rtsp://cam/1")
    assert " WARNING edged.capture: cam1: stalled" in lines[1]


def test_verbose_and_level(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", verbose=True, environ={})
    logging.getLogger("edged.capture").debug("frame 1")
    assert "DEBUG edged.capture: frame 1" in capsys.readouterr().err
    setup_logging("error", environ={})
    logging.getLogger("edged.capture").warning("not shown")
    assert capsys.readouterr().err == ""


def test_idempotent(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("info", environ={})
    setup_logging("info", environ={})
    setup_logging("debug", environ={"INVOCATION_ID": "abc"})
    assert len(_ours()) == 1
    logging.getLogger("edged.capture").info("once")
    assert capsys.readouterr().err.count("once") == 1


def test_priority_prefixes_under_systemd_without_systemd_python(capsys: pytest.CaptureFixture[str]) -> None:
    setup_logging("debug", environ={"INVOCATION_ID": "0123456789abcdef"})
    log = logging.getLogger("edged.capture")
    log.debug("d")
    log.info("cam1: opened")
    log.warning("w")
    log.error("e")
    log.critical("c")
    try:
        raise ValueError("boom")
    except ValueError:
        log.exception("worker died")
    lines = capsys.readouterr().err.splitlines()
    assert lines[:5] == ["<7>edged.capture: d", "<6>edged.capture: cam1: opened", "<4>edged.capture: w",
                         "<3>edged.capture: e", "<2>edged.capture: c"]
    tb = lines[5:]
    assert tb[0] == "<3>edged.capture: worker died" and len(tb) > 3
    assert all(line.startswith("<3>") for line in tb), tb  # the traceback stays at error priority
    assert any("ValueError: boom" in line for line in tb)


def test_syslog_priorities() -> None:
    assert [syslog_priority(x) for x in (5, 10, 20, 25, 30, 40, 50, 60)] == [7, 7, 6, 6, 4, 3, 2, 2]
    rec = logging.LogRecord("edged", logging.INFO, __file__, 1, "", None, None)
    assert JournalPrefixFormatter().format(rec) == "<6>edged: "


def test_journal_stream_detection(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    with open(tmp_path / "stderr", "w") as fake_stderr:
        monkeypatch.setattr(sys, "stderr", fake_stderr)
        st = os.fstat(fake_stderr.fileno())
        match = f"{st.st_dev}:{st.st_ino}"
        other = f"{st.st_dev}:{st.st_ino + 1}"
        assert stderr_is_journal({"JOURNAL_STREAM": match})
        assert not stderr_is_journal({"JOURNAL_STREAM": other})
        assert not stderr_is_journal({"JOURNAL_STREAM": "garbage"})
        assert not stderr_is_journal({})
        assert under_systemd({"JOURNAL_STREAM": match})
        assert under_systemd({"JOURNAL_STREAM": match, "INVOCATION_ID": "x"})
        assert under_systemd({"INVOCATION_ID": "x"})  # a unit whose stderr is not the journal
        # A shell started from a service inherits both, but its stderr is a terminal: not the journal.
        assert not under_systemd({"JOURNAL_STREAM": other, "INVOCATION_ID": "x"})
        assert not under_systemd({})


def test_journal_handler_when_systemd_python_is_importable(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    records: list[tuple[str, int]] = []

    class FakeJournalHandler(logging.Handler):
        def __init__(self, **fields: str) -> None:
            super().__init__()
            self.fields = fields

        def emit(self, record: logging.LogRecord) -> None:
            records.append((self.format(record), record.levelno))

    pkg = types.ModuleType("systemd")
    journal = types.ModuleType("systemd.journal")
    monkeypatch.setattr(journal, "JournalHandler", FakeJournalHandler, raising=False)
    monkeypatch.setattr(pkg, "journal", journal, raising=False)
    monkeypatch.setitem(sys.modules, "systemd", pkg)
    monkeypatch.setitem(sys.modules, "systemd.journal", journal)
    setup_logging("info", environ={"INVOCATION_ID": "x"})
    (handler,) = _ours()
    assert isinstance(handler, FakeJournalHandler) and handler.fields == {"SYSLOG_IDENTIFIER": "edged"}
    logging.getLogger("edged.capture").warning("cam1: stalled")
    assert records == [("edged.capture: cam1: stalled", logging.WARNING)]
    assert capsys.readouterr().err == ""
