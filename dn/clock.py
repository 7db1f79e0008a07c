"""Clocks: the wall clock (injected) and the hybrid logical clock that stamps commits.

A timestamp (TS) is an int64 ``physical_ms << 16 | logical``. :class:`HybridClock` hands out
strictly increasing timestamps: ``next()`` returns ``max(last + 1, wall_ms << 16)``. It never
goes backwards, and :meth:`HybridClock.advance` lets a caller raise its floor (snapshot reads
do this so that no later commit gets a timestamp at or below the snapshot).
:meth:`HybridClock.next_within` hands out the next timestamp only if it is at or below a
ceiling (the shard's durable timestamp ceiling, :mod:`dn.upkeep.ceiling`).

Wall clocks are components: :class:`SystemClock` reads ``time.time``; :class:`ManualClock` is
set by tests. The engine never calls ``time`` directly for timestamps.

Thread safety: HybridClock is called under the engine's lock; it has no lock of its own.
"""

from __future__ import annotations

import time
from typing import Protocol

LOGICAL_BITS = 16


class Clock(Protocol):
    """A wall clock: milliseconds since the epoch, and seconds for intervals."""

    def now_ms(self) -> int: ...

    def monotonic(self) -> float: ...


class SystemClock:
    """The machine's clock."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()


class ManualClock:
    """A clock that only moves when told to. ``now_ms`` defaults to 0, so timestamps issued
    by a :class:`HybridClock` over it are simply 1, 2, 3, ... (the seed's small numbers)."""

    def __init__(self, ms: int = 0, seconds: float = 0.0) -> None:
        self.ms = ms
        self.seconds = seconds

    def now_ms(self) -> int:
        return self.ms

    def monotonic(self) -> float:
        return self.seconds

    def advance(self, seconds: float) -> None:
        self.seconds += seconds
        self.ms += int(seconds * 1000)


class HybridClock:
    """Strictly increasing commit timestamps above a floor."""

    __slots__ = ("_clock", "last")

    def __init__(self, clock: Clock, last: int = 0) -> None:
        self._clock = clock
        self.last = last

    def next(self) -> int:
        """A timestamp greater than every one issued before and than the floor."""
        ts = max(self.last + 1, self._clock.now_ms() << LOGICAL_BITS)
        self.last = ts
        return ts

    def next_within(self, ceiling: int) -> int | None:
        """:meth:`next`, if that timestamp is <= ``ceiling``; else None and nothing changes."""
        ts = max(self.last + 1, self._clock.now_ms() << LOGICAL_BITS)
        if ts > ceiling:
            return None
        self.last = ts
        return ts

    def peek(self) -> int:
        """The newest timestamp issued or promised so far (the current floor)."""
        return max(self.last, self._clock.now_ms() << LOGICAL_BITS)

    def advance(self, floor: int) -> None:
        """No later ``next()`` returns a timestamp <= ``floor``."""
        if floor > self.last:
            self.last = floor
