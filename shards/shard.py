"""The body of one shard actor: a :class:`dn.Engine` plus what the cluster adds around it.

:class:`ShardService` is a plain class; :mod:`shards.group` turns it into the Ray actor
(threaded, ``max_concurrency`` calls at once) and tests use it in-process. Construction opens
the engine from the store, which *is* recovery: when Ray restarts a dead shard actor, the new
instance replays the log, takes a higher epoch and fences any stale incarnation.

What it adds to the engine:

- **Causality.** ``write(..., after=T)`` makes the commit timestamp greater than ``T`` (the
  newest timestamp the calling client has seen), so a client's writes are ordered across
  shards in timestamp order.
- **Commit wait.** A write returns only once the wall clock has passed its timestamp plus
  ``clock_skew_ms``: a write that starts later, on any shard, gets a larger timestamp. Together
  these make the cross-shard order promise hold: if W2 was acknowledged after W1, any snapshot
  that shows W2 shows W1. (A wait longer than ``ShellSettings.commit_wait_max_s`` is skipped:
  the clock was pushed far ahead by a future snapshot, or a restart started it at its
  timestamp ceiling ahead of this node's wall clock (decision 0013), and only the causality
  token orders writes then.)
- **Write parts.** A client's write arrives as one :class:`dn.write.part.WritePart`, spread
  over the call's arguments (:meth:`ShardService.write_part`); the engine checks it against
  its live table. A part made for a table since dropped and created again is refused with
  :class:`dn.errors.StaleTable`, so the client refreshes its table definition and routes
  again. :meth:`ShardService.live_table` gives a client this shard's version of a table (its
  id, which a part must carry). A part carries an idempotency token: a copy of a part already
  committed (a resend, a late original) gets the first commit's timestamp (decision 0014).
- **Maintenance** by :class:`shards.loop.MaintenanceLoop` (the engine's own thread is off).
- **Live feed.** :meth:`ShardService.feed_next` is one round of a live change feed on this
  shard (:mod:`coordinator.client.live`): it may wait (a long poll) until a commit at or after
  the feed's cursor lands here, then resolves a snapshot and returns the window's view and the
  rows before it of the window's keys, in one call.
- **Metrics** (:mod:`shards.metrics`): each write call's latency, each read view's object
  count and each failed call's error kind here; the engine's figures from the loop.

Concurrency: any number of threads call these methods; the engine's group commit makes
concurrent writes share one log write. No per-row work here beyond the engine's validation.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from dn import Engine, ReadView, Settings
from dn.clock import LOGICAL_BITS, Clock, SystemClock
from dn.errors import DNError, InvalidArgument
from dn.read.arrowscan import arrow_tail
from dn.read.view import before_view
from dn.settings import ShellSettings
from dn.write.part import WritePart
from shards.handoff import SlotMoves
from shards.loop import MaintenanceLoop
from shards.metrics import ShardMetrics
from shards.staging import Staging, is_staged

log = logging.getLogger(__name__)

_DDL = ("create_database", "drop_database", "create_table", "drop_table")

#: The longest a live feed's round waits here for a commit (a bound on the actor thread held).
FEED_WAIT_MAX_S = 1.0


class ShardService(SlotMoves):
    """One shard: its engine, maintenance loop, and the cluster-facing calls (slot moves:
    :class:`shards.handoff.SlotMoves`)."""

    def __init__(
        self,
        store_url: str,
        shard: int,
        settings: dict[str, Any],
        clock_skew_ms: int = 0,
        shell: dict[str, Any] | None = None,
        *,
        clock: Clock | None = None,
        store: Any = None,
    ) -> None:
        self.shard = shard
        self._clock = clock or SystemClock()
        self._skew_ms = clock_skew_ms
        self._max_wait_s = ShellSettings.from_dict(shell).commit_wait_max_s
        s = Settings.from_dict(settings).replace(background=False)
        t0 = time.monotonic()
        self.engine = Engine.open(store_url, shard, s, store=store, clock=self._clock)
        self.opened_s = time.monotonic() - t0
        self.metrics = ShardMetrics(shard, self.opened_s)
        self.staging = Staging(self.engine)
        self._landed = threading.Condition()  # notified as commits land (feed_next waits on it)
        self._newest = 0  # the newest commit timestamp that landed through this service
        self.loop = MaintenanceLoop(self.engine, s.background_interval_s, self.metrics).start()
        self.started_at = time.time()
        log.info("shard %d up (epoch %d) in %.2fs", shard, self.engine.epoch, self.opened_s)

    # -- writes -----------------------------------------------------------------------------

    def write(
        self, db: str, table: str, upserts: Any = (), deletes: Any = (), after: int = 0
    ) -> int:
        """:meth:`dn.Engine.write`, committed after ``after``."""
        return self._timed_commit(
            lambda: (after, lambda: self.engine.write(db, table, upserts, deletes))
        )

    def write_part(self, head: tuple, deletes: bytes, *chunks: bytes) -> int:
        """A client's pre-packed part of a batch (the arguments of
        :meth:`dn.write.part.WritePart.to_call`: each chunk a separate argument, so that Ray
        passes it inline), committed after the part's ``after`` by
        :meth:`dn.Engine.write_packed_columns`."""

        def prepared() -> tuple[int, Callable[[], int]]:
            part = WritePart.from_call(head, deletes, *chunks)
            return part.after, lambda: self.engine.write_packed_columns(part)

        return self._timed_commit(prepared)

    def _timed_commit(self, prepare: Callable[[], tuple[int, Callable[[], int]]]) -> int:
        """Run a write: ``prepare()`` gives its causality timestamp and the engine call; the
        commit comes after that timestamp and is waited out (:meth:`_commit_wait`); the call's
        latency, or its error, goes to the shard's metrics."""
        t0 = time.monotonic()
        try:
            after, commit = prepare()
            if after and after >= self.engine.clock():  # peek may equal an unissued stamp
                self.engine.advance_floor(after)
            ts = commit()
            self._land(ts)
            self._commit_wait(ts)
        except Exception as exc:
            self.metrics.error(exc)
            raise
        self.metrics.write_done(time.monotonic() - t0)
        return ts

    def prepare(self, token: bytes, at: int, snapshot: int | None, calls: list) -> int:
        """Prepare a transaction's writes here at commit timestamp ``at``
        (:meth:`dn.Engine.prepare`); ``calls`` holds each part as the arguments
        :meth:`WritePart.to_call` gave. The commit wait comes with :meth:`resolve`."""
        t0 = time.monotonic()
        try:
            if not isinstance(calls, list | tuple):
                raise InvalidArgument("a prepare's parts must be a list of write-part calls")
            ts = self.engine.prepare(token, at, self._parts(calls), snapshot)
        except Exception as exc:
            self.metrics.error(exc)
            raise
        self.metrics.write_done(time.monotonic() - t0)
        return ts

    def prepare_many(self, items: list) -> list:
        """A committer's batch of prepares (:meth:`dn.Engine.prepare_many`): ``items`` are
        ``(token, at, snapshot, calls)``, as :meth:`prepare` takes them, or ``(token, at,
        snapshot, calls, group)`` for a transaction decided with its group
        (:mod:`dn.objects.decision`). Each result is the item's timestamp or the DNError that
        refused it (returned, not raised)."""
        t0 = time.monotonic()
        try:
            if not isinstance(items, list | tuple) or not all(
                isinstance(it, list | tuple)
                and len(it) in (4, 5)
                and isinstance(it[3], list | tuple)
                for it in items
            ):
                raise InvalidArgument(
                    "a batch of prepares is (token, at, snapshot, calls[, group]) each"
                )
            out: list = [None] * len(items)
            todo, where = [], []
            for i, (t, at, snap, calls, *group) in enumerate(items):
                try:  # one item's bad parts (or lost staged parts) refuse that item alone
                    todo.append((t, at, self._parts(calls), snap, *group))
                    where.append(i)
                except DNError as exc:
                    out[i] = exc
            for i, got in zip(where, self.engine.transactions.prepare_many(todo), strict=True):
                out[i] = got
        except Exception as exc:
            self.metrics.error(exc)
            raise
        self.metrics.write_done(time.monotonic() - t0)
        return out

    def _parts(self, calls: list) -> Any:
        """A prepare's parts from their calls, or the staged parts they name."""
        if is_staged(calls):
            return self.staging.take(calls)
        return [WritePart.from_call(*c) for c in calls]

    def stage(self, key: bytes, objects: list) -> int:
        """Read and decode an atomic dataset write's parts for its prepare
        (:mod:`shards.staging`); returns their rows."""
        try:
            return self.staging.stage(key, objects)
        except Exception as exc:
            self.metrics.error(exc)
            raise

    def unstage(self, key: bytes) -> bool:
        """Drop the staged parts under ``key`` (the dataset committed, or gave up)."""
        return self.staging.unstage(key)

    def resolve_many(self, decisions: list) -> int:
        """Apply a batch's decisions, ``(token, ts)`` each (:meth:`dn.Engine.resolve_many`),
        then wait out the commit wait of the newest commit; returns its timestamp (0: none)."""
        self.engine.transactions.resolve_many(decisions)
        newest = max((ts for _, ts in decisions), default=0)
        if newest:
            self._land(newest)
            self._commit_wait(newest)
        return newest

    def resolve(self, token: bytes, ts: int) -> int:
        """Apply a transaction's decision (:meth:`dn.Engine.resolve`; ``ts`` its commit
        timestamp, 0 an abort), then wait out the commit wait of a commit."""
        self.engine.resolve(token, ts)
        if ts:
            self._land(ts)
            self._commit_wait(ts)
        return ts

    def flushed_through(self) -> int:
        """The newest timestamp written out in range objects (0: none): no log record at or
        below it is needed any more (:mod:`coordinator.actor.decisions`)."""
        return max((to for _, to in self.engine.status()["ranges"]), default=0)

    def live_table(self, db: str, table: str) -> list:
        """This shard's live definition of a table, in wire form
        (:meth:`dn.schema.TableDef.to_wire`; its id is this shard's)."""
        return self.engine.live_table(db, table).to_wire()

    def _land(self, ts: int) -> None:
        """A commit at ``ts`` is applied (readable): wake the live feeds waiting here."""
        with self._landed:
            if ts > self._newest:
                self._newest = ts
            self._landed.notify_all()

    def _commit_wait(self, ts: int) -> None:
        target_ms = (ts >> LOGICAL_BITS) + self._skew_ms
        wait_s = (target_ms - self._clock.now_ms() + 1) / 1000.0
        if 0 < wait_s <= self._max_wait_s + self._skew_ms / 1000.0:
            time.sleep(wait_s)

    def ddl(self, op: str, args: list) -> int:
        """One DDL command (``op`` is an Engine method name); returns its commit timestamp."""
        if op not in _DDL:
            raise InvalidArgument(f"unknown DDL op {op!r}")
        t0 = time.monotonic()
        try:
            ts = getattr(self.engine, op)(*args)
            self._commit_wait(ts)
        except Exception as exc:
            self.metrics.error(exc)
            raise
        self.metrics.write_done(time.monotonic() - t0)
        return ts

    # -- reads ------------------------------------------------------------------------------

    def clock(self) -> int:
        return self.engine.clock()

    def advance_floor(self, ts: int) -> int:
        return self.engine.advance_floor(ts)

    def read_view(
        self,
        db: str,
        table: str,
        snapshot: int | None = None,
        from_ts: int | None = None,
        columns: list[str] | None = None,
        keys: Any = (),
        arrow: bool = False,
        map_version: int | None = None,
    ) -> ReadView:
        """:meth:`dn.Engine.read_view`; ``keys``: a point read's, whose view holds only
        their versions from memory; ``arrow``: the tail as Arrow, for a reader that reads
        with Arrow kernels (:func:`dn.read.arrowscan.arrow_tail`); ``map_version``: the
        slot map the reader routes by (:mod:`dn.moves`)."""
        try:
            mv = {} if map_version is None else {"map_version": map_version}
            view = self.engine.read_view(db, table, snapshot, from_ts, columns, keys, **mv)
        except Exception as exc:
            self.metrics.error(exc)
            raise
        plan = view.plan
        self.metrics.read_done(len(plan.ranges) + (plan.checkpoint is not None))
        return arrow_tail(view) if arrow else view

    def feed_views(
        self,
        db: str,
        table: str,
        snapshot: int,
        from_ts: int,
        columns: Any = None,
        arrow: bool = False,
        map_version: int | None = None,
    ) -> tuple[ReadView, ReadView | None]:
        """A change feed's view and, in the same call, the view of the state before it
        (``from_ts - 1``: :meth:`feed_before`), which the feed's change types are decided
        from; ``arrow``: both tails as Arrow."""
        view = self.read_view(db, table, snapshot, from_ts, columns, (), False, map_version)
        before = self.feed_before(view)
        if arrow:
            view, before = arrow_tail(view), before and arrow_tail(before)
        return view, before

    def feed_next(
        self,
        db: str,
        table: str,
        from_ts: int,
        target: int = 0,
        columns: Any = None,
        wait_s: float = 0.0,
        map_version: int | None = None,
    ) -> tuple[ReadView | None, ReadView | None, int]:
        """One round of a live feed here: ``(view, before, S)``. Waits up to ``wait_s`` (at
        most :data:`FEED_WAIT_MAX_S`) while no commit at or after ``from_ts`` has landed here
        and ``target`` < ``from_ts``; then resolves ``S`` = max(``target``, this shard's clock)
        (no commit at or below ``S`` can appear here later) and returns the feed view of
        ``from_ts`` <= ts <= ``S`` with the before-state :meth:`feed_before` gives. ``view``
        is None, and nothing is resolved, when ``S`` < ``from_ts`` (no time has passed here).
        The wait only saves rounds: a commit that lands unseen is in the next window anyway."""
        if type(from_ts) is not int or type(target) is not int:
            raise InvalidArgument("a feed round's from_ts and target must be int timestamps")
        end = time.monotonic() + min(max(float(wait_s), 0.0), FEED_WAIT_MAX_S)
        with self._landed:
            while self._newest < from_ts and target < from_ts:
                left = end - time.monotonic()
                if left <= 0:
                    break
                self._landed.wait(left)
        s = max(target, self.engine.clock())
        if s < from_ts:
            return None, None, s
        view = self.read_view(db, table, s, from_ts, columns, (), False, map_version)
        return view, self.feed_before(view), view.snapshot

    def feed_before(self, view: ReadView) -> ReadView | None:
        """The state a feed view's change types are decided from (``from_ts - 1``). When the
        window is all in memory (no range object in its plan, the live feed's case), only
        the window's keys are read (a point view); else the whole snapshot view, as
        :meth:`feed_views` gives."""
        read = self.engine.read_view
        if view.plan.ranges or view.plan.refs:
            return before_view(lambda d, t, s, **kw: read(d, t, s, **kw), view)
        keys = list(dict.fromkeys(k for run in view.tail for k in (*run.pks, *run.del_pks)))
        if not keys:
            return None
        return before_view(lambda d, t, s, **kw: read(d, t, s, keys=keys, **kw), view)

    # -- operations -------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        out = self.engine.status()
        out["actor"] = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "opened_s": round(self.opened_s, 3),
            "uptime_s": round(time.time() - self.started_at, 1),
        }
        out["maintenance"] = self.loop.status()
        out["moves"] = self.engine.handoff.status()
        return out

    def pid(self) -> int:
        return os.getpid()

    def flush(self) -> int:
        """Freeze and buffer-checkpoint everything now (tests, ``dn`` operators)."""
        self.engine.freeze()
        return self.engine.flush()

    def checkpoint(self) -> int | None:
        self.flush()
        return self.engine.checkpoint()

    def close(self) -> None:
        self.loop.stop()
        self.engine.close()
