"""`edged collect -c collect.yaml`: load the config, log to the journal, run one collector until SIGTERM."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from edged.collect.config import load_collect_config
from edged.config import ConfigError
from edged.logsetup import setup_logging

EXIT_OK, EXIT_BAD_INPUT = 0, 2


def run_collect(path: str | Path, verbose: bool = False) -> int:
    """The command: 2 for a bad collect.yaml (one line naming the key), else the collector's exit code."""
    try:
        config = load_collect_config(path)
    except ConfigError as exc:
        print(f"edged: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    setup_logging(config.log_level, verbose=verbose)
    from edged.collect.collector import Collector

    stop = threading.Event()

    def _stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    return Collector(config, stop).run()
