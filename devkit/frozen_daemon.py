"""`python devkit/frozen_daemon.py run -c CFG`: `edged` with a hung-inference switch, for the tests of the
watchdog and of shutdown under load.

While the file named by $EDGED_TEST_FREEZE_FILE exists, every inference worker blocks before its next
batch without a heartbeat, as a hung model would. The switch lives here, not in edged/, so the product
has no test-only code path; it wraps `InferenceWorker.decide`, which the worker calls once per batch.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from edged import worker
from edged.cli import main

FREEZE_FILE = os.environ.get("EDGED_TEST_FREEZE_FILE", "")
_decide = worker.InferenceWorker.decide


def _frozen_decide(self: worker.InferenceWorker, batch: list[Any]) -> list[Any]:
    while FREEZE_FILE and os.path.exists(FREEZE_FILE) and not self.stop_event.is_set():
        time.sleep(0.05)  # deliberately no heartbeat: this simulates a hung inference
    return _decide(self, batch)


if __name__ == "__main__":
    worker.InferenceWorker.decide = _frozen_decide  # type: ignore[method-assign]  # the test-only switch, see above
    sys.exit(main(sys.argv[1:]))
