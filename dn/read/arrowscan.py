"""A snapshot scan into Arrow without Python objects: ``Engine.scan_arrow``'s read path.

For a table whose primary key is one ``int64``, ``string`` or ``bytes`` column, a view's rows
are read as Arrow tables and picked with Arrow and numpy kernels:

1. sources, oldest first: each range object of the plan (a version-4 object's table as its
   stored Arrow batches, :class:`dn.objects.rangecols.ArrowTable`, cast to the table's types
   where a column was stored as ``null``; an older object's run converted with
   ``pyarrow.array``), then the view's in-memory tail runs (converted likewise); each as its
   row versions (the table's columns, then ts) and its deletes (key, ts);
2. in each source, the versions with ts <= snapshot (only where the source may hold newer
   ones) and start <= pk < end;
3. the newest version of each key. Fast path — no deletes, every source sorted by (pk, ts) (a
   range object; not a tail) and their key spans in order (each source's largest key at most
   the next one's smallest): the sources concatenated are sorted already, and the last version
   of each key is found by comparing each key with the next one (numpy for ``int64``); when no
   key repeats (one flushed object of distinct keys) the stored columns are returned as read,
   with no copy. Otherwise the versions and the deletes are concatenated and sorted by (pk, ts)
   (``sort_indices``, stable: a delete sorts after an upsert of the same key and ts, as in
   :func:`dn.read.pick.picks`), the last of each key kept, the deletes dropped, and the rows
   taken;
4. the projection.

The result equals :func:`dn.read.arrow.to_arrow` of :func:`dn.read.view.scan_columns` (rows,
order, types, nulls; the chunking may differ). Any other table (a composite or ``float64`` or
``bool`` key) goes through that path. :func:`merge_shards` merges the cluster client's
per-shard results (``coordinator.client.queries.scan_arrow``). Pure functions over a reader's
immutable objects; any thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dn.columnar import ARROW_TYPES
from dn.errors import Internal
from dn.read.arrow import arrow_schema, to_arrow
from dn.read.reader import Reader
from dn.read.run import Run
from dn.read.view import ReadView, scan_columns
from dn.schema import TableDef
from dn.write.arrowmirror import block_rows, convert, schema_of

#: The key types the Arrow path picks by; others go through :mod:`dn.read.pick`.
KEY_TYPES = ("int64", "string", "bytes")


def arrow_path(table: TableDef) -> bool:
    """True when :func:`scan_table` picks ``table``'s rows with Arrow kernels."""
    return len(table.pk_pos) == 1 and table.columns[table.pk_pos[0]][1] in KEY_TYPES


def scan_table(
    reader: Reader,
    view: ReadView,
    start: Any = None,
    end: Any = None,
    columns: Sequence[str] | None = None,
) -> pa.Table:
    """The rows with start <= pk < end visible at the view's snapshot, in primary-key order,
    as a ``pyarrow.Table`` projected on ``columns`` (checked before any fetch)."""
    picked = scan_picked(reader, view, start, end, columns)
    if picked is None:
        return arrow_schema(view.table, columns).empty_table()
    return taken(picked)


#: Picked rows not yet taken: the sources' versions as one table (their chunks, not copied)
#: and the positions of the picked ones in key order (None: every row, in order).
Picked = tuple[pa.Table, "np.ndarray | None"]


def taken(picked: Picked) -> pa.Table:
    """The picked rows, in key order (a copy unless they are every row, in order)."""
    whole, pos = picked
    return whole if pos is None else whole.take(pa.array(pos))


def scan_picked(
    reader: Reader,
    view: ReadView,
    start: Any = None,
    end: Any = None,
    columns: Sequence[str] | None = None,
) -> Picked | None:
    """:func:`scan_table` before its rows are taken (None: no row), projected on
    ``columns``: a cluster scan takes every shard's at once (:func:`merge_shards`)."""
    if view.from_ts is not None:
        raise Internal("a change feed's view (a range plan) cannot serve a snapshot read")
    t = view.table
    schema = arrow_schema(t, columns)
    if not arrow_path(t):
        got = to_arrow(t, scan_columns(reader, view, start, end)[0], columns)
        return (got, None) if got.num_rows else None
    picked = load(reader, view, Sources(t, view.snapshot, start, end)).picked()
    if picked is None:
        return None
    whole, pos = picked
    index = {n: i for i, n in enumerate(t.names)}
    whole = pa.Table.from_arrays([whole.column(index[f.name]) for f in schema], schema=schema)
    return whole, pos


def merge_shards(parts: list[Picked | None], keys: list[str]) -> pa.Table | None:
    """Shards' :func:`scan_picked` results (no key in two of them; ``keys``: the primary
    key's columns, which the projection must hold) as one table in key order, with one take
    of every shard's rows: the picked keys, then one stable argsort of them (numpy for one
    integer column, else ``sort_indices``). None: no row."""
    parts = [p for p in parts if p is not None]
    if not parts:
        return None
    if len(parts) == 1:
        return taken(parts[0])
    every = pa.concat_tables([w for w, _ in parts])
    spot = None  # the picked rows' positions in ``every``; None: all of them
    if any(pos is not None for _, pos in parts):
        at, spots = 0, []
        for whole, pos in parts:
            spots.append(np.arange(at, at + whole.num_rows) if pos is None else pos + at)
            at += whole.num_rows
        spot = np.concatenate(spots)
    cols = [every.column(k) if spot is None else every.column(k).take(spot) for k in keys]
    if len(cols) == 1 and pa.types.is_integer(cols[0].type):
        order = np.argsort(cols[0].to_numpy(), kind="stable")
    else:
        by = pa.table(cols, names=[f"k{i}" for i in range(len(cols))])
        order = pc.sort_indices(by, sort_keys=[(n, "ascending") for n in by.column_names])
        order = order.to_numpy()
    return every.take(order if spot is None else spot[order])


def load(reader: Reader, view: ReadView, src: Sources) -> Sources:
    """Every source of ``view`` (its range objects, then its tail runs) added to ``src``."""
    t = view.table
    for r in reader.range_keys(t, view.plan):
        ro = reader.range(r)
        stored = ro.arrow(t.id)
        if stored is False:  # an object of format version 3 or older
            run = ro.run(t.id, t.pk_pos)
            if run is not None:
                src.add_run(run, r[1])
        elif stored is not None:
            src.add(src.typed_rows(stored.rows()), src.typed_dels(stored.dels()), r[1], True)
    hi = view.plan.tail[1] if view.plan.tail else 0
    for run in view.tail:
        src.add_run(run, hi)
    for rows, dels, ordered in view.arrow_tail or ():
        src.add(rows, dels, hi, ordered)
    return src


def arrow_tail(view: ReadView) -> ReadView:
    """``view`` with its tail runs converted to Arrow (``ReadView.arrow_tail``), for a table
    on the Arrow path: what a shard ships to a reader that reads with Arrow kernels, so that
    no Python value of the tail is pickled on the way (else ``view`` unchanged)."""
    if not view.tail or not arrow_path(view.table):
        return view
    src = Sources(view.table, view.snapshot)
    tail = tuple((*src.run_tables(run), run.sorted_by_pk) for run in view.tail)
    return replace(view, tail=(), arrow_tail=tail)


class Sources:
    """A read's sources, filtered as they are added (ts <= ``snapshot``, ts >= ``from_ts``
    for a change feed, start <= pk < end); :meth:`pick` merges them for a scan. Row tables
    hold the table's columns then ts (by position: a column may be called ``ts``); delete
    tables the key then ts."""

    def __init__(
        self, t: TableDef, snapshot: int, start: Any = None, end: Any = None, from_ts: int = 0
    ) -> None:
        self.types = [ARROW_TYPES[typ] for _, typ in t.columns]
        self.names = schema_of(self.types).names  # c0 .. c<n-1>, then ts (a mirror's too)
        self.table_id, self.pk_pos = t.id, t.pk_pos
        self.kpos = t.pk_pos[0]
        self.ktype = self.types[self.kpos]
        self.snapshot, self.start, self.end, self.from_ts = snapshot, start, end, from_ts
        self.rows: list[tuple[pa.Table, bool]] = []  # (versions, sorted by (pk, ts))
        self.dels: list[pa.Table] = []

    def typed_rows(self, stored: pa.Table) -> pa.Table | None:
        if stored.num_columns == 1 or not stored.num_rows:  # no row versions
            return None
        cols = [c if c.type == typ else c.cast(typ) for c, typ in zip(stored.columns, self.types)]
        return pa.Table.from_arrays([*cols, stored.column(stored.num_columns - 1)], self.names)

    def typed_dels(self, stored: pa.Table | None) -> pa.Table | None:
        if stored is None or not stored.num_rows:
            return None
        k = stored.column(0)
        k = k if k.type == self.ktype else k.cast(self.ktype)
        return pa.table([k, stored.column(1)], ["k", "ts"])

    def add_run(self, run: Run, hi: int) -> None:
        """A run of Python values (a tail, or an object of format version 3 or older)."""
        self.add(*self.run_tables(run), hi, run.sorted_by_pk)

    def run_tables(self, run: Run) -> tuple[pa.Table | None, pa.Table | None]:
        """A run of Python values as (its versions, its deletes), unfiltered."""
        rows = dels = None
        if run.ts and run.block is not None:  # a buffer's tail: through the block's mirror
            block, a, b = run.block
            rows = block_rows(block, self.types, a, b)  # columns named as self.names
        elif run.ts:
            cols = run.cols if run.cols is not None else [list(c) for c in zip(*run.rows)]
            schema = schema_of(self.types)
            rows = pa.Table.from_batches(convert(cols, run.ts, 0, len(run.ts), schema), schema)
        if run.del_ts:
            keys = pa.array(run.del_pks, type=self.ktype)
            dels = pa.table([keys, pa.array(run.del_ts, pa.int64())], ["k", "ts"])
        return rows, dels

    def add(self, rows: pa.Table | None, dels: pa.Table | None, hi: int, ordered: bool) -> None:
        if rows is not None:
            rows = self._filter(rows, self.kpos, len(self.types), hi)
            if rows is not None:
                self.rows.append((rows, ordered))
        if dels is not None:
            dels = self._filter(dels, 0, 1, hi)
            if dels is not None:
                self.dels.append(dels)

    def _filter(self, tb: pa.Table, kpos: int, tpos: int, hi: int) -> pa.Table | None:
        mask = None
        if hi > self.snapshot:
            mask = pc.less_equal(tb.column(tpos), self.snapshot)
        if self.from_ts:
            m = pc.greater_equal(tb.column(tpos), self.from_ts)
            mask = m if mask is None else pc.and_(mask, m)
        for bound, op in ((self.start, pc.greater_equal), (self.end, pc.less)):
            if bound is not None:
                m = op(tb.column(kpos), pa.scalar(bound, self.ktype))
                mask = m if mask is None else pc.and_(mask, m)
        if mask is not None:
            tb = tb.filter(mask)
        return tb if tb.num_rows else None

    def pick(self) -> pa.Table | None:
        """The newest visible version of each key not deleted, in key order (None: none)."""
        picked = self.picked()
        return None if picked is None else taken(picked)

    def picked(self) -> Picked | None:
        """:meth:`pick` before the rows are taken (:data:`Picked`; None: none)."""
        if not self.rows:
            return None
        tables = [tb for tb, _ in self.rows]
        whole = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        if not self.dels and all(ok for _, ok in self.rows) and self._in_order(tables):
            last = _last_of_each(whole.column(self.kpos))
            return whole, (None if last is None else np.flatnonzero(last))
        keys = pa.chunked_array(
            [c for tb in tables for c in tb.column(self.kpos).chunks]
            + [c for d in self.dels for c in d.column(0).chunks],
            type=self.ktype,
        )
        ts = pa.chunked_array(
            [c for tb in tables for c in tb.column(len(self.types)).chunks]
            + [c for d in self.dels for c in d.column(1).chunks],
            type=pa.int64(),
        )
        ndel = sum(d.num_rows for d in self.dels)
        pos = np.concatenate([np.arange(whole.num_rows), np.full(ndel, -1, dtype=np.int64)])
        order = pc.sort_indices(
            pa.table([keys, ts], ["k", "ts"]), sort_keys=[("k", "ascending"), ("ts", "ascending")]
        )
        pos = pos[order.to_numpy()]
        last = _last_of_each(keys.take(order))
        if last is not None:
            pos = pos[last]
        pos = pos[pos >= 0]
        if len(pos) == whole.num_rows and (np.diff(pos) > 0).all():  # already in order
            return whole, None
        return (whole, pos) if len(pos) else None

    def _in_order(self, tables: list[pa.Table]) -> bool:
        """True when each table's largest key is at most the next one's smallest."""
        for a, b in zip(tables, tables[1:]):
            if a.column(self.kpos)[-1].as_py() > b.column(self.kpos)[0].as_py():
                return False
        return True


def _last_of_each(keys: pa.ChunkedArray | pa.Array) -> np.ndarray | None:
    """For sorted ``keys``: a mask of the last of each run of equal keys; None when no key
    repeats (every one is the last of its run). Chunk by chunk (no copy of the keys: a stored
    object's parts come as chunks), comparing each chunk's last key with the next one's first."""
    n = len(keys)
    if n < 2:
        return None
    chunks = [c for c in keys.chunks if len(c)] if isinstance(keys, pa.ChunkedArray) else [keys]
    last = np.empty(n, dtype=bool)
    at = 0
    for i, c in enumerate(chunks):
        m = len(c)
        if pa.types.is_integer(c.type):
            k = c.to_numpy()
            np.not_equal(k[1:], k[:-1], out=last[at : at + m - 1])
        elif m > 1:
            ne = pc.not_equal(c.slice(1), c.slice(0, m - 1))
            last[at : at + m - 1] = ne.to_numpy(zero_copy_only=False)
        nxt = chunks[i + 1] if i + 1 < len(chunks) else None
        last[at + m - 1] = nxt is None or c[m - 1] != nxt[0]
        at += m
    return None if last.all() else last
