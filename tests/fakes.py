"""Injected components shared by the tests: a clock that moves only when slept on."""

from __future__ import annotations


class SleepClock:
    """An injected ``sleep`` and ``clock`` pair (for ``RetryPolicy`` and ``Backoff``):
    sleeping records the delay and advances the clock, instantly."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s

    def clock(self) -> float:
        return self.now
