"""Streaming scans in Arrow: one shard's rows in primary-key order, window by window.

The Arrow twin of :mod:`dn.read.stream` for tables on the Arrow path
(:func:`dn.read.arrowscan.arrow_path`: a primary key of one ``int64``, ``string`` or ``bytes``
column). The sources are the same — the table in each range object the plan names, oldest
first, then the in-memory tail (sorted once here) — but each is held as Arrow tables (its row
versions and its deletes, sorted by (pk, ts)): a range object of format 4 or 5 as stored, an
older one or a tail converted. The sources and the merge are shared
(:mod:`dn.read.keymerge`, its ``Source`` read chunk by chunk): each step cuts at the smallest
of the live sources' ``step``-th next keys, takes every version at or below the cut from every
source (zero-copy slices), and picks the window's visible rows with
:meth:`dn.read.arrowscan.Sources.pick` (a window holds every version of each of its keys).

What stays open is also the same: a range object is opened when the merge reaches its smallest
key for the table (from the view's ``range_stats`` or the checkpoint's statistics), and
dropped once the merge has passed its largest key. An object of format 5 is read one part at a
time, each with a ranged read (:meth:`dn.read.reader.Reader.range_parts`; its streams are cut
between keys, :mod:`dn.objects.rangecols`): a source holds the object's meta and its current
part, and a window never reaches past a part's last key. An older object is fetched and decoded
whole. So the memory a scan holds is, for each object whose key span contains the current
window (for a table written in key order, about one), one part; the sorted tail; and
O(``step``) rows.

Keys are searched with numpy for ``int64`` and by bisection over the Arrow array otherwise.
Pure functions over immutable objects; a generator is used by one thread at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dn.objects.rangecols import scan_pool
from dn.read import keymerge
from dn.read.arrow import arrow_schema
from dn.read.arrowscan import Sources
from dn.read.reader import Reader
from dn.read.view import ReadView
from dn.schema import TableDef


class _Keys:
    """A sorted key column, searchable: numpy for integers, bisection over Arrow otherwise."""

    __slots__ = ("arr", "ints")

    def __init__(self, arr: pa.ChunkedArray) -> None:
        self.arr = arr.combine_chunks() if arr.num_chunks != 1 else arr.chunk(0)
        self.ints = self.arr.to_numpy() if pa.types.is_integer(self.arr.type) else None

    def __len__(self) -> int:
        return len(self.arr)

    def at(self, i: int) -> Any:
        return self.ints[i] if self.ints is not None else self.arr[i].as_py()

    def bisect(self, x: Any, lo: int, hi: int, right: bool) -> int:
        if self.ints is not None:
            side = "right" if right else "left"
            return lo + int(np.searchsorted(self.ints[lo:hi], x, side=side))
        while lo < hi:
            mid = (lo + hi) // 2
            k = self.arr[mid].as_py()
            if k < x or (right and k == x):
                lo = mid + 1
            else:
                hi = mid
        return lo


def _slices(got: list) -> list[pa.Table | None]:
    """A window's takes as Arrow: [its versions, its deletes], zero-copy slices."""
    return [None if g is None else g[0].slice(g[1], g[2] - g[1]) for g in got]


def _keys_at(kpos: int) -> Callable[[pa.Table], _Keys | None]:
    def keys_of(tb: pa.Table) -> _Keys | None:
        return _Keys(tb.column(kpos)) if tb.num_rows else None

    return keys_of


def batches(
    reader: Reader,
    view: ReadView,
    start: Any = None,
    end: Any = None,
    columns: Any = None,
    batch_rows: int = 65_536,
) -> Iterator[pa.RecordBatch]:
    """The rows with start <= pk < end visible at the view's snapshot, in primary-key order,
    projected on ``columns``, as record batches of at most ``batch_rows`` rows (:func:`rebatch`;
    none for no rows)."""
    return rebatch(view.table, windows(reader, view, start, end, batch_rows), columns, batch_rows)


def rebatch(
    table: TableDef, tables: Iterable[pa.Table], columns: Any, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """Windows (:func:`windows`, or :func:`merge` of several shards') as record batches of at
    most ``batch_rows`` rows projected on ``columns``; most hold over half that. A window of
    at least half a batch goes out as it is, with no copy (for a table written in key order,
    each stored part is one), and a longer one cut in even pieces; shorter ones are joined (one
    copy into the scan's pool) until they make half a batch or the next window would overflow
    it. A window is never split to fill a batch up: the rest would hold the window's whole part
    while the next part is read. So what this generator holds while the next window is read
    is at most half a batch of short windows (the stream's memory bound: bench part 7's 2j)."""
    schema = arrow_schema(table, columns)
    index = {n: i for i, n in enumerate(table.names)}
    pick = [index[f.name] for f in schema]
    pool = scan_pool()  # each batch joined into the scan's own pool (dn.objects.rangecols)
    held: list[pa.Table] = []
    out: list[pa.RecordBatch] = []
    n = 0
    for window in tables:
        w = pa.Table.from_arrays([window.column(i) for i in pick], schema=schema)
        del window
        if n and n + w.num_rows > batch_rows:
            out.extend(_joined(held, pool))
            held, n = [], 0
        if w.num_rows > batch_rows:  # cut into even pieces, each over half a batch
            k = -(-w.num_rows // batch_rows)
            cuts = [w.num_rows * i // k for i in range(k + 1)]
            out.extend(
                b for a, z in zip(cuts, cuts[1:]) for b in _joined([w.slice(a, z - a)], pool)
            )
        elif w.num_rows:
            held.append(w)
            n += w.num_rows
        del w
        if 2 * n >= batch_rows:  # not held while the next window is read
            out.extend(_joined(held, pool))
            held, n = [], 0
        while out:  # popped as handed out: nothing handed out stays held here
            yield out.pop(0)
    if n:
        out.extend(_joined(held, pool))
        del held
        while out:
            yield out.pop(0)


def _joined(tables: list[pa.Table], pool: pa.MemoryPool) -> list[pa.RecordBatch]:
    """``tables`` (one schema) as one record batch: no copy for one table of one chunk."""
    whole = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    return whole.combine_chunks(pool).to_batches()


def merge(table: TableDef, streams: list[Iterator[pa.Table]]) -> Iterator[pa.Table]:
    """Shards' windows (each stream in key order, keys unique across streams) as tables in
    key order: each step cuts at the smallest of the streams' current windows' last keys and
    orders what is at or below it (one window per shard held, and the step's output)."""
    kpos = table.pk_pos[0]
    heads = [h for s in streams if (h := _Head(s, kpos)).next()]
    while len(heads) > 1:
        cut = min(h.keys.at(len(h.keys.arr) - 1) for h in heads)
        parts = [p for h in heads if (p := h.take(cut)) is not None]
        whole = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        if len(parts) > 1:
            whole = whole.take(pc.sort_indices(whole.column(kpos)))
        yield whole
        del parts, whole
        heads = [h for h in heads if h.off < len(h.keys.arr) or h.next()]
    if heads:  # one stream left: its windows as they come
        h = heads[0]
        yield h.window.slice(h.off)
        while h.next():
            yield h.window


class _Head:
    """One stream's current window and how far the merge has taken it."""

    __slots__ = ("_it", "_kpos", "window", "keys", "off")

    def __init__(self, it: Iterator[pa.Table], kpos: int) -> None:
        self._it, self._kpos, self.off = it, kpos, 0

    def next(self) -> bool:
        self.window = self.keys = None  # the last window not held while the next is read
        for window in self._it:
            if window.num_rows:
                self.window, self.off = window, 0
                self.keys = _Keys(window.column(self._kpos))
                return True
        return False

    def take(self, cut: Any) -> pa.Table | None:
        j = self.keys.bisect(cut, self.off, len(self.keys.arr), True)
        if j <= self.off:
            return None
        i, self.off = self.off, j
        return self.window.slice(i, j - i)


def windows(
    reader: Reader, view: ReadView, start: Any = None, end: Any = None, step: int = 65_536
) -> Iterator[pa.Table]:
    """The visible rows, window by window, each an Arrow table of the table's columns (and
    ts) in key order; windows without a visible row are skipped. Each window takes at most
    about ``step`` versions (:func:`dn.read.keymerge.merge`)."""
    ranges, n = keymerge.planned_ranges(reader, view, start, end)
    conv = Sources(view.table, view.snapshot)
    waiting, now = [], []
    for i, r, lo in ranges:
        src = keymerge.Source(i, r[1], _slices, lo=lo, load=_loader(reader, r, conv))
        (now if lo is None else waiting).append(src)
    hi = view.plan.tail[1] if view.plan.tail else 0
    tails = [conv.run_tables(run) for run in view.tail if len(run)]
    tails += [(rows, dels) for rows, dels, _ in view.arrow_tail or ()]
    for j, (rows, dels) in enumerate(tails):
        sorted_tail = (_sorted(rows, conv.kpos, len(conv.types)), _sorted(dels, 0, 1))
        load = lambda _s, _e, t=sorted_tail, c=conv: _pair(t, c)  # noqa: E731
        now.append(keymerge.Source(n + j, hi, _slices, load=load))
    for takes in keymerge.merge(waiting, now, start, end, step):
        window = _picked(view, takes)
        del takes
        if window is not None and window.num_rows:
            yield window
        del window  # not held while the merge reads the next part


def _picked(view: ReadView, takes: list) -> pa.Table | None:
    """A window's visible rows from its takes (their slices not held past the pick)."""
    picks = Sources(view.table, view.snapshot)
    for (rows, dels), hi_ts in takes:
        picks.add(rows, dels, hi_ts, True)
    return picks.pick()


def _pair(tables: tuple, conv: Sources) -> list[keymerge.Chunks]:
    return [((tables[0],), _keys_at(conv.kpos)), ((tables[1],), _keys_at(0))]


def _loader(reader: Reader, r: tuple[int, int], conv: Sources) -> Callable:
    def load(start: Any, end: Any) -> list[keymerge.Chunks]:
        stored = reader.range_parts(r, conv.table_id)  # format 5: the parts by ranged reads
        if stored is False:  # format 4 or older: the object fetched whole, let go once passed
            ro = reader.range_uncached(r)
            stored = ro.arrow(conv.table_id)
            if stored is False:  # format 3 or older
                run = ro.run(conv.table_id, conv.pk_pos)
                rows, dels = conv.run_tables(run) if run is not None else (None, None)
                return _pair((rows, dels), conv)
        if stored is None:
            return []
        rows = map(conv.typed_rows, stored.row_parts(start, end))  # a part at a time
        dels = map(conv.typed_dels, stored.del_parts(start, end))
        return [(rows, _keys_at(conv.kpos)), (dels, _keys_at(0))]

    return load


def _sorted(tb: pa.Table | None, kpos: int, tpos: int) -> pa.Table | None:
    """``tb`` sorted by (key, ts), stably (a tail is in commit order)."""
    if tb is None or tb.num_rows < 2:
        return tb
    names = tb.column_names
    order = pc.sort_indices(tb, sort_keys=[(names[kpos], "ascending"), (names[tpos], "ascending")])
    return tb.take(order)
