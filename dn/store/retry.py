"""RetryingStore: retries transient object-store failures with capped exponential backoff.

Only :class:`dn.errors.Unavailable` is retried. ``ObjectExists``, ``ObjectNotFound``,
``InvalidArgument``, ``Corruption`` and every other error are not: retrying them cannot change
the answer. They pass through as they are, unless an earlier attempt of the same write may
have landed (see the invariant below).

Backoff before retry ``n`` (1-based) is "full jitter": a uniform draw from
``[0, min(max_delay_s, base_delay_s * 2 ** (n - 1))]``. A call gives up after ``max_attempts``
attempts, or earlier when the next sleep would cross ``deadline_s`` (measured from the first
attempt), and re-raises the last ``Unavailable``.

Invariant: once an attempt of a ``put`` or ``put_if_absent`` has failed with
``outcome_unknown=True`` (a lost acknowledgement, a timeout, a connection cut mid-request), the
operation may have taken effect, and every later failure of it is raised as
``Unavailable(outcome_unknown=True)``: giving up on ``Unavailable``, and also a definite error
of a later attempt (``InvalidArgument`` for a 403 of expired credentials, or any other
exception), which says nothing of the earlier attempt. The original error is the cause
(``__cause__``) and is named in the details (``cause``). The one exception is ``ObjectExists``
on a retried ``put_if_absent``: it may be the earlier attempt's own object, and callers that
care (the log, the manifest) read the object back and compare bytes, as the store contract
says.

Not done: circuit breaking, per-operation policies, retrying ``Corruption`` reads.

Callers: any thread. Picklable when the inner store is (the statistics start again at zero).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from dn.backoff import capped_delay
from dn.errors import InvalidArgument, ObjectExists, Unavailable
from dn.store.base import ObjectStore, read_range, reads_ranges

log = logging.getLogger(__name__)

T = TypeVar("T")

_WRITES = frozenset({"put", "put_if_absent"})
_WARN_FROM_ATTEMPT = 3  # retries after this many failed attempts are logged at WARNING


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How hard to retry. ``sleep``, ``rng`` and ``clock`` are injectable for tests."""

    max_attempts: int = 8
    base_delay_s: float = 0.02
    max_delay_s: float = 2.0
    deadline_s: float = 30.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)
    rng: random.Random = field(default_factory=random.Random, compare=False, repr=False)
    clock: Callable[[], float] = field(default=time.monotonic, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise InvalidArgument(f"RetryPolicy.max_attempts must be >= 1, got {self.max_attempts}")
        if self.base_delay_s < 0 or self.max_delay_s < 0:
            raise InvalidArgument("RetryPolicy delays must be >= 0")
        if self.deadline_s <= 0:
            raise InvalidArgument(f"RetryPolicy.deadline_s must be > 0, got {self.deadline_s}")

    def backoff(self, retry: int) -> float:
        """The sleep before retry number ``retry`` (1-based), with full jitter (the schedule
        of :func:`dn.backoff.capped_delay`)."""
        return capped_delay(retry, self.base_delay_s, self.max_delay_s, self.rng)


class RetryingStore:
    """Wraps an :class:`ObjectStore` and retries its ``Unavailable`` failures."""

    def __init__(self, inner: ObjectStore, policy: RetryPolicy | None = None) -> None:
        self.inner = inner
        self.policy = policy if policy is not None else RetryPolicy()
        self.url = inner.url
        self._lock = threading.Lock()
        self.stats: dict[str, int] = {"attempts": 0, "retries": 0, "failures": 0}

    def __repr__(self) -> str:
        return f"RetryingStore({self.inner!r}, {self.policy!r})"

    def __getstate__(self) -> dict[str, object]:
        return {"inner": self.inner, "policy": self.policy}

    def __setstate__(self, state: dict[str, object]) -> None:
        self.__init__(state["inner"], state["policy"])  # type: ignore[misc, arg-type]

    def _count(self, name: str) -> None:
        with self._lock:
            self.stats[name] += 1

    def _call(self, op: str, key: str, fn: Callable[[], T]) -> T:
        policy = self.policy
        started = policy.clock()
        maybe_landed = False
        attempt = 0
        while True:
            attempt += 1
            self._count("attempts")
            try:
                return fn()
            except Unavailable as e:
                maybe_landed = maybe_landed or (op in _WRITES and e.outcome_unknown)
                delay = policy.backoff(attempt)
                out_of_time = policy.clock() - started + delay > policy.deadline_s
                if attempt >= policy.max_attempts or out_of_time:
                    self._give_up(op, key, attempt, e)
                    if maybe_landed and not e.outcome_unknown:
                        raise self._unknown(op, key, e) from e
                    raise
                error: Exception = e
            except ObjectExists:
                raise  # perhaps the earlier attempt's own object: the caller compares bytes
            except Exception as e:
                if not maybe_landed:
                    raise  # a definite answer, and no earlier attempt can have landed
                self._give_up(op, key, attempt, e)
                raise self._unknown(op, key, e) from e
            self._count("retries")
            level = logging.WARNING if attempt >= _WARN_FROM_ATTEMPT else logging.DEBUG
            log.log(
                level,
                "%s %r on %s: attempt %d failed (%s); retrying in %.3fs",
                op,
                key,
                self.url,
                attempt,
                error,
                delay,
            )
            policy.sleep(delay)

    def _give_up(self, op: str, key: str, attempt: int, e: Exception) -> None:
        self._count("failures")
        log.warning("%s %r on %s failed after %d attempt(s): %r", op, key, self.url, attempt, e)

    def _unknown(self, op: str, key: str, e: Exception) -> Unavailable:
        """The error of a write that failed after an attempt that may have landed."""
        details = dict(e.details) if isinstance(e, Unavailable) else {}
        details.update(outcome_unknown=True, cause=repr(e))
        return Unavailable(
            f"{op} {key!r} on {self.url} failed after an attempt that may have landed: {e}",
            **details,
        )

    def get(self, key: str) -> bytes:
        return self._call("get", key, lambda: self.inner.get(key))

    @property
    def reads_ranges(self) -> bool:
        return reads_ranges(self.inner)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        return self._call("get", key, lambda: read_range(self.inner, key, start, length))

    def put(self, key: str, data: bytes) -> None:
        self._call("put", key, lambda: self.inner.put(key, data))

    def put_if_absent(self, key: str, data: bytes) -> None:
        self._call("put_if_absent", key, lambda: self.inner.put_if_absent(key, data))

    def list(self, prefix: str) -> list[str]:
        return self._call("list", prefix, lambda: self.inner.list(prefix))

    def delete(self, key: str) -> None:
        self._call("delete", key, lambda: self.inner.delete(key))

    def close(self) -> None:
        self.inner.close()
