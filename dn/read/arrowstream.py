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
largest key. An object of format 5 is read one part at a time, each with a ranged read
(:meth:`dn.read.reader.Reader.range_parts`; its streams are cut between keys,
:mod:`dn.objects.rangecols`): a source holds the object's meta and its current part, and a
window never reaches past a part's last key (a key does not continue into the next part). An
older object is fetched and decoded whole. So the memory a scan holds is, for each object whose
key span contains the current window (for a table written in key order, about one), one part;
the sorted tail; and O(``step``) rows.

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

from dn.errors import Corruption
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


class _Part:
    """One sorted stream of a source (its versions, or its deletes), read part by part: the
    current part, its keys, and the rows of it still to come, ``[pos, stop)``."""

    __slots__ = ("kind", "kpos", "_more", "_end", "tb", "keys", "pos", "stop", "last")

    def __init__(self, kind: int, parts: Iterator[pa.Table | None], kpos: int, end: Any):
        self.kind, self.kpos, self._more, self._end = kind, kpos, parts, end
        self.tb: pa.Table | None = None
        self.last: Any = None  # the previous part's last key
        self.pos = self.stop = 0

    def seek(self, start: Any) -> bool:
        """Move to the first row with key >= ``start``; False when there is none below end."""
        while self._next():
            n = len(self.keys.arr)
            if start is not None and self.keys.at(n - 1) < start:
                continue
            self.pos = 0 if start is None else self.keys.bisect(start, 0, n, False)
            return self.pos < self.stop
        return False

    def _next(self) -> bool:
        """Read the next non-empty part below end (parts are cut between keys: its keys all
        follow the last part's)."""
        self.tb = None
        for tb in self._more:
            if tb is None or not tb.num_rows:
                continue
            keys = _Keys(tb.column(self.kpos))
            n = len(keys.arr)
            first = keys.at(0)
            if self.last is not None and not first > self.last:
                raise Corruption("a stored table's parts are not in key order, or split a key")
            self.last = keys.at(n - 1)
            if self._end is not None and not first < self._end:
                break
            self.tb, self.keys, self.pos = tb, keys, 0
            self.stop = n if self._end is None else keys.bisect(self._end, 0, n, False)
            return True
        self._more = iter(())
        return False

    def take(self, cut: Any) -> pa.Table | None:
        """Its rows with key <= ``cut`` (all in this part: ``cut`` is at most its last key);
        moves on to the next part when this one is done."""
        a = self.keys.bisect(cut, self.pos, self.stop, True)
        out = self.tb.slice(self.pos, a - self.pos) if a > self.pos else None
        self.pos = a
        if a == self.stop and not (a == len(self.keys.arr) and self._next()):
            self.tb = None
        return out


@dataclass(slots=True, eq=False)
class _Source:
    """One sorted source of the view: loaded, or waiting for the merge to reach ``lo``."""

    order: int  # place among the view's sources, oldest first (later versions win)
    hi_ts: int  # the newest ts it may hold
    lo: Any = None  # its smallest key for the table (None: unknown, loaded at the start)
    load: Callable[[Any, Any], list] | None = None  # (start, end) -> its streams
    parts: list[_Part] | None = None  # its versions, then its deletes, each read part by part

    def open(self, start: Any, end: Any) -> None:
        streams = self.load(start, end) if self.load is not None else ()
        self.load = None
        self.parts = []
        for kind, (it, kpos) in enumerate(streams):
            part = _Part(kind, iter(it), kpos, end)
            if part.seek(start):
                self.parts.append(part)

    def live(self) -> bool:
        return bool(self.parts)

    def drop(self) -> None:
        self.parts = None

    def cut(self, step: int) -> Any:
        """The key ``step`` versions ahead in its versions or deletes, whichever is smaller
        (within their current parts)."""
        best = None
        for p in self.parts or ():
            k = p.keys.at(min(p.pos + step, p.stop) - 1)
            if best is None or k < best:
                best = k
        return best

    def take(self, cut: Any) -> tuple[pa.Table | None, pa.Table | None]:
        """(its versions, its deletes) with key <= ``cut`` still to come; advances past them."""
        out: list[pa.Table | None] = [None, None]
        for p in self.parts or ():
            out[p.kind] = p.take(cut)
        self.parts = [p for p in self.parts or () if p.tb is not None]
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
    pool = scan_pool()  # each batch cut into the scan's own pool (dn.objects.rangecols)
    held: list[pa.Table] = []
    n = 0
    for window in tables:
        held.append(pa.Table.from_arrays([window.column(i) for i in pick], schema=schema))
        n += window.num_rows
        while n >= batch_rows:
            whole = pa.concat_tables(held) if len(held) > 1 else held[0]
            yield from whole.slice(0, batch_rows).combine_chunks(pool).to_batches()
            rest = whole.slice(batch_rows)
            held, n = ([rest] if rest.num_rows else []), rest.num_rows
    if n:
        whole = pa.concat_tables(held) if len(held) > 1 else held[0]
        yield from whole.combine_chunks(pool).to_batches()


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
        now.append(_Source(n + j, hi, load=lambda _s, _e, t=sorted_tail, c=conv: _pair(t, c)))
    for takes in keymerge.merge(waiting, now, start, end, step):
        picks = Sources(view.table, view.snapshot)
        for (rows, dels), hi_ts in takes:
            picks.add(rows, dels, hi_ts, True)
        window = picks.pick()
        del picks, takes
        if window is not None and window.num_rows:
            yield window


def _pair(tables: tuple, conv: Sources) -> list[tuple[Iterable[pa.Table | None], int]]:
    return [((tables[0],), conv.kpos), ((tables[1],), 0)]


def _loader(reader: Reader, r: tuple[int, int], conv: Sources) -> Callable:
    def load(start: Any, end: Any) -> list[tuple[Iterable[pa.Table | None], int]]:
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
        return [(rows, conv.kpos), (map(conv.typed_dels, stored.del_parts(start, end)), 0)]

    return load


def _sorted(tb: pa.Table | None, kpos: int, tpos: int) -> pa.Table | None:
    """``tb`` sorted by (key, ts), stably (a tail is in commit order)."""
    if tb is None or tb.num_rows < 2:
        return tb
    names = tb.column_names
    order = pc.sort_indices(tb, sort_keys=[(names[kpos], "ascending"), (names[tpos], "ascending")])
    return tb.take(order)
