"""Logging for the daemon: readable lines on a terminal, priorities in the journal under systemd.

On a terminal each record is one line with a local timestamp::

    2026-11-27 07:00:00.123 INFO edged.capture: cam1: opened ...

Under systemd journald adds its own timestamp, so records go either through systemd-python's
``JournalHandler`` (structured fields, priority) or, without it, to stderr prefixed with the sd-daemon
priority (``<6>edged.capture: ...``), which journald turns into the entry's priority, so
``journalctl -u edged -p warning`` works.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Mapping
from typing import TextIO

_MARK = "_edged_handler"  # attribute set on the handlers this module installs (idempotence)

# logging level -> syslog priority (sd-daemon(3)): debug 7, info 6, notice 5, warning 4, err 3, crit 2
_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
           "critical": logging.CRITICAL}


def syslog_priority(levelno: int) -> int:
    """The syslog priority (7 debug .. 2 critical) of a Python log level, for journald's `<N>` prefix."""
    for threshold, priority in _PRIORITIES:
        if levelno >= threshold:
            return priority
    return 7


class HumanFormatter(logging.Formatter):
    """`2026-11-27 07:00:00.123 INFO edged.capture: message` in local time."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s.%(msecs)03d %(levelname)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S")


class JournalPrefixFormatter(logging.Formatter):
    """`<6>edged.capture: message`; every line of a multi-line record (tracebacks) gets the prefix,
    so journald keeps the whole traceback at the record's priority."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        """The formatted record with the `<N>` prefix on every line."""
        prefix = f"<{syslog_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in super().format(record).splitlines() or [""])


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at emit time (redirections and test capture keep working)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


def stderr_is_journal(environ: Mapping[str, str] | None = None) -> bool:
    """True when fd 2 is the journal stream systemd connected (JOURNAL_STREAM=dev:inode matches)."""
    env = os.environ if environ is None else environ
    value = env.get("JOURNAL_STREAM", "")
    if ":" not in value:
        return False
    dev, _, ino = value.partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
        return (st.st_dev, st.st_ino) == (int(dev), int(ino))
    except (OSError, ValueError, AttributeError):
        return False


def under_systemd(environ: Mapping[str, str] | None = None) -> bool:
    """Started by systemd and logging to the journal.

    JOURNAL_STREAM matching stderr is the reliable sign. INVOCATION_ID alone counts only when
    JOURNAL_STREAM is absent (a unit with StandardError= elsewhere): a shell started from a user
    service inherits both variables, but then stderr is its terminal, not the journal stream.
    """
    env = os.environ if environ is None else environ
    if stderr_is_journal(env):
        return True
    return bool(env.get("INVOCATION_ID")) and not env.get("JOURNAL_STREAM")


def _journal_handler() -> logging.Handler | None:
    try:
        from systemd.journal import JournalHandler
    except ImportError:
        return None
    handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER="edged")
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    return handler


def setup_logging(level: str = "info", verbose: bool = False, environ: Mapping[str, str] | None = None) -> None:
    """Configure the root logger once; a second call replaces this module's handler instead of adding one."""
    levelno = logging.DEBUG if verbose else _LEVELS.get(level.lower(), logging.INFO)
    handler: logging.Handler | None = None
    if under_systemd(environ):
        handler = _journal_handler()
        if handler is None:
            handler = _StderrHandler()
            handler.setFormatter(JournalPrefixFormatter())
    else:
        handler = _StderrHandler()
        handler.setFormatter(HumanFormatter())
    setattr(handler, _MARK, True)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(levelno)
    logging.captureWarnings(True)  # warnings.warn() from libraries end up in the same log


class LogThrottle:
    """At most one line per `every_s` for each key; the next line says how many were held back.

    For faults that outside input can repeat at any rate (bad messages, a broker refusing us): the
    first occurrence is logged at once, a flood costs one line per interval instead of filling the disk.
    """

    def __init__(self, logger: logging.Logger, every_s: float = 10.0) -> None:
        self.logger = logger
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def log(self, level: int, key: str, msg: str, *args: object, exc_info: bool = False) -> bool:
        """Log unless `key` was logged less than `every_s` ago; True when it was logged."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._last[key] = now
        held = self._held.pop(key, 0)
        suffix = f" ({held} more like this in the last {now - last:.0f} s)" if held and last is not None else ""
        self.logger.log(level, msg + suffix, *args, exc_info=exc_info)
        return True
