"""Reconnect backoff (edged/backoff.py): one definition for cameras and the broker."""

from __future__ import annotations

import random

from edged.backoff import backoff_delay


def test_doubles_from_initial_up_to_the_cap_without_jitter() -> None:
    rng = random.Random(0)
    assert [backoff_delay(a, 0.5, 5.0, 0.0, rng) for a in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]
    assert backoff_delay(0, 0.5, 5.0, 0.0, rng) == 0.5  # attempt 0 counts as the first


def test_jitter_stays_within_its_fraction() -> None:
    rng = random.Random(1)
    delays = [backoff_delay(10, 0.5, 4.0, 0.2, rng) for _ in range(500)]
    assert min(delays) >= 4.0 * 0.8 and max(delays) <= 4.0 * 1.2 and len(set(delays)) > 100


def test_a_camera_failing_for_days_gets_the_cap_not_an_overflow() -> None:
    """2 ** 1100 times a float overflows: the capture thread died after about 1025 failed reopens."""
    assert backoff_delay(1100, 0.5, 30.0, 0.0, random.Random(2)) == 30.0
    assert backoff_delay(10 ** 9, 0.5, 30.0, 0.0, random.Random(2)) == 30.0
