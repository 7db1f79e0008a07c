"""Streaming scans in Arrow: one shard's rows in primary-key order, window by window.

The Arrow twin of :mod:`dn.read.stream` for tables on the Arrow path
(:func:`dn.read.arrowscan.arrow_path`: a primary key of one ``int64``, ``string`` or ``bytes``
column). The sources are the same — the table in each range object the plan names, oldest
first, then the in-memory tail (sorted once here) — but each is held as Arrow tables (its row
versions and its deletes, sorted by (pk, ts)): a range object of format 4 as stored, an older
one or a tail converted. The merge is the same k-way merge by key windows
(:mod:`dn.read.keymerge`, shared): each step cuts at the smallest of the live sources'
``step``-th next keys, takes every version at or below the cut from every source (zero-copy
slices), and picks the window's visible rows with
:meth:`dn.read.arrowscan.Sources.pick` (a window holds every version of each of its keys).

What stays open is also the same: a range object is fetched when the merge reaches its smallest
key for the table (from the view's ``range_stats`` or the checkpoint's statistics), through
:meth:`dn.read.reader.Reader.range_uncached`, and dropped once the merge has passed its
largest key. So the memory a scan holds is the Arrow bytes of the objects whose key span
contains the current window (for a table written in key order, about one object), the sorted
tail, and O(``step``) rows; a version takes about as many bytes as it does in the Arrow table
a whole scan returns (several times fewer than the Python values of :mod:`dn.read.stream`).

Keys are searched with numpy for ``int64`` and by bisection over the Arrow array otherwise.
Pure functions over immutable objects; a generator is used by one thread at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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


@dataclass(slots=True, eq=False)
class _Source:
    """One sorted source of the view: loaded, or waiting for the merge to reach ``lo``."""

    order: int  # place among the view's sources, oldest first (later versions win)
    hi_ts: int  # the newest ts it may hold
    lo: Any = None  # its smallest key for the table (None: unknown, loaded at the start)
    load: Callable[[], tuple] | None = None
    parts: list | None = None  # [(table, keys, pos, stop)] for its versions, then its deletes

    def open(self, start: Any, end: Any) -> None:
        tables = self.load() if self.load is not None else ()
        self.load = None
        self.parts = []
        for kind, (tb, kpos) in enumerate(tables):
            if tb is None or not tb.num_rows:
                continue
            keys = _Keys(tb.column(kpos))
            n = len(keys.arr)
            pos = 0 if start is None else keys.bisect(start, 0, n, False)
            stop = n if end is None else keys.bisect(end, 0, n, False)
            if pos < stop:
                self.parts.append([kind, tb, keys, pos, stop])

    def live(self) -> bool:
        return bool(self.parts)

    def drop(self) -> None:
        self.parts = None

    def cut(self, step: int) -> Any:
        """The key ``step`` versions ahead in its versions or deletes, whichever is smaller."""
        best = None
        for _, _, keys, pos, stop in self.parts or ():
            k = keys.at(min(pos + step, stop) - 1)
            if best is None or k < best:
                best = k
        return best

    def take(self, cut: Any) -> tuple[pa.Table | None, pa.Table | None]:
        """(its versions, its deletes) with key <= ``cut`` still to come; advances past them."""
        out: list[pa.Table | None] = [None, None]
        for part in self.parts or ():
            kind, tb, keys, pos, stop = part
            a = keys.bisect(cut, pos, stop, True)
            if a > pos:
                out[kind] = tb.slice(pos, a - pos)
            part[3] = a
        self.parts = [p for p in self.parts or () if p[3] < p[4]]
        return out[0], out[1]


def batches(
    reader: Reader,
    view: ReadView,
    start: Any = None,
    end: Any = None,
    columns: Any = None,
    batch_rows: int = 65_536,
) -> Iterator[pa.RecordBatch]:
    """The rows with start <= pk < end visible at the view's snapshot, in primary-key order,
    projected on ``columns``, as record batches of ``batch_rows`` rows (the last one shorter;
    none for no rows)."""
    return rebatch(view.table, windows(reader, view, start, end, batch_rows), columns, batch_rows)


def rebatch(
    table: TableDef, tables: Iterable[pa.Table], columns: Any, batch_rows: int
) -> Iterator[pa.RecordBatch]:
    """Windows (:func:`windows`, or :func:`merge` of several shards') as record batches of
    ``batch_rows`` rows projected on ``columns`` (the last one shorter)."""
    schema = arrow_schema(table, columns)
    index = {n: i for i, n in enumerate(table.names)}
    pick = [index[f.name] for f in schema]
    held: list[pa.Table] = []
    n = 0
    for window in tables:
        held.append(pa.Table.from_arrays([window.column(i) for i in pick], schema=schema))
        n += window.num_rows
        while n >= batch_rows:
            whole = pa.concat_tables(held) if len(held) > 1 else held[0]
            yield from whole.slice(0, batch_rows).combine_chunks().to_batches()
            rest = whole.slice(batch_rows)
            held, n = ([rest] if rest.num_rows else []), rest.num_rows
    if n:
        whole = pa.concat_tables(held) if len(held) > 1 else held[0]
        yield from whole.combine_chunks().to_batches()


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
        src = _Source(i, r[1], lo=lo, load=_loader(reader, r, conv))
        (now if lo is None else waiting).append(src)
    hi = view.plan.tail[1] if view.plan.tail else 0
    tails = [conv.run_tables(run) for run in view.tail if len(run)]
    tails += [(rows, dels) for rows, dels, _ in view.arrow_tail or ()]
    for j, (rows, dels) in enumerate(tails):
        sorted_tail = (_sorted(rows, conv.kpos, len(conv.types)), _sorted(dels, 0, 1))
        now.append(_Source(n + j, hi, load=lambda s=sorted_tail, c=conv: _pair(s, c)))
    for takes in keymerge.merge(waiting, now, start, end, step):
        picks = Sources(view.table, view.snapshot)
        for (rows, dels), hi_ts in takes:
            picks.add(rows, dels, hi_ts, True)
        window = picks.pick()
        del picks, takes
        if window is not None and window.num_rows:
            yield window


def _pair(tables: tuple, conv: Sources) -> list[tuple[pa.Table | None, int]]:
    return [(tables[0], conv.kpos), (tables[1], 0)]


def _loader(reader: Reader, r: tuple[int, int], conv: Sources) -> Callable:
    def load() -> list[tuple[pa.Table | None, int]]:
        ro = reader.range_uncached(r)  # the object itself is let go once its tables are out
        stored = ro.arrow(conv.table_id)
        if stored is False:  # an object of format version 3 or older
            run = ro.run(conv.table_id, conv.pk_pos)
            rows, dels = conv.run_tables(run) if run is not None else (None, None)
            return _pair((rows, dels), conv)
        if stored is None:
            return []
        return _pair((conv.typed_rows(stored.rows()), conv.typed_dels(stored.dels())), conv)

    return load


def _sorted(tb: pa.Table | None, kpos: int, tpos: int) -> pa.Table | None:
    """``tb`` sorted by (key, ts), stably (a tail is in commit order)."""
    if tb is None or tb.num_rows < 2:
        return tb
    names = tb.column_names
    order = pc.sort_indices(tb, sort_keys=[(names[kpos], "ascending"), (names[tpos], "ascending")])
    return tb.take(order)
