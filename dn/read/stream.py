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

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa

from dn.errors import InvalidArgument
from dn.objects.rangeobj import to_run
from dn.read import arrowstream
from dn.read.arrow import to_batches
from dn.read.arrowscan import arrow_path
from dn.read.keymerge import Chunks, ListKeys, Source, merge, planned_ranges
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
    """``Engine.scan_batches``: the rows of ``Engine.scan_arrow`` as record batches of at most
    ``batch_rows`` rows (none for no rows; see :func:`dn.read.arrowstream.rebatch`; the
    Python-value path cuts exactly ``batch_rows`` but the last), streamed. The arguments are
    checked and the snapshot resolved now (``checked_view``: the shard's); the objects are
    fetched as the batches are read."""
    check_batch_rows(batch_rows)
    view, (lo, hi) = checked_view(db, table, snapshot, columns=columns, bounds=(start, end))
    if arrow_path(view.table):  # Arrow sources and picks: dn.read.arrowstream
        return arrowstream.batches(reader, view, lo, hi, columns, batch_rows)
    chunks = (cols for cols, _ in windows(reader, view, lo, hi, batch_rows))
    return to_batches(view.table, chunks, columns, batch_rows)


def _run(got: list) -> Run | None:
    """A window's takes as one run (its versions, then its deletes), or None."""
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


def _chunks(ups: Iterable[Run | None], dels: Iterable[Run | None]) -> list[Chunks]:
    """A source's runs as the merge reads them: its versions' keys, then its deletes'."""
    return [(ups, lambda r: ListKeys(r.pks)), (dels, lambda r: ListKeys(r.del_pks))]


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
        src = Source(i, r[1], _run, lo=lo, load=_loader(reader, r, t.id, t.pk_pos))
        (now if lo is None else waiting).append(src)
    hi = view.plan.tail[1] if view.plan.tail else 0
    for j, r in enumerate(view.tail):
        if len(r):
            whole = sorted_run(r)
            now.append(Source(n + j, hi, _run, load=lambda _s, _e, w=whole: _chunks((w,), (w,))))
    for takes in merge(waiting, now, start, end, step):
        runs = [(r, hi_ts) for r, hi_ts in takes if r is not None]
        cols, keys = sorted_columns(view.snapshot, runs)
        del runs, takes
        if cols:
            yield cols, keys


def _loader(reader: Reader, r: tuple[int, int], table_id: int, pk_pos: tuple) -> Callable:
    def load(start: Any, end: Any) -> list[Chunks]:
        stored = reader.range_parts(r, table_id)  # format 5: the parts by ranged reads
        if stored is None:
            return []
        if stored is False:  # an older object: fetched whole, let go once passed
            run = reader.range_uncached(r).run(table_id, pk_pos)
            return _chunks((run,), (run,))
        ups = (_part_run(tb, pk_pos, True) for tb in stored.row_parts(start, end))
        dels = (_part_run(tb, pk_pos, False) for tb in stored.del_parts(start, end))
        return _chunks(ups, dels)

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
