"""The microphone's reopen backoff: doubling delays up to a ceiling, reset after health."""

from __future__ import annotations

from device.sources import Backoff


def test_backoff_doubles_up_to_the_longest_and_resets():
    backoff = Backoff(1.0, 5.0)
    assert [backoff.next_delay() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    backoff.reset()
    assert backoff.next_delay() == 1.0


def test_backoff_starts_again_from_the_shortest_after_reset_midway():
    backoff = Backoff(0.5, 4.0)
    assert [backoff.next_delay() for _ in range(2)] == [0.5, 1.0]
    backoff.reset()
    assert [backoff.next_delay() for _ in range(5)] == [0.5, 1.0, 2.0, 4.0, 4.0]
    assert backoff.longest == 4.0
