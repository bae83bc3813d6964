"""One daemon per state directory: a lock held for the life of the process.

Two daemons on one state directory would publish from the same outbox (every reject twice, rows marked
by the other) and, with one MQTT client id, take the broker session from each other dozens of times a
second. `flock` is released by the kernel when the process ends, however it ends (SIGKILL, power
loss), so a stale lock file never blocks a restart; the pid in it is only for the message.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

LOCK_FILE = "edged.lock"


class InstanceLocked(Exception):
    """Another edged holds this state directory; str() says which and what to do."""


class InstanceLock:
    """The state directory's lock (flock on edged.lock): the kernel releases it when the process ends,
    however it ends."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> InstanceLock:
        """Take the lock or raise InstanceLocked (at once: never waits for the other process)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise InstanceLocked(f"another edged (pid {other}) is running with the state directory "
                                 f"{self.path.parent} (lock {self.path}); stop it first (systemctl stop edged), or "
                                 f"give this one its own storage.state_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Give the lock up; harmless when not held."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # closing the descriptor releases the lock
            self._fd = None
