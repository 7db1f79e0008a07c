"""Reads of one shard: snapshots, floors, plans and their materialization.

A mixin of :class:`dn.engine.Engine`. A read resolves its snapshot S under the engine's lock
(raising the clock's floor to S, waiting for groups in flight at or below S, settling an
unknown log outcome, refusing S before the retention window), takes the plan of seed 001 and
copies the in-memory tail out as runs: a :class:`ReadView`. The reader (:mod:`dn.reader`)
then fetches and merges objects outside the lock. Other processes (the cluster's client) get
the ReadView and run the reader themselves.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from dn.clock import LOGICAL_BITS
from dn.errors import InvalidArgument
from dn.plan import Plan, range_plan, snapshot_plan
from dn.run import Run
from dn.schema import TableDef


@dataclass(frozen=True, slots=True)
class ReadView:
    """Everything a reader needs for one read: the table as of the snapshot, the snapshot,
    the plan, and the tail runs copied out of memory."""

    table: TableDef
    snapshot: int
    plan: Plan
    tail: tuple[Run, ...]
    from_ts: int | None = None


class Reads:
    """Snapshot and range reads (mixed into Engine)."""

    def snapshot(self) -> int:
        """A timestamp to pass as ``snapshot=`` for repeatable reads: it covers every write
        acknowledged so far, and no later commit gets a timestamp at or below it."""
        with self._cv:
            return self._resolve_snapshot_locked(None)

    def advance_floor(self, ts: int) -> int:
        """Promise that no later commit gets a timestamp <= ``ts`` and wait for commits in
        flight at or below it; returns ``ts``. Used by cross-shard snapshot reads."""
        with self._cv:
            return self._resolve_snapshot_locked(ts)

    def clock(self) -> int:
        """The newest timestamp this shard has issued or promised."""
        with self._cv:
            return self._hlc.peek()

    def _resolve_snapshot_locked(self, snapshot: int | None) -> int:
        self._check_usable_locked(reading=True)
        if snapshot is None:
            s = self._hlc.peek()
        else:
            if type(snapshot) is not int or snapshot < 0:
                raise InvalidArgument(f"snapshot must be an int64 timestamp, got {snapshot!r}")
            limit = self._hlc.peek() + (int(self.settings.snapshot_future_s * 1000)
                                        << LOGICAL_BITS)
            if snapshot > limit:
                raise InvalidArgument(
                    f"snapshot {snapshot} is too far in the future (shard clock at "
                    f"{self._hlc.peek()})")
            s = snapshot
            oldest = self.oldest_readable()
            if s < oldest:
                raise InvalidArgument(
                    f"snapshot {s} is before the retention window; the oldest readable "
                    f"timestamp is {oldest}", oldest=oldest)
        self._hlc.advance(s)
        while True:
            inflight = self._queue.inflight
            if inflight is not None and inflight[0] <= s:
                self._cv.wait()
                continue
            if self._unknown_lo is not None and self._unknown_lo <= s:
                self._cv.release()
                try:
                    self._settle_for_read()
                finally:
                    self._cv.acquire()
                continue
            return s

    def _settle_for_read(self) -> None:
        with self._cv:
            self._queue.acquire_leadership()
        try:
            if self._log is not None and self._log.unknown:
                self._settle_locked_out()
        finally:
            with self._cv:
                self._queue.release_leadership()

    def read_view(self, db: str, table: str, snapshot: int | None = None,
                  from_ts: int | None = None) -> ReadView:
        """The plan and in-memory tail for one read of ``db.table`` at ``snapshot`` (and,
        for a change feed, from ``from_ts``). Readers in other processes materialize it."""
        if from_ts is not None and (type(from_ts) is not int or from_ts < 0):
            raise InvalidArgument(f"from_ts must be an int64 timestamp, got {from_ts!r}")
        with self._cv:
            s = self._resolve_snapshot_locked(snapshot)
            tdef = self._catalog.table_at(db, table, s)
            if from_ts is not None and from_ts < self.oldest_readable():
                oldest = self.oldest_readable()
                raise InvalidArgument(
                    f"from_ts {from_ts} is before the retention window; the oldest readable "
                    f"timestamp is {oldest}", oldest=oldest)
            if from_ts is None:
                plan = snapshot_plan(self._ranges, self._checkpoints, s)
            else:
                plan = range_plan(self._ranges, self._checkpoints, s, from_ts)
            buffers = [*self._frozen, self._mutable] if plan.tail is not None else []
        # Copied outside the lock, so a big tail does not stall writers: every commit at or
        # below s is applied (s is resolved), later ones only append above s, and a buffer a
        # flush drops meanwhile stays whole through this reference.
        tail: list[Run] = []
        if plan.tail is not None:
            lo, hi = plan.tail
            for buf in buffers:
                run = buf.run(tdef.id, lo, hi)
                if run is not None and len(run):
                    tail.append(run)
        return ReadView(tdef, s, plan, tuple(tail), from_ts)

    def snapshot_plan(self, ts: int) -> Plan:
        """Seed 001's snapshot-read plan at ``ts``."""
        with self._cv:
            s = self._resolve_snapshot_locked(ts)
            return snapshot_plan(self._ranges, self._checkpoints, s)

    def range_plan(self, snapshot: int, from_ts: int) -> Plan:
        """Seed 001's range-read plan for from_ts <= ts <= snapshot."""
        with self._cv:
            s = self._resolve_snapshot_locked(snapshot)
            return range_plan(self._ranges, self._checkpoints, s, from_ts)

    def get(self, db: str, table: str, pk: Any, snapshot: int | None = None,
            columns: list[str] | None = None) -> dict | None:
        """The row with primary key ``pk`` at ``snapshot`` (None: now), or None."""
        view = self.read_view(db, table, snapshot)
        key = view.table.check_key(pk)
        runs = self.reader.runs(view.table, view.plan, list(view.tail), key=key)
        return self.reader.get(view.table, key, view.snapshot, runs, columns)

    def scan(self, db: str, table: str, snapshot: int | None = None,
             columns: list[str] | None = None, start: Any = None, end: Any = None):
        """Rows with start <= pk < end at ``snapshot``, in primary-key order, as dicts."""
        view = self.read_view(db, table, snapshot)
        t = view.table
        start = None if start is None else t.check_key(start)
        end = None if end is None else t.check_key(end)
        runs = self.reader.runs(t, view.plan, list(view.tail))
        return self.reader.scan(t, view.snapshot, runs, columns, start, end)

    def changes(self, db: str, table: str, from_ts: int, snapshot: int | None = None,
                columns: list[str] | None = None):
        """Every change with from_ts <= ts <= snapshot, in (ts, pk) order, as Change
        records (``ts``, ``kind``, ``pk``, ``row``)."""
        if type(from_ts) is not int or from_ts < 0:
            raise InvalidArgument(f"from_ts must be an int64 timestamp, got {from_ts!r}")
        view = self.read_view(db, table, snapshot, from_ts)
        runs = self.reader.runs(view.table, replace(view.plan, checkpoint=None),
                                list(view.tail))
        return self.reader.changes(view.table, from_ts, view.snapshot, runs, columns)

    def databases(self, snapshot: int | None = None) -> list[str]:
        with self._cv:
            s = self._resolve_snapshot_locked(snapshot)
            return self._catalog.databases_at(s)

    def tables(self, db: str, snapshot: int | None = None) -> list[str]:
        with self._cv:
            s = self._resolve_snapshot_locked(snapshot)
            return self._catalog.tables_at(db, s)

    def live_table(self, db: str, table: str) -> TableDef:
        """The table as it is now, without waiting for commits in flight (a catalog lookup:
        for checks on the write path, not for reads)."""
        with self._cv:
            self._check_usable_locked()
            return self._catalog.live_table(db, table)

    def table(self, db: str, table: str, snapshot: int | None = None) -> TableDef:
        with self._cv:
            s = self._resolve_snapshot_locked(snapshot)
            return self._catalog.table_at(db, table, s)
