"""A change feed into Arrow without Python objects: ``changes_arrow``'s read path.

For a table on the Arrow path (:func:`dn.read.arrowscan.arrow_path`: a primary key of one
``int64``, ``string`` or ``bytes`` column), one shard's feed view is read as Arrow tables and
classified with Arrow and numpy kernels; the result equals :func:`dn.read.cdc.arrow_feed` of
:func:`dn.read.cdc.feed` (rows, order, types, change types, pre-images):

1. the sources of the feed view (range objects, then the tail), filtered to
   from_ts <= ts <= snapshot (:class:`dn.read.arrowscan.Sources`): every row version and every
   delete of the window;
2. all of them sorted by (pk, ts): the first change of each key is decided from the state at
   ``from_ts - 1`` (the before view, read with :func:`dn.read.arrowscan.scan_table`, the keys
   found with ``index_in``), each later one from the change before it (a key existed before a
   change when the change before it was an upsert);
3. each change's row: an upsert's own version; a delete's pre-image (the row it removed: the
   before-state's or the window's previous version), or the key alone if it had none; with
   ``before_images`` an ``update_preimage`` row (the pre-image) before each
   ``update_postimage``;
4. the rows taken in (ts, pk) order from the window's versions, the before-state's rows and
   the deletes' keys laid side by side, with ``_commit_ts`` and ``_change_type``.

:func:`merge_shards` merges shards' feeds (keys are disjoint across shards) in (ts, pk) order.
Pure functions over a reader's immutable objects; any thread.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dn.read import cdc
from dn.read.arrow import arrow_schema
from dn.read.arrowscan import Sources, arrow_path, load, scan_table
from dn.read.cdc import DELETE, INSERT, PREIMAGE, UPDATE
from dn.read.reader import Reader
from dn.read.view import ReadView, materialize
from dn.schema import TableDef

#: ``_change_type`` values by code (the codes :func:`feed_table` computes).
KINDS = pa.array([INSERT, UPDATE, DELETE, PREIMAGE], pa.string())
_INSERT, _UPDATE, _DELETE, _PREIMAGE = range(4)


def feed_schema(table: TableDef, columns: Sequence[str] | None = None) -> pa.Schema:
    """The schema of a feed: the row's columns (projected), ``_commit_ts``, ``_change_type``."""
    return pa.schema(
        [
            *arrow_schema(table, columns),
            pa.field("_commit_ts", pa.int64(), False),
            pa.field("_change_type", pa.string(), False),
        ]
    )


def changes_table(
    reader: Reader,
    view: ReadView,
    before: ReadView | None,
    columns: Sequence[str] | None = None,
    before_images: bool = False,
) -> pa.Table:
    """``changes_arrow`` of one shard: :func:`feed_table` for a table on the Arrow path, else
    the changes classified through Python values (:mod:`dn.read.cdc`)."""
    if arrow_path(view.table):
        return feed_table(reader, view, before, columns, before_images)
    changes, pre = cdc.classify(
        materialize(reader, view, columns=columns), cdc.rows_before(reader, before)
    )
    return cdc.arrow_feed(view.table, changes, pre, columns, before_images)


def feed_table(
    reader: Reader,
    view: ReadView,
    before: ReadView | None,
    columns: Sequence[str] | None = None,
    before_images: bool = False,
) -> pa.Table:
    """One shard's changes with from_ts <= ts <= snapshot (``view``, a feed view), classified
    from ``before`` (the snapshot view at ``from_ts - 1``; None: no state before), as an Arrow
    table in (ts, pk) order (see the module docstring)."""
    t = view.table
    assert view.from_ts is not None
    schema = feed_schema(t, columns)
    src = load(reader, view, Sources(t, view.snapshot, from_ts=view.from_ts))
    if not src.rows and not src.dels:
        return schema.empty_table()
    rows = _concat([tb for tb, _ in src.rows], src.names, [*src.types, pa.int64()])
    dels = _concat(src.dels, ["k", "ts"], [src.ktype, pa.int64()])
    nrows, ndels = rows.num_rows, dels.num_rows
    keys = pa.chunked_array(
        rows.column(src.kpos).chunks + dels.column(0).chunks, type=src.ktype
    ).combine_chunks()
    ts = np.concatenate([_np(rows.column(len(src.types))), _np(dels.column(1))]).astype(
        np.int64, copy=False
    )
    deleted = np.concatenate([np.zeros(nrows, bool), np.ones(ndels, bool)])
    # (pk, ts) order: each key's changes together, oldest first
    order = (
        pc.sort_indices(
            pa.table([keys, pa.array(ts)], ["k", "ts"]),
            sort_keys=[("k", "ascending"), ("ts", "ascending")],
        )
        .to_numpy()
        .astype(np.int64)
    )
    k_sorted = keys.take(pa.array(order))
    ts_s, del_s = ts[order], deleted[order]
    n = len(order)
    first = np.ones(n, bool)
    if n > 1:
        first[1:] = _ne_neighbours(k_sorted)
    # the state at from_ts - 1 of each key's first change: its row there, or -1
    old = _before_rows(reader, before, k_sorted.filter(pa.array(first)))
    old_of = np.full(n, -1, np.int64)
    old_of[first] = old[1]
    # where each change's row comes from: a window version (< nrows), a before-state row
    # (nrows + i), a delete's key alone (nrows + nold + j); -1: none
    nold = old[0].num_rows
    own = np.where(del_s, -1, order)
    pre = np.full(n, -1, np.int64)
    pre[first] = np.where(old_of[first] >= 0, nrows + old_of[first], -1)
    later = ~first
    prev_own = np.empty(n, np.int64)
    prev_own[1:] = own[:-1]
    pre[later] = prev_own[later]  # the version before it in the window (-1 after a delete)
    kind = np.where(del_s, _DELETE, np.where(pre >= 0, _UPDATE, _INSERT))
    row = np.where(del_s, pre, own)
    keyonly = del_s & (pre < 0)
    row[keyonly] = nrows + nold + (order[keyonly] - nrows)
    # (ts, pk) order; with before images a pre-image row just before each post-image
    by_ts = np.lexsort((np.arange(n), ts_s))
    row, kind, ts_out, pre = row[by_ts], kind[by_ts], ts_s[by_ts], pre[by_ts]
    if before_images:
        upd = kind == _UPDATE
        reps = np.where(upd, 2, 1)
        at = np.repeat(np.arange(len(row)), reps)
        is_pre = np.zeros(len(at), bool)
        is_pre[np.cumsum(reps)[upd] - 2] = True
        row = np.where(is_pre, pre[at], row[at])
        kind = np.where(is_pre, _PREIMAGE, kind[at])
        ts_out = ts_out[at]
    side = _side_by_side(t, schema, src, rows, old[0], dels)
    out = side.take(pa.array(row))
    arrays = [
        *out.columns,
        pa.array(ts_out, pa.int64()),
        pc.take(KINDS, pa.array(kind.astype(np.int32))),
    ]
    return pa.Table.from_arrays(arrays, schema=schema)


def merge_shards(parts: list[pa.Table], schema: pa.Schema, keys: list[str]) -> pa.Table:
    """Shards' feeds (no key in two of them; ``keys``: the primary key's columns) as one table
    in (ts, pk) order; a stable sort keeps each pre-image just before its post-image."""
    parts = [p for p in parts if p.num_rows]
    if not parts:
        return schema.empty_table()
    if len(parts) == 1:
        return parts[0]
    whole = pa.concat_tables(parts)
    by = [("_commit_ts", "ascending"), *((k, "ascending") for k in keys)]
    order = pc.sort_indices(whole, sort_keys=by)
    return whole.take(order)


def _concat(tables: list[pa.Table], names: list[str], types: list) -> pa.Table:
    if not tables:
        return pa.schema(list(zip(names, types, strict=True))).empty_table()
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables)


def _np(col: pa.ChunkedArray) -> np.ndarray:
    if col.num_chunks == 0:
        return np.empty(0, np.int64)
    return col.combine_chunks().to_numpy() if col.num_chunks > 1 else col.chunk(0).to_numpy()


def _ne_neighbours(keys: pa.Array) -> np.ndarray:
    """For each key but the first, whether it differs from the one before."""
    if pa.types.is_integer(keys.type):
        k = keys.to_numpy()
        return k[1:] != k[:-1]
    n = len(keys)
    return pc.not_equal(keys.slice(1), keys.slice(0, n - 1)).to_numpy(zero_copy_only=False)


def _before_rows(reader: Reader, before: ReadView | None, keys: pa.Array) -> tuple:
    """The state at ``from_ts - 1`` of ``keys``: (its rows, whole and unprojected, in key
    order; for each key the index of its row there, or -1)."""
    if before is None:
        return pa.table({}), np.full(len(keys), -1, np.int64)
    span = pc.min_max(keys)  # only the keys' span of the state
    state = scan_table(reader, before, span["min"].as_py(), _after(span["max"].as_py()))
    if not state.num_rows:
        return state, np.full(len(keys), -1, np.int64)
    kname = before.table.names[before.table.pk_pos[0]]
    at = pc.index_in(keys, value_set=state.column(kname).combine_chunks())
    return state, at.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)


def _side_by_side(
    t: TableDef, schema: pa.Schema, src: Sources, rows: pa.Table, old: pa.Table, dels: pa.Table
) -> pa.Table:
    """The window's versions, the before-state's rows and the deletes' keys (other columns
    null), one after the other, in the feed's row columns."""
    index = {n: i for i, n in enumerate(t.names)}
    kname = t.names[src.kpos]
    cols = []
    for f in schema:
        if f.name in ("_commit_ts", "_change_type"):
            continue
        i = index[f.name]
        chunks = list(rows.column(i).chunks)
        if old.num_rows:
            chunks += old.column(f.name).cast(f.type).chunks
        if f.name == kname:
            chunks += dels.column(0).chunks
        elif dels.num_rows:
            chunks.append(pa.nulls(dels.num_rows, f.type))
        cols.append(pa.chunked_array(chunks, type=f.type))
    names = [f.name for f in schema][: len(cols)]
    return pa.Table.from_arrays(cols, names=names)


def _after(key: object) -> object:
    """The smallest key above ``key`` (an exclusive end that keeps ``key``; None: no end)."""
    if isinstance(key, int):
        return None if key >= (1 << 63) - 1 else key + 1
    return key + ("\x00" if isinstance(key, str) else b"\x00")  # type: ignore[operator]
