"""Tripwire: a store wrapper that does something drastic at the n-th matching operation.

The reliability trials need to stop a shard at a precise point of its life: *during* a log
write, a buffer checkpoint's range put, a manifest commit, a checkpoint put, a garbage
collector's delete, or any operation of a recovery. A :class:`Tripwire` wraps any object store,
counts the operations that match a :class:`Point` (operation name and key prefix), and at the
``nth`` match calls its ``action``:

===========  ===================================================================================
``when``     what happens at the n-th matching operation
===========  ===================================================================================
before       ``action()`` before the operation runs (it never reaches the store)
after        the operation runs (it has landed), then ``action()`` before the caller hears of it
torn         put/put_if_absent only: part of the bytes is stored, then ``action()`` (a store
             that is not atomic, killed half-way through a write); if the action returns, the
             caller gets ``Unavailable(outcome_unknown=True)``. On an object store, a strict
             prefix under the key; on the log's segment files (LocalLogStore), a partial
             write of the object's slot, sector by sector (:mod:`tests.trials.tear`)
===========  ===================================================================================

The action is ``os.kill(os.getpid(), SIGKILL)`` in the crash trials (a real kill -9 of the
shard process) and a wait on a ``threading.Event`` in the zombie trials (a paused incarnation).
If the action returns, the operation continues as its ``when`` says.

Invariant: matching operations are counted in the order the wrapped store sees them, under one
lock; ``fired`` is True once the action has been called.

Not done: more than one trip per wrapper (make a new wrapper), faults other than the action
(compose with :class:`dn.store.FaultyStore` for those).

Callers: test code, from any thread.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

from dn.errors import ObjectExists, Unavailable
from dn.store.base import ObjectStore
from dn.store.locallog import LocalLogStore
from tests.trials.tear import tear_object, tear_segment_write

#: Named points of a shard's life, as (operation, key prefix). Keys are laid out in
#: dn.objects.codec.
POINTS: dict[str, tuple[str | None, str]] = {
    "log": ("put_if_absent", "30/"),  # a group commit's log write (and fence records)
    "range": ("put", "20/"),  # a buffer checkpoint's (or compaction's) range object
    "manifest": ("put_if_absent", "00/"),  # a manifest commit
    "checkpoint": ("put", "10/"),  # a checkpoint object
    "delete": ("delete", ""),  # log truncation and garbage collection
    "any": (None, ""),  # whatever comes (used for recoveries)
}
WHENS = ("before", "after", "torn")


@dataclass(frozen=True, slots=True)
class Point:
    """Where to trip: the ``nth`` (1-based) operation named ``phase`` (a key of POINTS)."""

    phase: str
    nth: int
    when: str = "before"

    def matches(self, op: str, key: str) -> bool:
        want_op, prefix = POINTS[self.phase]
        if want_op is not None and op != want_op:
            return False
        return key.startswith(prefix)


def sigkill_self() -> None:
    """The crash trials' action: kill -9 of this very process."""
    os.kill(os.getpid(), signal.SIGKILL)


class Tripwire:
    """Wraps ``inner``; calls ``action`` at the operation ``point`` names (see the module)."""

    def __init__(self, inner: ObjectStore, point: Point, action: Callable[[], None]) -> None:
        self.inner = inner
        self.url = inner.url
        self.point = point
        self.action = action
        self.fired = False
        self.seen = 0
        self.torn = ""  # what a torn write left, once one was made
        self._lock = threading.Lock()

    def _trips(self, op: str, key: str) -> bool:
        if not self.point.matches(op, key):
            return False
        with self._lock:
            self.seen += 1
            if self.fired or self.seen != self.point.nth:
                return False
            self.fired = True
            return True

    def _run(self, op: str, key: str, run: Callable[[], object], data: bytes | None = None):
        if not self._trips(op, key):
            return run()
        when = self.point.when
        if when == "torn" and data is not None and len(data) > 1:
            try:
                self._tear(op, key, data)
            except ObjectExists:  # nothing was written: the crash comes all the same
                self.action()
                raise
            self.action()
            raise Unavailable(f"torn write of {key!r} (tripwire)", outcome_unknown=True)
        if when == "after":
            out = run()
            self.action()
            return out
        self.action()
        return run()

    def _tear(self, op: str, key: str, data: bytes) -> None:
        if isinstance(self.inner, LocalLogStore):
            self.torn = tear_segment_write(self.inner, key, data, self.point.nth)
        else:
            tear_object(self.inner, op, key, data)
            self.torn = f"a prefix of {key} ({len(data) // 2} of {len(data)} bytes)"

    def get(self, key: str) -> bytes:
        return self._run("get", key, lambda: self.inner.get(key))

    def put(self, key: str, data: bytes) -> None:
        self._run("put", key, lambda: self.inner.put(key, data), data)

    def put_if_absent(self, key: str, data: bytes) -> None:
        self._run("put_if_absent", key, lambda: self.inner.put_if_absent(key, data), data)

    def list(self, prefix: str) -> list[str]:
        return self._run("list", prefix, lambda: self.inner.list(prefix))

    def delete(self, key: str) -> None:
        self._run("delete", key, lambda: self.inner.delete(key))

    def close(self) -> None:
        self.inner.close()
