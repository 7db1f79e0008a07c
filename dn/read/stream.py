"""Streaming scans: one shard's rows in primary-key order, window by window, in bounded memory.

A table on the Arrow path (a primary key of one ``int64``, ``string`` or ``bytes`` column) is
streamed by :mod:`dn.read.arrowstream`, the same merge over Arrow tables; this module streams
every other table (composite, ``float64`` or ``bool`` keys) through Python values, on the engine
and shard by shard in the cluster client (merged by :mod:`dn.read.merge`).

A snapshot view's rows (:class:`dn.read.view.ReadView`) come from *sources*, each sorted by
(pk, ts): the table's run in each range object the plan names (part by part, see
``docs/formats.md``), and the in-memory tail (sorted once here). :func:`windows` walks them in
key order, a k-way merge by key *windows*: each step cuts at the smallest of the live sources'
``step``-th next keys (:mod:`dn.read.keymerge`, shared with :mod:`dn.read.arrowstream`),
takes every version at or below the cut from every source, and picks the visible rows of that
window with the read path's own :func:`dn.read.pick.sorted_columns`
(windows hold every version of each of their keys, so the picks are those of a whole scan).

What stays open. A range object is opened when the merge reaches its smallest key for the
table (from the view's ``range_stats`` or the checkpoint's statistics) and dropped once the
merge has passed its largest key. An object of format 5 is read one part at a time with ranged
reads (:meth:`dn.read.reader.Reader.range_parts`; its parts are cut between keys, so a window
never reaches past a part's last key), each part made into Python values when reached; an
older one is fetched and decoded whole through :meth:`dn.read.reader.Reader.range_uncached`
(the shared cache is read, never filled). A source without statistics is opened at the start.
So the memory a scan holds is:

    one part of each range object whose key span (for this table) contains the current window
    (a whole object of format 4 or older) + a sorted copy of the view's in-memory tail
    + O(step) rows of the current window.

For a table written in key order (bulk loads, time-ordered keys) objects barely overlap and
that is about one object; for keys written at random every object spans the whole key space
and all are open at once: one part of each. A part's Python values take several times its
Arrow bytes. Not here: merging shards (:mod:`dn.read.merge`), Arrow
(:func:`dn.read.arrow.to_batches`).

Pure functions over immutable runs; a generator is used by one thread at a time.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from dn.errors import Corruption, InvalidArgument
from dn.objects.rangeobj import to_run
from dn.read import arrowstream
from dn.read.arrow import to_batches
from dn.read.arrowscan import arrow_path
from dn.read.keymerge import merge, planned_ranges
from dn.read.pick import sorted_columns
from dn.read.reader import Reader
from dn.read.run import Run
from dn.read.view import ReadView

#: A window's visible rows: the table's columns (``[]`` for none) and their int keys (or None).
Chunk = tuple[list[list], np.ndarray | None]


def check_batch_rows(batch_rows: object) -> int:
    """``batch_rows`` as a positive int; else InvalidArgument."""
    if type(batch_rows) is not int or batch_rows <= 0:
        raise InvalidArgument(f"batch_rows must be a positive int, got {batch_rows!r}")
    return batch_rows


def scan_batches(
    checked_view: Callable[..., tuple[ReadView, list]],
    reader: Reader,
    db: str,
    table: str,
    snapshot: int | None = None,
    columns: list[str] | None = None,
    start: Any = None,
    end: Any = None,
    batch_rows: int = 65_536,
) -> Iterator[pa.RecordBatch]:
    """``Engine.scan_batches``: the rows of ``Engine.scan_arrow`` as record batches of
    ``batch_rows`` rows (the last one shorter; none for no rows), streamed. The arguments are
    checked and the snapshot resolved now (``checked_view``: the shard's); the objects are
    fetched as the batches are read."""
    check_batch_rows(batch_rows)
    view, (lo, hi) = checked_view(db, table, snapshot, columns=columns, bounds=(start, end))
    if arrow_path(view.table):  # Arrow sources and picks: dn.read.arrowstream
        return arrowstream.batches(reader, view, lo, hi, columns, batch_rows)
    chunks = (cols for cols, _ in windows(reader, view, lo, hi, batch_rows))
    return to_batches(view.table, chunks, columns, batch_rows)


class _Stream:
    """One sorted stream of a source, its upserts (``kind`` 0) or its deletes (1), read run by
    run: a range object of format 5 one part at a time (its parts are cut between keys), an
    older one or a tail as one run. ``[pos, stop)``: what is still to come of the current run."""

    __slots__ = ("kind", "_more", "_end", "run", "keys", "pos", "stop", "last")

    def __init__(self, kind: int, runs: Iterator[Run | None], end: Any) -> None:
        self.kind, self._more, self._end = kind, runs, end
        self.run: Run | None = None
        self.keys: list = []
        self.last: Any = None  # the previous run's last key
        self.pos = self.stop = 0

    def seek(self, start: Any) -> bool:
        """Move to the first key >= ``start``; False when there is none below end."""
        while self._next():
            if start is not None and self.keys[-1] < start:
                continue
            self.pos = 0 if start is None else bisect_left(self.keys, start)
            return self.pos < self.stop
        return False

    def _next(self) -> bool:
        self.run = None
        for run in self._more:
            keys = (run.pks if self.kind == 0 else run.del_pks) if run is not None else ()
            if not keys:
                continue
            if self.last is not None and not keys[0] > self.last:
                raise Corruption("a stored table's parts are not in key order, or split a key")
            self.last = keys[-1]
            if self._end is not None and not keys[0] < self._end:
                break
            self.run, self.keys, self.pos = run, keys, 0
            self.stop = len(keys) if self._end is None else bisect_left(keys, self._end)
            return True
        self._more = iter(())
        return False

    def take(self, cut: Any) -> tuple[Run, int, int] | None:
        """(its run, from, to): its versions with key <= ``cut`` (all in this run: ``cut`` is
        at most its last key), or None; moves on to the next run when this one is done."""
        a = bisect_right(self.keys, cut, self.pos, self.stop)
        out = (self.run, self.pos, a) if a > self.pos else None
        self.pos = a
        if a == self.stop and not (a == len(self.keys) and self._next()):
            self.run = None
        return out


@dataclass(slots=True, eq=False)
class _Source:
    """One sorted source of the view: loaded, or waiting for the merge to reach ``lo``."""

    order: int  # place among the view's runs, oldest first (later versions win)
    hi_ts: int  # the newest ts it may hold
    lo: Any = None  # its smallest key for the table (None: unknown, loaded at the start)
    load: Callable[[Any, Any], tuple] | None = None  # (start, end) -> (upsert runs, delete runs)
    streams: list[_Stream] | None = None

    def open(self, start: Any, end: Any) -> None:
        runs = self.load(start, end) if self.load is not None else ((), ())
        self.load = None
        self.streams = []
        for kind, it in enumerate(runs):
            stream = _Stream(kind, iter(it), end)
            if stream.seek(start):
                self.streams.append(stream)

    def live(self) -> bool:
        return bool(self.streams)

    def drop(self) -> None:
        self.streams = None

    def cut(self, step: int) -> Any:
        """The key ``step`` versions ahead in its upserts or deletes, whichever is smaller
        (within their current runs)."""
        best = None
        for st in self.streams or ():
            k = st.keys[min(st.pos + step, st.stop) - 1]
            if best is None or k < best:
                best = k
        return best

    def take(self, cut: Any) -> Run | None:
        """Its versions with key <= ``cut`` still to come, as a run; advances past them."""
        got = [None, None]
        for st in self.streams or ():
            got[st.kind] = st.take(cut)
        self.streams = [st for st in self.streams or () if st.run is not None]
        up, dl = got
        if up is None and dl is None:
            return None
        pks: list = []
        ts: list = []
        cols: list = []
        if up is not None:
            run, p, a = up
            pks, ts = run.pks[p:a], run.ts[p:a]
            cols = [c[p:a] for c in run.cols]
        dks: list = []
        dts: list = []
        if dl is not None:
            run, d, b = dl
            dks, dts = run.del_pks[d:b], run.del_ts[d:b]
        return Run(pks, ts, None, dks, dts, True, cols=cols)


def windows(
    reader: Reader, view: ReadView, start: Any = None, end: Any = None, step: int = 65_536
) -> Iterator[Chunk]:
    """The rows with start <= pk < end visible at the view's snapshot, in primary-key order,
    window by window as :data:`Chunk`\\ s (windows without a visible row are skipped); each
    window takes at most about ``step`` versions (:func:`dn.read.keymerge.merge`). Keys come
    normalized. See the module docstring for the memory held."""
    ranges, n = planned_ranges(reader, view, start, end)
    t = view.table
    waiting, now = [], []
    for i, r, lo in ranges:
        src = _Source(i, r[1], lo=lo, load=_loader(reader, r, t.id, t.pk_pos))
        (now if lo is None else waiting).append(src)
    hi = view.plan.tail[1] if view.plan.tail else 0
    for j, r in enumerate(view.tail):
        if len(r):
            whole = sorted_run(r)
            now.append(_Source(n + j, hi, load=lambda _s, _e, w=whole: ((w,), (w,))))
    for takes in merge(waiting, now, start, end, step):
        runs = [(r, hi_ts) for r, hi_ts in takes if r is not None]
        cols, keys = sorted_columns(view.snapshot, runs)
        del runs, takes
        if cols:
            yield cols, keys


def _loader(reader: Reader, r: tuple[int, int], table_id: int, pk_pos: tuple) -> Callable:
    def load(start: Any, end: Any) -> tuple:
        stored = reader.range_parts(r, table_id)  # format 5: the parts by ranged reads
        if stored is None:
            return (), ()
        if stored is False:  # an older object: fetched whole, let go once passed
            run = reader.range_uncached(r).run(table_id, pk_pos)
            return (run,), (run,)
        ups = (_part_run(tb, pk_pos, True) for tb in stored.row_parts(start, end))
        dels = (_part_run(tb, pk_pos, False) for tb in stored.del_parts(start, end))
        return ups, dels

    return load


def _part_run(tb: pa.Table, pk_pos: tuple, rows: bool) -> Run:
    """One stored part (:mod:`dn.objects.rangecols`) as a run of Python values: its row
    versions (``rows``) or its deletes."""
    ts = tb.column(tb.num_columns - 1).to_pylist()
    cols = [c.to_pylist() for c in tb.columns[:-1]]
    if rows:
        t = {"ts": ts, "cols": cols if ts else [], "del_pks": [], "del_ts": []}
    else:
        keys = cols[0] if len(cols) == 1 else [list(k) for k in zip(*cols)]
        t = {"ts": [], "cols": [], "del_pks": keys, "del_ts": ts}
    return to_run(t, pk_pos)


def sorted_run(run: Run) -> Run:
    """``run`` sorted by (pk, ts), by column (an in-memory tail is in commit order); a run
    sorted already is returned as it is."""
    if run.sorted_by_pk:
        return run
    cols = run.cols if run.cols is not None else [list(c) for c in zip(*run.rows)]
    up, dl = _order(run.pks), _order(run.del_pks)  # stable: a key's versions stay in ts order
    return Run(
        [run.pks[i] for i in up],
        [run.ts[i] for i in up],
        None,
        [run.del_pks[i] for i in dl],
        [run.del_ts[i] for i in dl],
        True,
        cols=[[c[i] for i in up] for c in cols] if up else [],
    )


def _order(keys: list) -> list[int]:
    """The stable order that sorts ``keys`` (numpy for int keys)."""
    if len(keys) > 1 and set(map(type, keys)) == {int}:
        try:
            return np.argsort(np.asarray(keys, dtype=np.int64), kind="stable").tolist()
        except OverflowError:
            pass
    return sorted(range(len(keys)), key=keys.__getitem__)
