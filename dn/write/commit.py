"""Pending commands and the group-commit queue of one shard.

A writer turns its request into a :class:`Pending` (validated, its arguments packed) and hands
it to :meth:`CommitQueue.submit`. The first writer to find no leader becomes the leader: it
takes every queued command (up to ``group_commit_max_bytes``; a DDL command always goes alone),
stamps each with a commit timestamp, makes the group durable with one log write, applies it,
and wakes the others. Writers that arrived meanwhile form the next group. This is leveldb's
writer queue; with many concurrent writers, one durable log write serves many commits.

The queue knows nothing of the engine: the engine supplies ``stamp`` (validate against the
catalog and take a timestamp, under the lock; False when the shard's timestamp ceiling leaves
none: the group ends before that command, which stays queued at the front), ``reserve`` (make
room under the ceiling, outside the lock: the leader calls it before stamping again after a
stamp found none, so a command refused by its stamp never costs one), ``persist`` (the log
write, outside the lock) and ``apply`` (under the lock). Ordering: groups are stamped,
persisted and applied one at a time, so timestamps reach the buffers in ascending order and no
buffer boundary splits a group.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from dn.catalog import WRITE_OPS
from dn.errors import DNError, Internal


class Pending:
    """One command on its way to the log."""

    __slots__ = (
        "op",
        "args",
        "payload",
        "table",
        "nrows",
        "token",
        "txn",
        "ts",
        "error",
        "done",
        "waiter",
        "slots",
    )

    def __init__(
        self,
        op: int,
        args: list,
        payload: bytes,
        table: Any = None,
        nrows: int = 0,
        token: bytes | None = None,
    ) -> None:
        self.op = op
        self.args = args
        self.payload = payload  # msgpack of args
        self.slots: set[int] | None = None  # its keys' slots, once a shard's moves need them
        self.table = table  # TableDef the rows were validated against (writes)
        self.nrows = nrows
        self.token = token  # the idempotency token of a write part (dn.write.tokens), or None
        self.txn: Any = None  # a prepare's checks (dn.write.txn.Prepare), or None
        self.ts = 0
        self.error: DNError | None = None
        self.done = False
        self.waiter: Any = None  # a held lock its writer blocks on; see CommitQueue._wait

    @property
    def is_ddl(self) -> bool:
        return self.op not in WRITE_OPS and self.txn is None

    @property
    def kind(self) -> int:
        """Groups hold one kind: 0 writes, 1 prepares (checked against everything applied
        below them, so no write of their own group may precede them), 2 DDL (alone)."""
        return 1 if self.txn is not None else 2 if self.op not in WRITE_OPS else 0

    def result(self) -> int:
        if self.error is not None:
            raise self.error
        return self.ts


class CommitQueue:
    """Group commit over a condition variable shared with the engine."""

    def __init__(self, cv: threading.Condition, max_group_bytes: int) -> None:
        self._cv = cv
        self._queue: deque[Pending] = deque()
        self._max_group_bytes = max_group_bytes
        self.leader_busy = False
        #: (lowest, highest) timestamp of the group being persisted, for readers to wait on.
        self.inflight: tuple[int, int] | None = None
        #: Commands the last stamp found no room for under the ceiling (the leader's alone).
        self._short = 0
        self.groups = 0
        self.commands = 0

    def __len__(self) -> int:
        return len(self._queue)

    def acquire_leadership(self) -> None:
        """Block until this thread is the leader (call with the lock held)."""
        while self.leader_busy:
            self._cv.wait()
        self.leader_busy = True

    def release_leadership(self) -> None:
        """Give up leadership (call with the lock held); the writer at the front of the queue
        wakes to take it."""
        self.leader_busy = False
        self._cv.notify_all()
        if self._queue:
            _wake(self._queue[0])

    def _wait(self, p: Pending) -> None:
        """Block the writer of ``p`` until it is woken (call with the lock held; it is
        released while blocked). Writers wait on a lock of their own, not on the shared
        condition, so finishing a group wakes only its writers and the next leader rather
        than every waiting thread (with 100 writers, notify_all dominated the CPU)."""
        w = _allocate_lock()
        w.acquire()
        p.waiter = w
        self._cv.release()
        try:
            w.acquire()
        finally:
            self._cv.acquire()
            p.waiter = None

    def submit(
        self,
        p: Pending,
        reserve: Callable[[int], None],
        stamp: Callable[[Pending], bool],
        persist: Callable[[list[Pending]], None],
        apply: Callable[[list[Pending]], None],
    ) -> int:
        """Queue ``p`` and return once it is durable and applied (its timestamp), or raise."""
        with self._cv:
            self._queue.append(p)
            while not p.done and self.leader_busy:
                self._wait(p)
            if p.done:
                return p.result()
            self.leader_busy = True
        try:
            while not p.done:
                self._lead_one(reserve, stamp, persist, apply)
        finally:
            with self._cv:
                self.release_leadership()
        return p.result()

    def submit_all(
        self,
        ps: list[Pending],
        reserve: Callable[[int], None],
        stamp: Callable[[Pending], bool],
        persist: Callable[[list[Pending]], None],
        apply: Callable[[list[Pending]], None],
    ) -> None:
        """Queue every command of ``ps`` (in order) and return once all are done; each then
        holds its timestamp or its error. One caller, many commands: the asyncio front door
        (:mod:`dn.write.aio`) hands a whole batch of coroutines' writes over in one call. Waits on
        the shared condition, which every finished group and every change of leader notify."""
        if not ps:
            return
        last = ps[-1]
        with self._cv:
            self._queue.extend(ps)
            while not last.done and self.leader_busy:
                self._cv.wait()
            if last.done:
                return
            self.leader_busy = True
        try:
            while not last.done:  # groups leave the queue in order: last done, all done
                self._lead_one(reserve, stamp, persist, apply)
        finally:
            with self._cv:
                self.release_leadership()

    def _lead_one(self, reserve, stamp, persist, apply) -> None:
        if self._short:  # the last stamp found no room: make some first, outside the lock
            n, self._short = self._short, 0
            try:
                reserve(n)
            except DNError as exc:  # no timestamp can be had: fail the next group
                with self._cv:
                    for q in self._take():
                        q.error = exc
                        q.done = True
                        _wake(q)
                    self._cv.notify_all()
                return
        with self._cv:
            group = self._take()
            if group and group[0].txn is not None:  # prepares: lowest commit timestamp first
                group.sort(key=lambda q: q.txn.at)
            stamped = []
            for i, q in enumerate(group):
                try:
                    if not stamp(q):  # no timestamp under the ceiling: end the group here
                        self._queue.extendleft(reversed(group[i:]))
                        self._short = len(group) - i
                        break
                except DNError as exc:
                    q.error = exc
                    q.done = True
                    _wake(q)
                    continue
                stamped.append(q)
            if stamped:
                self.inflight = (stamped[0].ts, stamped[-1].ts)
        if not stamped:
            with self._cv:
                self._cv.notify_all()
            return
        error: DNError | None = None
        try:
            persist(stamped)
        except DNError as exc:
            error = exc
        except Exception as exc:  # a bug or an unexpected library error: never acknowledge
            error = Internal(f"log write failed unexpectedly: {exc!r}")
        woken: list = []
        try:
            with self._cv:
                try:
                    if error is None:
                        apply(stamped)
                        self.groups += 1
                        self.commands += len(stamped)
                except Exception as exc:  # the engine marks itself broken in apply
                    error = (
                        exc
                        if isinstance(exc, DNError)
                        else Internal(f"applying a durable group failed: {exc!r}")
                    )
                    raise
                finally:
                    for q in stamped:
                        if error is not None:
                            q.error = error
                        q.done = True
                        if q.waiter is not None:
                            woken.append(q.waiter)
                            q.waiter = None
                    self.inflight = None
                    self._cv.notify_all()
        finally:
            for w in woken:  # outside the lock: a woken writer need not block on it again
                w.release()

    def _take(self) -> list[Pending]:
        group: list[Pending] = []
        size = 0
        while self._queue:
            q = self._queue[0]
            if group and (
                q.kind != group[0].kind or q.is_ddl or size + len(q.payload) > self._max_group_bytes
            ):
                break
            group.append(self._queue.popleft())
            size += len(q.payload)
        return group

    def fail_all(self, error: DNError) -> None:
        """Fail every queued command (call with the lock held)."""
        while self._queue:
            q = self._queue.popleft()
            q.error = error
            q.done = True
            _wake(q)
        self._cv.notify_all()


_allocate_lock = threading.Lock


def _wake(p: Pending) -> None:
    """Unblock the writer of ``p`` if it waits (call with the queue's lock held)."""
    w = p.waiter
    if w is not None:
        p.waiter = None
        w.release()
