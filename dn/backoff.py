"""Backoff: the one delay schedule of every retry loop, and the retries of one operation.

The schedule is capped exponential with jitter. Before retry ``n`` (1-based) the delay is
``d(n) = min(max_delay_s, base_delay_s * 2 ** (n - 1))`` and the sleep is a uniform draw from
``[jitter_min * d(n), jitter_max * d(n)]``:

- ``jitter_min=0, jitter_max=1`` is "full jitter" (the object-store retries of
  :class:`dn.store.retry.RetryPolicy`): retries of many clients spread out the most;
- ``jitter_min=1, jitter_max=2`` never retries sooner than the schedule, and at most twice as
  late (the retries of the cluster's shells: calls to shard and coordinator actors, a
  writer's parts; see :meth:`dn.settings.ShellSettings.backoff`).

:class:`Retries` is one operation's budget: it hands out the next delay until its deadline
has passed, and never a delay that ends after it.

Invariants: a delay is never negative and never over ``jitter_max * max_delay_s``; the draws
are the random generator's only use, so a seeded generator gives a fixed schedule.

Not done here: deciding which failures to retry (the caller's), sleeping for a caller that
schedules its own retries (a writer keeps a time, see :meth:`Retries.next_delay`).

Callers: any module, any thread. A :class:`Backoff` is immutable; its generator is shared by
the threads that use it (``random.Random`` is thread-safe). A :class:`Retries` belongs to one
loop.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from dn.errors import InvalidArgument


def capped_delay(
    retry: int,
    base_delay_s: float,
    max_delay_s: float,
    rng: random.Random,
    jitter_min: float = 0.0,
    jitter_max: float = 1.0,
) -> float:
    """The sleep before retry number ``retry`` (1-based): a uniform draw from
    ``[jitter_min * d, jitter_max * d]`` with ``d = min(max_delay_s, base_delay_s * 2 **
    (retry - 1))``."""
    cap = min(max_delay_s, base_delay_s * (2 ** (retry - 1)))
    return rng.uniform(jitter_min * cap, jitter_max * cap)


@dataclass(frozen=True, slots=True)
class Backoff:
    """A delay schedule (see the module docstring). ``sleep``, ``rng`` and ``clock`` are
    injectable for tests."""

    base_delay_s: float = 0.05
    max_delay_s: float = 1.0
    jitter_min: float = 0.0
    jitter_max: float = 1.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("base_delay_s", "max_delay_s", "jitter_min", "jitter_max"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not value >= 0:
                raise InvalidArgument(f"Backoff.{name} must be a number >= 0, got {value!r}")
        if self.jitter_max < self.jitter_min:
            raise InvalidArgument("Backoff.jitter_max must be >= jitter_min")

    def delay(self, retry: int) -> float:
        """The sleep before retry number ``retry`` (1-based)."""
        return capped_delay(
            retry, self.base_delay_s, self.max_delay_s, self.rng, self.jitter_min, self.jitter_max
        )

    def within(self, budget_s: float) -> Retries:
        """The retries of one operation that may go on for ``budget_s`` seconds from now."""
        return Retries(self, self.clock() + budget_s)


class Retries:
    """One operation's retries: how many so far, and until when (``deadline``, on the
    backoff's clock). One loop uses it; not thread-safe."""

    __slots__ = ("backoff", "deadline", "count")

    def __init__(self, backoff: Backoff, deadline: float) -> None:
        self.backoff = backoff
        self.deadline = deadline
        self.count = 0

    def next_delay(self) -> float | None:
        """The delay before the next retry, cut to end by the deadline; None once the
        deadline has passed (give up). Counts the retry."""
        now = self.backoff.clock()
        if now >= self.deadline:
            return None
        self.count += 1
        return min(self.backoff.delay(self.count), self.deadline - now)

    def wait(self) -> bool:
        """Sleep before the next retry and return True; False (at once) once the deadline
        has passed."""
        delay = self.next_delay()
        if delay is None:
            return False
        self.backoff.sleep(delay)
        return True


__all__ = ["Backoff", "Retries", "capped_delay"]
