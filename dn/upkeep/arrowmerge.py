"""Compaction's merge of one table in Arrow (:mod:`dn.upkeep.compaction`): the same versions
kept by the same rule as :func:`dn.upkeep.compaction.merge_table`, with no Python object per
row.

The inputs are the table's :class:`dn.objects.rangecols.ArrowTable` in consecutive range
objects (format 4 or 5), oldest first. Their row versions and deletes are put in (pk, ts) order
by one Arrow sort over the keys and timestamps of both; a key's group begins where a key
column changes. A version is kept when it is inside the window (``ts >= horizon``) or is the
last of its key before it (the state at the horizon); a delete that is that last version goes
when ``oldest`` says nothing older remains for it to hide. The kept rows and deletes are taken
from the inputs' Arrow columns and written as the table's two streams, cut into parts as
:func:`dn.objects.rangecols.encode_table` cuts them (the keys read one at a time, only where a
part ends).

Memory: the inputs' decoded columns, the sort's key and timestamp columns, and the output's
columns and bytes: a few times the table's Arrow size, where the Python merge held a tuple
and a few objects per version (about ten times as much, and seconds of a core per million
rows). Pure functions; any thread.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from dn.objects.pyarrays import stamps
from dn.objects.rangecols import TS, ArrowTable, Stream, ipc_stream, part_ends
from dn.objects.rangeobj import TableStats


class NotArrow(Exception):
    """The inputs' columns do not line up as one Arrow table (the caller merges in Python)."""


class _Keys:
    """A sorted key column (or the columns of a composite key) read one key at a time."""

    __slots__ = ("cols",)

    def __init__(self, cols: list[pa.Array]) -> None:
        self.cols = cols

    def __len__(self) -> int:
        return len(self.cols[0])

    def __getitem__(self, i: int) -> Any:
        if len(self.cols) == 1:
            return self.cols[0][i].as_py()
        return tuple(c[i].as_py() for c in self.cols)


def merge_table(
    tables: list[ArrowTable], pk_pos: tuple[int, ...], horizon: int, oldest: bool
) -> tuple[dict[str, Stream | None], TableStats] | None:
    """The merged table's ``{"rows": Stream, "dels": Stream or None}`` and its stats (None:
    nothing kept); raises :class:`NotArrow` when the inputs' columns do not line up."""
    rows = _concat([t.rows() for t in tables])
    dels = _concat([d for t in tables if (d := t.dels()) is not None])
    nr = 0 if rows is None else rows.num_rows
    nd = 0 if dels is None else dels.num_rows
    if nr + nd == 0:
        return None
    width = len(pk_pos)
    parts: list[list[pa.Array]] = [[] for _ in range(width)]
    if nr:
        for i, p in enumerate(pk_pos):
            parts[i].append(_column(rows, f"c{p}"))
    if nd:
        names = ["k"] if width == 1 else [f"k{i}" for i in range(width)]
        for i, name in enumerate(names):
            parts[i].append(_column(dels, name))
    try:
        keys = [pa.concat_arrays(p) for p in parts]
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise NotArrow(f"the key columns of rows and deletes differ: {exc}") from exc
    ts = np.concatenate([_column(x, TS).to_numpy() for x, n in ((rows, nr), (dels, nd)) if n])
    order = _order(keys, ts)
    ts = ts[order]
    is_del = order >= nr  # rows first, then deletes, in the concatenation
    new = _starts([k.take(pa.array(order)) for k in keys])
    old = ts < horizon
    last_old = old & (np.append(new[1:], True) | ~np.append(old[1:], False))
    keep = ~old | last_old
    gone = last_old & is_del if oldest else np.zeros(len(order), dtype=bool)
    row_idx = order[keep & ~is_del]
    del_idx = order[keep & is_del & ~gone] - nr
    if not len(row_idx) and not len(del_idx):
        return None
    if len(row_idx):
        rows_out, row_ends = _stream(rows, row_idx, pk_pos)
    else:  # no row version: the stream has no c columns (version 3's empty cols)
        rows_out, row_ends = ipc_stream([stamps([])], [TS]), []
    dels_out, del_ends = _stream(dels, del_idx, tuple(range(width))) if len(del_idx) else (None, [])
    stats = TableStats.spanning(len(row_idx), len(del_idx), row_ends + del_ends)
    return {"rows": rows_out, "dels": dels_out}, stats


def _concat(tables: list[pa.Table]) -> pa.Table | None:
    """The tables with any row, as one (their chunks kept), or None."""
    some = [t for t in tables if t.num_rows]
    if not some:
        return None
    if any(t.schema.names != some[0].schema.names for t in some):
        raise NotArrow("the inputs' columns differ")
    try:
        return pa.concat_tables(some, promote_options="default")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
        raise NotArrow(f"the inputs' column types differ: {exc}") from exc


def _column(t: pa.Table, name: str) -> pa.Array:
    col = t.column(name)
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def _order(keys: list[pa.Array], ts: np.ndarray) -> np.ndarray:
    """The positions in (key, ts) order (stable: a key's versions keep their order)."""
    names = [f"k{i}" for i in range(len(keys))]
    t = pa.table([*keys, pa.array(ts, pa.int64())], names=[*names, TS])
    by = [(n, "ascending") for n in names] + [(TS, "ascending")]
    return pc.sort_indices(t, sort_keys=by).to_numpy()


def _starts(keys: list[pa.Array]) -> np.ndarray:
    """Whether each position of the sorted ``keys`` begins a key's group."""
    n = len(keys[0])
    new = np.ones(n, dtype=bool)
    if n > 1:
        differs = np.zeros(n - 1, dtype=bool)
        for k in keys:
            ne = pc.not_equal(k.slice(1), k.slice(0, n - 1))
            differs |= ne.to_numpy(zero_copy_only=False)
        new[1:] = differs
    return new


def _stream(t: pa.Table | None, idx: np.ndarray, key_pos: tuple[int, ...]) -> tuple[Stream, list]:
    """Rows ``idx`` of ``t`` (row versions, or deletes) as a stream cut into parts between
    the keys at ``key_pos``, and its first and last key."""
    assert t is not None
    taken = t.combine_chunks().take(pa.array(idx))  # a take across chunks is far slower
    arrays = [c.combine_chunks() for c in taken.columns]
    keys = _Keys([arrays[p] for p in key_pos])
    cuts = part_ends(arrays, keys)
    return ipc_stream(arrays, taken.schema.names, cuts, keys), [keys[0], keys[len(keys) - 1]]
