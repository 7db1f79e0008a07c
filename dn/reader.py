"""The reader: materializes plans into rows and changes.

Given a plan (:mod:`dn.plan`), the table's definition and the tail runs handed out by the
shard, the reader fetches the checkpoint and range objects from the store through an
immutable-object cache, turns them into runs (:mod:`dn.run`) and merges them:

- ``scan``/``get`` at S: the newest version with ts <= S wins; a delete hides the key; rows in
  primary-key order, as dicts (optionally projected on ``columns``);
- ``changes`` over from_ts <= ts <= S: every version, as :class:`Change`, in (ts, pk) order.

Runs are visited oldest first (checkpoint objects, working ranges, tail), so a later version
overwrites an earlier one; within a run a key's versions are in ascending ts order. For the
common primary key, one int64 column, a scan finds the newest versions and their key order
with numpy sorts over the keys (no dict entry or Python comparison per version).

The reader never talks to the shard and never writes. It is safe to share between threads:
the cache has its own lock, and decoded objects are never mutated after their runs are built.
"""

from __future__ import annotations

import gc
import threading
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from itertools import chain, repeat
from typing import Any, NamedTuple

import numpy as np

from dn import checkpoint as ckpt
from dn import codec, rangeobj
from dn.errors import InvalidArgument
from dn.plan import Plan
from dn.run import Run
from dn.schema import TableDef
from dn.store.base import ObjectStore

_TOMB = -1


class Change(NamedTuple):
    """One entry of a change feed (a named tuple: cheap to build by the million)."""

    ts: int
    kind: str  # "upsert" or "delete"
    pk: Any
    row: dict | None


class ObjectCache:
    """A byte-bounded LRU of decoded immutable objects."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity = capacity_bytes
        self._items: OrderedDict[str, tuple[Any, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: str, load: Callable[[], tuple[Any, int]]) -> Any:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return item[0]
            self.misses += 1
        value, size = load()
        with self._lock:
            if key not in self._items:
                self._items[key] = (value, size)
                self._bytes += size
                while self._bytes > self.capacity and len(self._items) > 1:
                    _, (_, s) = self._items.popitem(last=False)
                    self._bytes -= s
        return value

    def status(self) -> dict:
        with self._lock:
            return {"objects": len(self._items), "bytes": self._bytes, "hits": self.hits,
                    "misses": self.misses}


class Reader:
    """Fetches and merges the objects of one shard's plans."""

    def __init__(self, store: ObjectStore, shard: int, cache: ObjectCache) -> None:
        self._store = store
        self._shard = shard
        self.cache = cache

    def checkpoint(self, ts: int) -> ckpt.Checkpoint:
        key = codec.checkpoint_key(self._shard, ts)

        def load():
            data = self._store.get(key)
            return ckpt.decode(data, key), len(data)

        return self.cache.get(key, load)

    def range(self, r: tuple[int, int]) -> rangeobj.RangeObject:
        key = codec.range_key(self._shard, r[0], r[1])

        def load():
            data = self._store.get(key)
            return rangeobj.decode(data, key), len(data)

        return self.cache.get(key, load)

    def runs(self, table: TableDef, plan: Plan, tail: list[Run], key: Any = None
             ) -> list[tuple[Run, int]]:
        """The runs of ``table`` the plan names, oldest first, each with its newest ts."""
        out: list[tuple[Run, int]] = []
        ranges: list[tuple[int, int]] = []
        if plan.checkpoint is not None:
            cp = self.checkpoint(plan.checkpoint)
            for r, st in cp.tables.get(table.id, ()):
                if key is not None and st.pk_min is not None and not (
                    st.pk_min <= key <= st.pk_max
                ):
                    continue
                ranges.append(r)
        ranges.extend(plan.ranges)
        for r in ranges:
            run = self.range(r).run(table.id, table.pk_pos)
            if run is not None and len(run):
                out.append((run, r[1]))
        hi = plan.tail[1] if plan.tail else 0
        out.extend((run, hi) for run in tail if len(run))
        return out

    # -- latest state -----------------------------------------------------------------------

    def scan(self, table: TableDef, snapshot: int, runs: list[tuple[Run, int]],
             columns: list[str] | None = None, start: Any = None, end: Any = None
             ) -> Iterator[dict]:
        make = column_maker(table, columns)
        yield from make(self.sorted_columns(snapshot, runs, start, end)[0])

    def scan_rows(self, snapshot: int, runs: list[tuple[Run, int]], start: Any = None,
                  end: Any = None) -> Iterator[tuple]:
        """:meth:`scan` as row tuples in column order (for callers that ship rows on)."""
        yield from self.sorted_rows(snapshot, runs, start, end)

    def sorted_rows(self, snapshot: int, runs: list[tuple[Run, int]], start: Any = None,
                    end: Any = None) -> list[tuple]:
        """The rows with start <= pk < end visible at ``snapshot``, in primary-key order, as
        one list of row tuples (see :meth:`_picks`), with the garbage collector paused
        (:func:`paused_gc`)."""
        with paused_gc():
            return _pick_rows(runs, self._picks(snapshot, runs, start, end)[0])

    def sorted_columns(self, snapshot: int, runs: list[tuple[Run, int]], start: Any = None,
                       end: Any = None) -> tuple[list[list], Any]:
        """:meth:`sorted_rows` by column: the table's columns of those rows (``[]`` when
        there are none), and their keys as a numpy int64 array when the keys are ints (else
        None). No tuple is made per row, so nothing is left for the collector to walk."""
        with paused_gc():
            picks, keys = self._picks(snapshot, runs, start, end)
            return _pick_columns(runs, picks), keys

    def _picks(self, snapshot: int, runs: list[tuple[Run, int]], start: Any = None,
               end: Any = None) -> tuple[list[int], Any]:
        """Positions into the runs' upserts (concatenated in order) of the rows with start <=
        pk < end visible at ``snapshot``, in primary-key order, and for int keys those keys
        (numpy). Built with whole-list operations: for int keys by :func:`_int_picks`; else
        the newest version of each key is found by updating a dict key -> position (runs
        oldest first, so later versions overwrite) and the keys are sorted once."""
        found = _int_picks(snapshot, runs, start, end)
        if found is not None:
            return found
        best: dict[Any, int] = {}  # key -> position into the runs' upserts, concatenated
        base = 0
        tombs = False
        for run, hi in runs:
            n = len(run.ts)
            if n:
                if hi <= snapshot:
                    best.update(zip(run.pks, range(base, base + n)))
                else:
                    ts = run.ts
                    best.update(
                        (pk, base + i) for i, pk in enumerate(run.pks) if ts[i] <= snapshot
                    )
            for pk, t in zip(run.del_pks, run.del_ts):
                if t > snapshot:
                    continue
                cur = best.get(pk)
                if cur is not None and cur >= base and run.ts[cur - base] > t:
                    continue  # re-inserted after the delete within this run
                best[pk] = _TOMB
                tombs = True
            base += n
        if tombs:
            best = {k: v for k, v in best.items() if v >= 0}
        keys = sorted(best)
        lo = 0 if start is None else bisect_left(keys, start)
        hi_i = len(keys) if end is None else bisect_left(keys, end)
        if lo or hi_i < len(keys):
            keys = keys[lo:hi_i]
        return list(map(best.__getitem__, keys)), None

    def get(self, table: TableDef, pk: Any, snapshot: int, runs: list[tuple[Run, int]],
            columns: list[str] | None = None) -> dict | None:
        names, pick = _projection(table, columns)
        for run, _ in reversed(runs):
            found = run.lookup(pk, snapshot)
            if found is not None:
                row = found[1]
                if row is None:
                    return None
                if pick is None:
                    return dict(zip(names, row))
                return {n: row[i] for n, i in pick}
        return None

    # -- change feed ------------------------------------------------------------------------

    def changes(self, table: TableDef, from_ts: int, snapshot: int,
                runs: list[tuple[Run, int]], columns: list[str] | None = None
                ) -> Iterator[Change]:
        """Every version with from_ts <= ts <= snapshot as a :class:`Change`, in (ts, pk)
        order. The versions are chosen and ordered with whole-list operations (numpy for int
        keys), the rows' dicts are made from the picked columns, and the records with
        ``map``: no Python step per change but for a feed with deletes."""
        make = column_maker(table, columns)
        with paused_gc():
            ts_l, pk_l, pos_l = _feed_order(from_ts, snapshot, runs)
            picks = [p for p in pos_l if p >= 0] if _has_deletes(runs) else pos_l
            dicts = list(make(_pick_columns(runs, picks)))
        if len(picks) == len(pos_l):
            return map(_new_change, zip(ts_l, repeat("upsert"), pk_l, dicts))
        rows = iter(dicts)
        kinds = ["upsert" if p >= 0 else "delete" for p in pos_l]
        out = [next(rows) if p >= 0 else None for p in pos_l]
        return map(_new_change, zip(ts_l, kinds, pk_l, out))

def _pick_rows(runs: list[tuple[Run, int]], picks: list[int]) -> list[tuple]:
    """The row tuples at ``picks``, positions into the runs' upserts concatenated in order.
    When every run has its rows by column (a buffer's tail), the columns are concatenated
    instead, and only the rows picked become tuples."""
    if not picks:
        return []
    if not all(run.cols is not None for run, _ in runs):
        rows = runs[0][0].rows if len(runs) == 1 else list(
            chain.from_iterable(run.rows for run, _ in runs))
        return list(map(rows.__getitem__, picks))
    return list(zip(*_pick_columns(runs, picks)))


def _pick_columns(runs: list[tuple[Run, int]], picks: list[int]) -> list[list]:
    """:func:`_pick_rows` by column: one list per column."""
    if not picks:
        return []
    if not all(run.cols is not None for run, _ in runs):
        return [list(c) for c in zip(*_pick_rows(runs, picks))]
    parts = [run.cols for run, _ in runs if run.ts]
    cols = parts[0] if len(parts) == 1 else [
        list(chain.from_iterable(p[i] for p in parts)) for i in range(len(parts[0]))]
    return [list(map(col.__getitem__, picks)) for col in cols]


#: Below this many versions the dict path of ``_sorted_rows`` is as fast as numpy's.
_INT_PICKS_MIN = 2048


def _int_picks(snapshot: int, runs: list[tuple[Run, int]], start: Any, end: Any
               ) -> tuple[list[int], Any] | None:
    """For runs whose primary keys are all ints (one int64 column): the positions (into the
    runs' upserts, concatenated in order) of the newest version at or before ``snapshot`` of
    each key with start <= key < end that is not deleted, in key order, and those keys (a
    numpy int64 array). None when the keys
    are not all ints, or there are too few to be worth it: then the caller's dict path runs.

    A key's versions, in the order the runs are concatenated (oldest run first, each run in
    ascending ts per key), are in ascending ts; so a stable sort by key puts each key's
    newest version last. Deletes take part as versions of their own, placed by ts."""
    n_versions = sum(len(run.ts) + len(run.del_ts) for run, _ in runs)
    if n_versions < _INT_PICKS_MIN or (start is not None and type(start) is not int) or (
            end is not None and type(end) is not int):
        return None
    deletes = any(run.del_ts for run, _ in runs)
    need_ts = deletes or any(hi > snapshot for run, hi in runs if run.ts)
    keys, stamps, places = [], [], []
    base = 0
    for run, _ in runs:
        n = len(run.ts)
        if n:
            if set(map(type, run.pks)) != {int}:
                return None
            keys.append(run.pks)
            stamps.append(run.ts)
            places.append(np.arange(base, base + n, dtype=np.int64))
        if run.del_ts:
            if set(map(type, run.del_pks)) != {int}:
                return None
            keys.append(run.del_pks)
            stamps.append(run.del_ts)
            places.append(np.full(len(run.del_ts), -1, dtype=np.int64))
        base += n
    if not keys:
        return [], np.empty(0, dtype=np.int64)
    try:
        k = np.concatenate([np.asarray(x, dtype=np.int64) for x in keys])
    except OverflowError:
        return None
    pos = np.concatenate(places)
    if need_ts:
        ts = np.concatenate([np.asarray(x, dtype=np.int64) for x in stamps])
        visible = ts <= snapshot
        if not visible.all():
            k, pos, ts = k[visible], pos[visible], ts[visible]
        order = np.lexsort((ts, k)) if deletes else np.argsort(k, kind="stable")
    else:
        order = np.argsort(k, kind="stable")
    k, pos = k[order], pos[order]
    if len(k):
        newest = np.empty(len(k), dtype=bool)
        newest[-1] = True
        np.not_equal(k[1:], k[:-1], out=newest[:-1])
        k, pos = k[newest], pos[newest]
        live = pos >= 0
        if not live.all():
            k, pos = k[live], pos[live]
    lo = 0 if start is None else int(np.searchsorted(k, start, "left"))
    hi_i = len(k) if end is None else int(np.searchsorted(k, end, "left"))
    return pos[lo:hi_i].tolist(), k[lo:hi_i]


#: Change((ts, kind, pk, row)) without the Python-level ``__new__`` of a named tuple: the
#: tuple type's own constructor, called from C by ``map``.
_new_change = partial(tuple.__new__, Change)


def _has_deletes(runs: list[tuple[Run, int]]) -> bool:
    return any(run.del_ts for run, _ in runs)


def _feed_order(from_ts: int, snapshot: int, runs: list[tuple[Run, int]]
                ) -> tuple[list[int], list, list[int]]:
    """The versions with from_ts <= ts <= snapshot in (ts, pk) order: their timestamps, keys
    and positions (into the runs' upserts, concatenated in order; -1 for a delete)."""
    keys: list = []
    stamps: list[int] = []
    places: list[int] = []
    base = 0
    for run, _ in runs:
        n = len(run.ts)
        keys.extend(run.pks)
        stamps.extend(run.ts)
        places.extend(range(base, base + n))
        keys.extend(run.del_pks)
        stamps.extend(run.del_ts)
        places.extend(repeat(-1, len(run.del_ts)))
        base += n
    if len(keys) >= _INT_PICKS_MIN and set(map(type, keys)) == {int}:
        try:
            k = np.asarray(keys, dtype=np.int64)
        except OverflowError:
            k = None
        if k is not None:
            t = np.asarray(stamps, dtype=np.int64)
            pos = np.asarray(places, dtype=np.int64)
            inside = (t >= from_ts) & (t <= snapshot)
            if not inside.all():
                k, t, pos = k[inside], t[inside], pos[inside]
            order = np.lexsort((k, t))
            return t[order].tolist(), k[order].tolist(), pos[order].tolist()
    chosen = [i for i, t in enumerate(stamps) if from_ts <= t <= snapshot]
    chosen.sort(key=list(zip(stamps, keys)).__getitem__)
    return ([stamps[i] for i in chosen], [keys[i] for i in chosen],
            [places[i] for i in chosen])


class _Pauses:
    """How many :func:`paused_gc` blocks are running, in any thread, and whether the first
    of them turned the collector off (it was on)."""

    lock = threading.Lock()
    depth = 0
    ours = False


@contextmanager
def paused_gc() -> Iterator[None]:
    """Python's cyclic garbage collector paused while a bulk step makes many objects that
    live on (a read's row tuples, decoded runs): without the pause, every 700 allocations
    start a collection that walks the new objects again, which measured about half of such
    a step's time. Nothing made in the step is cyclic garbage. Pauses in several threads
    overlap: the collector is turned back on when the last one ends, and only if it was on
    when the first began."""
    with _Pauses.lock:
        if _Pauses.depth == 0:
            _Pauses.ours = gc.isenabled()
            if _Pauses.ours:
                gc.disable()
        _Pauses.depth += 1
    try:
        yield
    finally:
        with _Pauses.lock:
            _Pauses.depth -= 1
            if _Pauses.depth == 0 and _Pauses.ours:
                gc.enable()


def row_maker(table: TableDef, columns: list[str] | None) -> Callable[[tuple], dict]:
    """A function from a row tuple (column order) to its dict, projected on ``columns``.

    Made once per read from source text (as ``collections.namedtuple`` makes its classes):
    a dict display with constant keys builds a dict about twice as fast as
    ``dict(zip(names, row))``. The names are validated column names, quoted with ``repr``.
    """
    names, pick = _projection(table, columns)
    if pick is None:
        pick = [(n, i) for i, n in enumerate(names)]
    body = ", ".join(f"{n!r}: r[{i}]" for n, i in pick)
    return eval(f"lambda r: {{{body}}}", {})  # noqa: S307 - validated names, see above


def column_maker(table: TableDef, columns: list[str] | None
                 ) -> Callable[[list[list]], Iterator[dict]]:
    """:func:`row_maker` for rows given by column: a function from the table's columns (one
    list each, in column order; ``[]`` for no rows) to an iterator of the rows' dicts,
    projected on ``columns``, made with no tuple per row (``map`` over the columns of a dict
    display made once per read from source text)."""
    names, pick = _projection(table, columns)
    if pick is None:
        pick = [(n, i) for i, n in enumerate(names)]
    if not pick:
        return lambda cols: (({} for _ in cols[0]) if cols else iter(()))
    args = ", ".join(f"c{j}" for j in range(len(pick)))
    body = ", ".join(f"{n!r}: c{j}" for j, (n, _) in enumerate(pick))
    make = eval(f"lambda {args}: {{{body}}}", {})  # noqa: S307 - validated names, as above
    at = [i for _, i in pick]
    return lambda cols: map(make, *(cols[i] for i in at)) if cols else iter(())


def _projection(table: TableDef, columns: list[str] | None):
    if columns is None:
        return table.names, None
    if isinstance(columns, str) or not isinstance(columns, list | tuple):
        raise InvalidArgument("columns must be a list of column names")
    pick = []
    for c in columns:
        if c not in table.names:
            raise InvalidArgument(
                f"unknown column {c!r} for table {table.db}.{table.name}; "
                f"columns are {list(table.names)}"
            )
        pick.append((c, table.names.index(c)))
    return table.names, pick
