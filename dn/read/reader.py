"""The reader: fetches one shard's checkpoints and range objects and turns plans into runs.

Given a plan (:mod:`dn.read.plan`), the table's definition and the tail runs handed out by the
shard, :meth:`Reader.runs` fetches the checkpoint and range objects the plan names from the
object store, through an :class:`dn.read.cache.ObjectCache` of decoded immutable objects, and
lists the table's runs (:mod:`dn.read.run`) oldest first: the ranges a checkpoint lists, the
plan's working ranges, then the tail. Readers visit runs in that order, so a later version
overwrites an earlier one.

Not here: choosing visible versions (:mod:`dn.read.pick`), feeds (:mod:`dn.read.feed`), dicts
(:mod:`dn.read.rows`); a read goes through :func:`dn.read.view.materialize`. The reader never
talks to the shard and never writes. It is safe to share between threads: the cache has its
own lock, and decoded objects are never mutated after their runs are built. A streaming
scan (:mod:`dn.read.stream`) fetches its range objects with :meth:`Reader.range_uncached`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dn.objects import checkpoint as ckpt
from dn.objects import codec, rangeobj, rangeparts
from dn.read.cache import ObjectCache, Pins
from dn.read.plan import Plan
from dn.read.run import Run, Runs
from dn.read.slotfilter import FilteredArrow, FilteredRange
from dn.schema import TableDef
from dn.store.base import ObjectStore


class Reader:
    """Fetches and lists the objects of one shard's plans."""

    def __init__(
        self, store: ObjectStore, shard: int, cache: ObjectCache, pins: Pins | None = None
    ) -> None:
        self._store = store
        self._shard = shard
        self.cache = cache
        self._pins = pins

    def pinned(self, pins: Pins) -> Reader:
        """This reader for one read whose objects used several times ``pins`` holds."""
        return Reader(self._store, self._shard, self.cache, pins)

    def object_keys(self, table: TableDef, plan: Plan) -> list[tuple[int, str]]:
        """The range objects :meth:`range_keys` names, as (their shard, their store key): a
        filtered one's shard is the filter's."""
        out = []
        for r in self.range_keys(table, plan):
            shard = r[2].shard if len(r) > 2 else self._shard
            out.append((shard, codec.range_key(shard, r[0], r[1])))
        return out

    def checkpoint(self, ts: int) -> ckpt.Checkpoint:
        key = codec.checkpoint_key(self._shard, ts)

        def load():
            data = self._store.get(key)
            return ckpt.decode(data, key), len(data)

        return self.cache.get(key, load)

    def range(self, r: tuple) -> Any:
        """Range ``(from, to)`` of this shard, or ``(from, to, SlotFilter)``: that object (of
        the filter's shard) as the filter reads it (:mod:`dn.read.slotfilter`)."""
        if len(r) > 2:
            f = r[2]
            fkey = f"{codec.range_key(f.shard, r[0], r[1])}#{f.digest}"

            def view() -> tuple[FilteredRange, int]:
                inner = self._filtered_object(f.shard, r)
                # counted as half the object: once read, a view keeps only its filtered rows
                # (a split's two views of one object share them out), not the object
                return FilteredRange(inner, f), 1 + inner.nbytes // 2

            return self.cache.get(fkey, view)
        return self._range(self._shard, r)

    def _range(self, shard: int, r: tuple) -> rangeobj.RangeObject:
        key = codec.range_key(shard, r[0], r[1])

        def load():
            data = self._store.get(key)
            return rangeobj.decode(data, key), len(data)

        if self._pins is not None:
            return self._pins.get(key, lambda: self.cache.get(key, load))
        return self.cache.get(key, load)

    def _filtered_object(self, shard: int, r: tuple) -> rangeobj.RangeObject:
        """The object a filtered view reads, not kept in the cache: once slots moved, every
        read of it at a newer snapshot is through a view, and the views are cached. Caching
        the object as well counted it twice; a table larger than half the cache then missed
        every object on every scan after a split (``bench/reshard.py``'s 7c). One cached
        from before the move is taken out of the cache (it would be held decoded beside its
        views). Held for the read's other view of it (:class:`dn.read.cache.Pins`)."""
        key = codec.range_key(shard, r[0], r[1])

        def load() -> rangeobj.RangeObject:
            found = self.cache.take(key)
            return found if found is not None else rangeobj.decode(self._store.get(key), key)

        return self._pins.get(key, load) if self._pins is not None else load()

    def range_uncached(self, r: tuple) -> Any:
        """:meth:`range` without filling the cache: the cached object or view if there is
        one, else fetched and decoded for the caller alone (a streaming scan drops it once
        passed)."""
        f = r[2] if len(r) > 2 else None
        key = codec.range_key(self._shard if f is None else f.shard, r[0], r[1])
        if f is not None:
            view = self.cache.peek(f"{key}#{f.digest}")
            if view is not None:
                return view
        found = self.cache.peek(key, count=f is None)
        ro = found if found is not None else rangeobj.decode(self._store.get(key), key)
        return ro if f is None else FilteredRange(ro, f)

    def range_parts(self, r: tuple, table_id: int) -> Any:
        """Table ``table_id`` of range ``r`` to read one part at a time
        (:meth:`dn.objects.rangecols.ArrowTable.row_parts` / ``del_parts``): the cached
        object's, else from the store with ranged reads (:func:`dn.objects.rangeparts.open_table`,
        the object is not fetched whole). None: the object holds no such table; False: it is of
        format 4 or older and not cached (read it with :meth:`range_uncached`)."""
        f = r[2] if len(r) > 2 else None
        if f is not None:
            if table_id != f.table_id:
                return None
            table_id = f.object_table_id
        key = codec.range_key(self._shard if f is None else f.shard, r[0], r[1])
        found = self.cache.peek(key)
        if found is not None:
            stored = found.arrow(table_id)
        else:
            stored = rangeparts.open_table(self._store, key, table_id)
        if f is None or stored is None or stored is False:
            return stored
        return FilteredArrow(stored, f)

    def runs(self, table: TableDef, plan: Plan, tail: Sequence[Run], key: Any = None) -> Runs:
        """The runs of ``table`` the plan names, oldest first, each with its newest ts. For a
        point read, ``key`` skips the checkpoint's ranges whose key span excludes it."""
        out: Runs = []
        for r in self.range_keys(table, plan, key):
            run = self.range(r).run(table.id, table.pk_pos)
            if run is not None and len(run):
                out.append((run, r[1]))
        hi = plan.tail[1] if plan.tail else 0
        out.extend((run, hi) for run in tail if len(run))
        return out

    def range_keys(self, table: TableDef, plan: Plan, key: Any = None) -> list[tuple]:
        """The ranges (from, to) of the plan that may hold ``table``'s versions, oldest
        first (:meth:`runs` without fetching them; a scan into Arrow reads the objects); once
        slots moved, with their filters, and then the plan's filtered objects (``refs``)."""
        ranges: list[tuple[int, int]] = []
        if plan.checkpoint is not None:
            cp = self.checkpoint(plan.checkpoint)
            for r, st in cp.tables.get(table.id, ()):
                if (
                    key is not None
                    and st.pk_min is not None
                    and not (st.pk_min <= key <= st.pk_max)
                ):
                    continue
                ranges.append(r)
        ranges.extend(plan.ranges)
        if plan.own is not None:
            ranges = [(a, b, plan.own) for a, b in ranges]
        ranges.extend(plan.refs)
        return ranges
