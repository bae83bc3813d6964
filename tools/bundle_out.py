"""Writing a bundle folder safely: checked before any work, built beside the old one, swapped in at once.

Why: ``fit --out DIR`` used to remove DIR whole whenever it held a ``manifest.json``, whatever else was
in it, and a fit killed mid-way left a folder with placeholder thresholds. Now:

* `check_out` runs before any work: DIR must be absent, empty, or a bundle holding only its own files
  (``manifest.json`` and the model files it lists); anything else is refused with the names.
* `staging` builds the new bundle in a sibling ``.DIR.partial-XXXX`` folder marked with the writer's pid;
  its manifest says ``complete: false`` until the last step, so `edged.bundle.load_manifest` (the
  daemon's loader) refuses it even if someone points the daemon at it.
* `install` swaps the finished folder with the old one in one ``renameat2(RENAME_EXCHANGE)`` (Linux),
  so DIR is at every instant either the old or the new bundle, then deletes the old bundle's own files
  only. Where the exchange is not available, two renames leave DIR missing for a moment instead.
* A staging folder left by a killed fit (its pid no longer running) is removed by the next fit.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

from edged.bundle import MANIFEST_NAME

log = logging.getLogger(__name__)

MARKER = ".edged-train-partial"  # inside a staging folder: the pid of the fit writing it
RENAME_EXCHANGE = 2


class OutputError(ValueError):
    """An output path that cannot be used; the message names it and says why."""


def bundle_files(folder: Path) -> set[str] | None:
    """Names a bundle folder may hold (its manifest, the model files and reference parts it lists), or None if
    not a bundle."""
    try:
        raw = json.loads((folder / MANIFEST_NAME).read_text(encoding="utf-8"))
        files = {str(entry["file"]) for entry in raw["models"].values()}
        if isinstance(raw.get("reference_parts"), dict):
            files.add(str(raw["reference_parts"]["file"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return {MANIFEST_NAME, f"{MANIFEST_NAME}.tmp", MARKER, *files}


def check_writable_dir(path: Path, option: str) -> None:
    """`path` is, or can be created as, a folder this process may write in."""
    if path.exists() and not path.is_dir():
        raise OutputError(f"{option} {path}: exists and is not a folder")
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"{option} {path}: {probe} is not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OutputError(f"{option} {path}: {probe} is not writable")
    # os.access says yes to root everywhere, also on read-only or virtual file systems (/proc): try it
    try:
        fd, name = tempfile.mkstemp(prefix=".edged-train-probe-", dir=probe)
    except OSError as exc:
        raise OutputError(f"{option} {path}: cannot write in {probe} ({exc.strerror or exc})") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(name)


def check_out(out: Path, option: str = "--out") -> None:
    """Refuse an output folder that holds anything but an earlier bundle (nothing else is ever removed)."""
    check_writable_dir(out.parent if not out.exists() else out, option)
    check_writable_dir(out.parent, option)  # the new bundle is built beside the old one
    if not out.exists():
        return
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    own = bundle_files(out)
    if own is None:
        raise OutputError(f"{option} {out}: folder is not empty and is not a model bundle ({_names(entries)}); "
                          f"refusing to replace it: choose another {option}")
    foreign = [e for e in entries if e not in own]
    if foreign:
        raise OutputError(f"{option} {out}: the bundle folder also holds {_names(foreign)}, which the new bundle "
                          f"would replace; move them out or choose another {option}")


def _names(names: list[str], n: int = 5) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(out: Path) -> None:
    """Remove staging folders of `out` left by fits that no longer run (killed with SIGKILL, power loss)."""
    for folder in out.parent.glob(f".{out.name}.partial-*"):
        try:
            pid = int((folder / MARKER).read_text().strip())
        except (OSError, ValueError):
            continue  # not ours: never touched
        if not _pid_alive(pid):
            log.info("removing %s, left by an interrupted fit (pid %d)", folder, pid)
            shutil.rmtree(folder, ignore_errors=True)


def staging(out: Path) -> Path:
    """A new, marked folder beside `out` to build the bundle in."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    (tmp / MARKER).write_text(str(os.getpid()))
    return tmp


def discard(tmp: Path) -> None:
    """Remove a staging folder (only one `staging` made: it carries the marker)."""
    if (tmp / MARKER).is_file():
        shutil.rmtree(tmp, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where the system cannot."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    libc = ctypes.CDLL(name, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    at_fdcwd = -100
    rc = fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), RENAME_EXCHANGE)
    return rc == 0


def install(tmp: Path, out: Path) -> None:
    """Put the finished bundle at `out`; the old bundle's own files (and nothing else) are then removed."""
    with contextlib.suppress(FileNotFoundError):
        (tmp / MARKER).unlink()
    if not out.exists():
        tmp.rename(out)
        return
    own = bundle_files(out) or set()
    if not _exchange(tmp, out):
        aside = out.parent / f".{out.name}.old-{os.getpid()}"
        out.rename(aside)
        tmp.rename(out)
        tmp = aside
    # tmp now holds the old bundle
    for name in own:
        with contextlib.suppress(FileNotFoundError):
            (tmp / name).unlink()
    try:
        tmp.rmdir()
    except OSError:
        log.warning("the previous bundle's folder %s still holds files it did not list; left in place", tmp)
