"""Reconnect backoff: the one definition, for cameras (`edged.capture`) and the broker (`edged.mqtt_link`).

Exponential from `initial_s`, capped at `max_s`, with +-`jitter` (a fraction) so that many cameras, or
many stations, do not hammer a recovering switch or broker at the same instant.
"""

from __future__ import annotations

import random

MAX_DOUBLINGS = 30  # 2**30 times any sane initial delay is past any cap; beyond, 2**n overflows a float


def backoff_delay(attempt: int, initial_s: float, max_s: float, jitter: float, rng: random.Random) -> float:
    """Seconds to wait before attempt `attempt` (1, 2, ...): initial_s * 2**(attempt-1), capped, jittered.

    The exponent is bounded, so a camera that has been failing for days (thousands of attempts) still
    gets its capped delay instead of an OverflowError."""
    doublings = min(max(0, attempt - 1), MAX_DOUBLINGS)
    base = min(max_s, initial_s * 2 ** doublings)
    return max(0.0, base * (1.0 + rng.uniform(-jitter, jitter)))
