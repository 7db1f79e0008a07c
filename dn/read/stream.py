"""Streaming scans: one shard's rows in primary-key order, window by window, in bounded memory.

A table on the Arrow path (a primary key of one ``int64``, ``string`` or ``bytes`` column) is
streamed by :mod:`dn.read.arrowstream`, the same merge over Arrow tables; this module streams
every other table (composite, ``float64`` or ``bool`` keys) through Python values, on the engine
and shard by shard in the cluster client (merged by :mod:`dn.read.merge`).

A snapshot view's rows (:class:`dn.read.view.ReadView`) come from *sources*, each sorted by
(pk, ts): the table's run in each range object the plan names (whole objects, see
``docs/formats.md``), and the in-memory tail (sorted once here). :func:`windows` walks them in
key order, a k-way merge by key *windows*: each step cuts at the smallest of the live sources'
``step``-th next keys (:mod:`dn.read.keymerge`, shared with :mod:`dn.read.arrowstream`),
takes every version at or below the cut from every source, and picks the visible rows of that
window with the read path's own :func:`dn.read.pick.sorted_columns`
(windows hold every version of each of their keys, so the picks are those of a whole scan).

What stays open. A range object is fetched when the merge reaches its smallest key for the
table (from the view's ``range_stats`` or the checkpoint's statistics), through
:meth:`dn.read.reader.Reader.range_uncached` (the shared cache is read, never filled), and
dropped once the merge has passed its largest key. A source without statistics is fetched at
the start. So the memory a scan holds is:

    the decoded range objects whose key span (for this table) contains the current window
    + a sorted copy of the view's in-memory tail + O(step) rows of the current window.

For a table written in key order (bulk loads, time-ordered keys) objects barely overlap and
that is about one object; for keys written at random every object spans the whole key space,
all are open at once, and the bound is the table's decoded size (as for a whole scan). A
decoded object takes several times its stored bytes (Python values), and compaction makes
objects up to ``compaction_max_bytes``: an object larger than a batch sets the bound, not the
batch. Not here: merging shards (:mod:`dn.read.merge`), Arrow (:func:`dn.read.arrow.to_batches`).

Pure functions over immutable runs; a generator is used by one thread at a time.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from dn.errors import InvalidArgument
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


@dataclass(slots=True, eq=False)
class _Source:
    """One sorted run of the view: loaded (``run``) or waiting for the merge to reach ``lo``."""

    order: int  # place among the view's runs, oldest first (later versions win)
    hi_ts: int  # the newest ts it may hold
    lo: Any = None  # its smallest key for the table (None: unknown, loaded at the start)
    load: Callable[[], Run | None] | None = None
    run: Run | None = None
    pos: int = 0  # next upsert; upserts [pos, stop) are still to come
    stop: int = 0
    dpos: int = 0  # next delete; deletes [dpos, dstop) are still to come
    dstop: int = 0

    def open(self, start: Any, end: Any) -> None:
        run = self.run = self.load() if self.load is not None else self.run
        self.load = None
        if run is None:
            return
        pks, dks = run.pks, run.del_pks
        self.pos = 0 if start is None else bisect_left(pks, start)
        self.stop = len(pks) if end is None else bisect_left(pks, end)
        self.dpos = 0 if start is None else bisect_left(dks, start)
        self.dstop = len(dks) if end is None else bisect_left(dks, end)

    def live(self) -> bool:
        return self.pos < self.stop or self.dpos < self.dstop

    def drop(self) -> None:
        self.run = None

    def cut(self, step: int) -> Any:
        """The key ``step`` versions ahead in its upserts or deletes, whichever is smaller."""
        run, best = self.run, None
        for keys, p, q in ((run.pks, self.pos, self.stop), (run.del_pks, self.dpos, self.dstop)):
            if p < q:
                k = keys[min(p + step, q) - 1]
                if best is None or k < best:
                    best = k
        return best

    def take(self, cut: Any) -> Run | None:
        """Its versions with key <= ``cut`` still to come, as a run; advances past them."""
        run = self.run
        a = bisect_right(run.pks, cut, self.pos, self.stop)
        b = bisect_right(run.del_pks, cut, self.dpos, self.dstop)
        if a == self.pos and b == self.dpos:
            return None
        p, d = self.pos, self.dpos
        self.pos, self.dpos = a, b
        cols = [c[p:a] for c in run.cols] if a > p else []
        dks, dts = run.del_pks[d:b], run.del_ts[d:b]
        return Run(run.pks[p:a], run.ts[p:a], None, dks, dts, True, cols=cols)


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
    now += [_Source(n + j, hi, run=sorted_run(r)) for j, r in enumerate(view.tail) if len(r)]
    for takes in merge(waiting, now, start, end, step):
        runs = [(r, hi_ts) for r, hi_ts in takes if r is not None]
        cols, keys = sorted_columns(view.snapshot, runs)
        del runs, takes
        if cols:
            yield cols, keys


def _loader(reader: Reader, r: tuple[int, int], table_id: int, pk_pos: tuple) -> Callable:
    def load() -> Run | None:
        return reader.range_uncached(r).run(table_id, pk_pos)  # the object itself is let go

    return load


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
