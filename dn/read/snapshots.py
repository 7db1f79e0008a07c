"""The read side of one shard: snapshots, floors, plans and read views.

One part of :class:`dn.engine.Engine`, over the shard's :class:`dn.state.ShardState`. A read
resolves its snapshot S under the shard's lock (refusing S past the future bound or before the
retention window, making the timestamp ceiling cover S, raising the clock's floor to S,
waiting for groups in flight at or below S, settling an unknown log outcome, waiting out or
deciding the transactions' undecided intents at or below S: :mod:`dn.write.txn`), takes the
plan of seed 001 and copies the in-memory tail out as runs: a :class:`ReadView`.
Materializing the view (fetching and merging objects) happens outside the lock, in this
process or in another (:mod:`dn.read.view`). Any thread.

Snapshots and time (decision 0013): a snapshot served is a promise that no later commit gets a
timestamp at or below it, kept across restarts. The floor is raised in memory when S is
resolved; the promise is made durable (:meth:`Snapshots.promise`: the timestamp ceiling
extended to S if it is below, one manifest commit, without the lock) once the request is
validated and before its result is handed out, so a refused request writes nothing. A snapshot
further past the shard's *wall* clock than ``snapshot_future_s`` (and past the shard's own
clock) is refused with :class:`dn.errors.FutureSnapshot`: measured from the wall clock, not from
the hybrid clock that earlier floors already raised, so floors never push the clock further
ahead.

Not here: fetching objects, merging versions, anything that writes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from dn import moves
from dn.errors import FutureSnapshot, InvalidArgument, NotFound
from dn.read.plan import Plan, check_from_ts, range_plan, snapshot_plan
from dn.read.rows import projection
from dn.read.run import Run
from dn.read.slotfilter import NO_HI, SlotFilter
from dn.read.view import ReadView
from dn.schema import TableDef
from dn.state import ShardState
from dn.timestamps import to_timestamp


class Snapshots:
    """Snapshots, floors, plans and read views of one shard."""

    def __init__(
        self,
        state: ShardState,
        settle: Callable[[], None],
        cover: Callable[[int], None],
        decided: Callable[[int], None],
    ) -> None:
        self._s = state
        self._settle = settle  # settles an unknown log outcome (the write path's)
        self._cover = cover  # makes the durable timestamp ceiling cover a timestamp served
        self._decided = decided  # under the lock: waits out (or decides) intents at or below

    def snapshot(self) -> int:
        """A timestamp to pass as ``snapshot=`` for repeatable reads: it covers every write
        acknowledged so far, and no later commit gets a timestamp at or below it."""
        with self._s.cv:
            s = self._resolve_snapshot_locked(None)
        self.promise(s)
        return s

    def advance_floor(self, ts: int) -> int:
        """Promise that no later commit gets a timestamp <= ``ts`` and wait for commits in
        flight at or below it; returns ``ts``. Used by cross-shard snapshot reads."""
        with self._s.cv:
            s = self._resolve_snapshot_locked(ts)
        self.promise(s)
        return s

    def promise(self, s: int) -> None:
        """Lock not held: make durable the promise a read at ``s`` makes, before its result
        is handed out (the timestamp ceiling extended to ``s`` if it is below: one manifest
        commit). Raises ``Unavailable`` if the store fails: the result must not be served."""
        self._cover(s)

    def clock(self) -> int:
        """The newest timestamp this shard has issued or promised."""
        with self._s.cv:
            return self._s.hlc.peek()

    def _resolve_snapshot_locked(self, snapshot: int | None) -> int:
        self._s.check_usable_locked()
        snapshot = to_timestamp(snapshot)
        if snapshot is None:
            s = self._s.hlc.peek()
        else:
            if type(snapshot) is not int or snapshot < 0:
                raise InvalidArgument(f"snapshot must be an int64 timestamp, got {snapshot!r}")
            limit = self.future_limit_locked()
            if snapshot > limit:
                bound = self._s.settings.snapshot_future_s
                raise FutureSnapshot(
                    f"snapshot {snapshot} is more than snapshot_future_s = {bound} s past shard "
                    f"{self._s.shard}'s wall clock: the latest snapshot it serves now is {limit}",
                    snapshot=snapshot,
                    limit=limit,
                    bound_s=bound,
                )
            s = snapshot
            oldest = self._s.oldest_readable()
            if s < oldest:
                raise InvalidArgument(
                    f"snapshot {s} is before the retention window; the oldest readable "
                    f"timestamp is {oldest}",
                    oldest=oldest,
                )
        self._s.hlc.advance(s)  # in memory; the caller makes it durable (promise)
        while True:
            inflight = self._s.queue.inflight
            if inflight is not None and inflight[0] <= s:
                self._s.cv.wait()
                continue
            if self._s.unknown_lo is not None and self._s.unknown_lo <= s:
                self._s.cv.release()
                try:
                    self._settle()
                finally:
                    self._s.cv.acquire()
                continue
            # no intent can be stamped at or below s any more (the floor is s): the undecided
            # ones are waited for, or decided, and then whatever they wrote is final
            self._decided(s)
            return s

    def future_limit_locked(self) -> int:
        """The latest snapshot served now: the end of the wall clock's millisecond plus
        ``snapshot_future_s``, or the shard's clock if that is later (after a restart on a
        node whose clock is behind, or a floor raised earlier)."""
        return max(self._s.future_bound(), self._s.hlc.peek())

    def read_view(
        self,
        db: str,
        table: str,
        snapshot: int | None = None,
        from_ts: int | None = None,
        durable: bool = True,
        keys: Sequence[Any] | None = None,
        map_version: int | None = None,
    ) -> ReadView:
        """The plan and in-memory tail for one read of ``db.table`` at ``snapshot`` (and,
        for a change feed, from ``from_ts``). Readers in other processes materialize it.
        ``durable=False``: the caller checks more and calls :meth:`promise` itself. ``keys``:
        a point read of those keys (checked here): the tail holds only their versions, found
        through the buffers' key index (``TableBlock.lookup``), not the whole tail.
        ``map_version``: the slot map the reader routes by, once slots moved (:mod:`dn.moves`;
        None: the moves done here)."""
        if from_ts is not None:
            check_from_ts(from_ts)
        with self._s.cv:
            s = self._resolve_snapshot_locked(snapshot)
            tdef = self._table_at(db, table, s)
            if from_ts is not None and from_ts < self._s.oldest_readable():
                oldest = self._s.oldest_readable()
                raise InvalidArgument(
                    f"from_ts {from_ts} is before the retention window; the oldest readable "
                    f"timestamp is {oldest}",
                    oldest=oldest,
                )
            if from_ts is None:
                plan = snapshot_plan(self._s.ranges, self._s.checkpoints, s)
            else:
                plan = range_plan(self._s.ranges, self._s.checkpoints, s, from_ts)
            if self._s.moves:
                plan = moved_plan(self._s, plan, tdef, s, from_ts, map_version)
            buffers = [*self._s.frozen, self._s.mutable] if plan.tail is not None else []
            stats = self._s.stats  # every live range's (ShardState._check)
            known = from_ts is None and all(r in stats for r in plan.ranges)
            spans = tuple(stats[r].get(tdef.id) for r in plan.ranges) if known else None
            if keys is not None:  # a few versions: found and copied under the lock
                checked = [tdef.check_key(k) for k in keys]
                tail = _key_runs(buffers, tdef.id, checked, plan.tail)
        if keys is None:
            # Copied outside the lock, so a big tail does not stall writers: every commit at or
            # below s is applied (s is resolved), later ones only append above s, and a buffer a
            # flush drops meanwhile stays whole through this reference.
            tail = []
            if plan.tail is not None:
                lo, hi = plan.tail
                for buf in buffers:
                    run = buf.run(tdef.id, lo, hi)
                    if run is not None and len(run):
                        tail.append(run)
        if durable:
            self.promise(s)
        return ReadView(tdef, s, plan, tuple(tail), from_ts, spans, map_version=map_version)

    def checked_view(
        self,
        db: str,
        table: str,
        snapshot: int | None,
        from_ts: int | None = None,
        columns: list[str] | None = None,
        keys: tuple = (),
        bounds: tuple = (),
        map_version: int | None = None,
    ) -> tuple[ReadView, list]:
        """:meth:`read_view` for a read in this process, with its ``columns``, ``keys`` and
        key ``bounds`` (None: unbounded) checked against the table before the promise is made
        durable; returns the view and the checked keys and bounds. With ``keys``, the view is a
        point read's (its tail holds only their versions)."""
        point = list(keys) if keys else None
        view = self.read_view(db, table, snapshot, from_ts, False, point, map_version)
        t = view.table
        checked = [t.check_key(k) for k in keys]
        checked += [None if b is None else t.check_key(b) for b in bounds]
        projection(t, columns)
        self.promise(view.snapshot)
        return view, checked

    def _table_at(self, db: str, table: str, s: int) -> TableDef:
        """The table as of ``s``. A shard that took slots over by a move may have been given
        the table after ``s`` (a shard a reshard added): it serves it at ``s`` all the same
        when a shard it took slots from had it by then (the live definition: its own objects
        hold nothing of the table before it was given it; its references hold the history)."""
        try:
            return self._s.catalog.table_at(db, table, s)
        except NotFound:
            live = moved_table(self._s, db, table, s)
            if live is None:
                raise
            return live

    def snapshot_plan(self, ts: int) -> Plan:
        """Seed 001's snapshot-read plan at ``ts``."""
        with self._s.cv:
            s = self._resolve_snapshot_locked(ts)
            plan = snapshot_plan(self._s.ranges, self._s.checkpoints, s)
        self.promise(s)
        return plan

    def range_plan(self, snapshot: int, from_ts: int) -> Plan:
        """Seed 001's range-read plan for from_ts <= ts <= snapshot."""
        with self._s.cv:
            s = self._resolve_snapshot_locked(snapshot)
            plan = range_plan(self._s.ranges, self._s.checkpoints, s, from_ts)
        self.promise(s)
        return plan

    def databases(self, snapshot: int | None = None) -> list[str]:
        with self._s.cv:
            s = self._resolve_snapshot_locked(snapshot)
            out = self._s.catalog.databases_at(s)
        self.promise(s)
        return out

    def tables(self, db: str, snapshot: int | None = None) -> list[str]:
        with self._s.cv:
            s = self._resolve_snapshot_locked(snapshot)
            out = self._s.catalog.tables_at(db, s)
        self.promise(s)
        return out

    def live_table(self, db: str, table: str) -> TableDef:
        """The table as it is now, without waiting for commits in flight (a catalog lookup:
        for checks on the write path, not for reads)."""
        with self._s.cv:
            self._s.check_usable_locked()
            return self._s.catalog.live_table(db, table)

    def table(self, db: str, table: str, snapshot: int | None = None) -> TableDef:
        with self._s.cv:
            s = self._resolve_snapshot_locked(snapshot)
            out = self._s.catalog.table_at(db, table, s)
        self.promise(s)
        return out


def moved_table(st: ShardState, db: str, table: str, s: int) -> TableDef | None:
    """The live ``db.table`` if an in move maps it to a table its source shard had at ``s``."""
    try:
        live = st.catalog.live_table(db, table)
    except NotFound:
        return None
    for m in st.moves:
        if any(mine == live.id and theirs <= s for _, mine, theirs in m.tables):
            return live
    return None


def moved_plan(
    st: ShardState,
    plan: Plan,
    t: TableDef,
    s: int,
    from_ts: int | None,
    map_version: int | None,
) -> Plan:
    """``plan`` once slots moved (:mod:`dn.moves`): the own objects read through a filter that
    leaves out the moved slots, then for each in move that is some slots' latest, its sources
    and the own objects above its H, filtered to those slots."""
    key = (map_version, t.id, t.pk_pos)
    filters = st.moved_reads.get(key)
    if filters is None:  # made once per map version and table, until the moves change
        filters = _moved_filters(st, t, s, map_version)
        if len(st.moved_reads) > 256:
            st.moved_reads.clear()
        st.moved_reads[key] = filters
    own, sources, afters = filters
    if own is None:
        return plan
    lo_ts = 0 if from_ts is None else from_ts
    refs = [(f, to, flt) for f, to, flt in sources if f <= s and to >= lo_ts]
    for h, flt in afters:
        refs += [(f, to, flt) for f, to in st.ranges if to > h and f <= s and to >= lo_ts]
    return replace(plan, own=own, refs=tuple(refs))


def _moved_filters(st: ShardState, t: TableDef, s: int, map_version: int | None) -> tuple:
    """The filters of :func:`moved_plan` for table ``t`` and a reader's map version: the own
    objects' (None: nothing moved), each source's ``(from, to, filter)``, and per in move
    ``(H, filter)`` for the own objects above its H."""
    rs = moves.read_slots(st.moves, s, map_version, st.shard)
    if rs.plain:
        return None, (), ()
    me, n, pk = st.shard, rs.count, t.pk_pos
    own = SlotFilter(n, rs.moved, False, 0, NO_HI, me, t.id, t.id, pk)
    sources: list[tuple] = []
    afters: list[tuple] = []
    for here, srcs, h, m in rs.after:
        for slots, (q, f, to, lo, hi) in srcs:
            tid = m.source_table(q, me, t.id)
            if tid is not None:
                sources.append((f, to, SlotFilter(n, slots, True, lo, hi, q, t.id, tid, pk)))
        afters.append((h, SlotFilter(n, here, True, h, NO_HI, me, t.id, t.id, pk)))
    return own, tuple(sources), tuple(afters)


def _key_runs(buffers: list, table_id: int, keys: list, window: tuple | None) -> list[Run]:
    """Under the lock: the versions of ``keys`` in the buffers, within the tail's window."""
    if window is None:
        return []
    runs = (buf.run(table_id, *window, keys) for buf in buffers)
    return [run for run in runs if run is not None and len(run)]
