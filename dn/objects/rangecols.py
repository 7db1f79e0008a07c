"""A range object's table as Arrow IPC: the tables of range-object format versions 4 and 5.

A table is two Arrow IPC streams (:mod:`dn.objects.rangeobj` places them in the object)::

    rows  := Arrow IPC stream: record batches of columns c0 .. c<n-1> (the table's columns in
             schema order) then ts (int64), one row per row version, sorted by (pk, ts)
    dels  := none (no deletes) | Arrow IPC stream: record batches of columns k (a one-column
             primary key) or k0 .. k<m-1> (a composite one) then ts (int64), one row per
             delete, sorted by (pk, ts)

Version 5 writes each stream in *parts*: record batches of at most :data:`CHUNK_ROWS` rows and
about :data:`CHUNK_BYTES` of values, cut only between two keys, so that all the versions (or
deletes) of one key are in one part; a part is longer than the bound only when one key has more
versions than it. :func:`encode_table` returns each stream with where its parts lie
(:class:`Stream`), so that the object can index them and a streaming scan read one part at a
time (:mod:`dn.objects.rangeparts`): a key never continues into the next part. Version 4 wrote
one record batch per stream (the same grammar with one part, read by the same code).

Both streams are written with ``IpcWriteOptions(compression=zstd level 1)`` (each buffer a zstd
frame) and no metadata. A column's Arrow type is the one its values take: ``int64``,
``double``, ``string``, ``binary``, ``bool``, or ``null`` when it holds no value but nulls (a
reader casts to the table's type, :data:`dn.columnar.ARROW_TYPES`); a value of any other
type (which normal form never stores) makes :func:`encode_table` raise :class:`Unencodable`,
and the writer then writes the object in format version 3. ``rows`` has no ``c`` columns when
the table has no row versions in a compacted object (version 3's empty ``cols``).

Deterministic: the same values give the same Arrow arrays, and Arrow's IPC writer lays out
the same arrays in the same bytes (no timestamps, no padding garbage: padding is zeros; zstd at
a fixed level is deterministic), so the same commands give the same object — checked by
``tests/test_rangeobj_v4.py`` and the golden fixture ``tests/golden/range.bin``.

:class:`ArrowTable` is one table of a decoded object (version 4 or 5): its schema checked when
the object is decoded, its batches decompressed on first use (:meth:`ArrowTable.rows`) or part
by part (:meth:`ArrowTable.row_parts`), its Python form (the version-3 ``table`` dict, for runs)
made only when asked for. Any thread; a race makes the same value twice.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import pyarrow as pa

from dn.errors import Corruption
from dn.objects import codec
from dn.objects.pyarrays import Unencodable, int64s, stamps, to_array

__all__ = ["Unencodable"]  # raised by the encoders here, defined with the array builders

_OPTIONS = pa.ipc.IpcWriteOptions(
    compression=pa.Codec("zstd", compression_level=1), use_threads=False
)
#: A stream's record batches hold at most this many rows (unless one key has more versions) ...
CHUNK_ROWS = 65_536
#: ... and about this many bytes of values (their Arrow data, uncompressed).
CHUNK_BYTES = 4 << 20
#: Reading part by part decodes on the reading thread: Arrow's pool threads would allocate
#: from their own heaps, which the scan's thread frees into (measured: a few MiB more resident).
READ_ONE_THREAD = pa.ipc.IpcReadOptions(use_threads=False)


def scan_pool() -> pa.MemoryPool:
    """The Arrow memory pool a streaming scan decodes its parts and cuts its batches into:
    jemalloc's where Arrow has it, else the default. A streaming scan makes and frees a part
    and a batch every few milliseconds; in the default pool (mimalloc), among the process's
    other Arrow allocations, that left the resident set at 2-3 times the live bytes (2k: 13.3
    MiB for ~3.4 MiB live); in a pool of their own, 5 MiB (measured, 2M rows)."""
    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:  # an Arrow built without jemalloc (some platforms' wheels)
        return pa.default_memory_pool()


#: The Arrow types a stored column may have.
STORED_TYPES = (pa.int64(), pa.float64(), pa.string(), pa.binary(), pa.bool_(), pa.null())
TS = "ts"


class Stream(NamedTuple):
    """An encoded IPC stream and where its parts lie: its schema message is its first
    ``schema_len`` bytes, then each part (one record batch message) ``[length, crc32, rows,
    first key]`` in order (the first key None when the stream was not cut between keys), then
    the 8-byte end-of-stream marker."""

    data: bytes | pa.Buffer  # an encoder's stream is not copied out of Arrow's buffer
    schema_len: int
    parts: list[list[int]]


def encode_table(t: dict, pk_pos: tuple[int, ...] | None = None) -> dict[str, Stream | None]:
    """A version-3 ``table`` dict (``ts``, ``cols``, ``del_pks``, ``del_ts``) as its two
    streams, ``{"rows": Stream, "dels": Stream or None}``, the rows in parts cut between the
    keys at ``pk_pos`` (None: one part)."""
    cols = t["cols"]
    arrays = [to_array(c) for c in cols] + [stamps(t["ts"])]
    cuts = None
    if pk_pos is not None and cols:
        keys = cols[pk_pos[0]] if len(pk_pos) == 1 else list(zip(*(cols[p] for p in pk_pos)))
        cuts = part_ends(arrays, keys)
    rows = ipc_stream(
        arrays, [f"c{i}" for i in range(len(cols))] + [TS], cuts, keys if cuts else None
    )
    return {"rows": rows, "dels": encode_dels(t["del_pks"], t["del_ts"])}


def encode_dels(pks: list, del_ts: list[int]) -> Stream | None:
    """A table's deletes (sorted by (key, ts)) as its ``dels`` stream; None without any."""
    dels = None
    if del_ts:
        if isinstance(pks[0], list | tuple):
            width = len(pks[0])
            if any(len(k) != width for k in pks):
                raise Unencodable("composite keys of different widths")
            arrays = [to_array([k[i] for k in pks]) for i in range(width)]
            names = [f"k{i}" for i in range(width)]
            pks = [tuple(k) for k in pks]
        else:
            arrays, names = [to_array(pks)], ["k"]
        arrays.append(stamps(del_ts))
        dels = ipc_stream(arrays, names + [TS], part_ends(arrays, pks), pks)
    return dels


def encode_rows(
    cols: list[list], ts: list[int], pk_pos: tuple[int, ...]
) -> tuple[Stream, list[Any]]:
    """A buffer's row versions — ``cols`` and ``ts`` in the order appended (ts ascending) —
    as :func:`encode_table`'s ``rows`` stream of them sorted by (key, ts), the same bytes, and
    the first and last key (none without rows). Each column becomes Arrow once, unsorted, and
    is put in order by Arrow's ``take``; a single int64 key is ordered by numpy's stable sort,
    any other by Python's (both stable, so a key's versions keep their ts order)."""
    n = len(ts)
    arrays = [to_array(c) for c in cols]
    key = arrays[pk_pos[0]] if cols else None
    if len(pk_pos) == 1 and key is not None and key.type == pa.int64() and not key.null_count:
        raw = np.frombuffer(key.buffers()[1], np.int64, count=n, offset=8 * key.offset)
        order = np.argsort(raw, kind="stable")
        keys = raw[order].tolist()
    else:
        pks = cols[pk_pos[0]] if len(pk_pos) == 1 else list(zip(*(cols[p] for p in pk_pos)))
        order = np.array(sorted(range(n), key=pks.__getitem__), dtype=np.int64)
        keys = [pks[i] for i in order.tolist()]
    index = pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(order)])
    in_order = int64s(ts)[order]
    arrays = [a.take(index) for a in arrays]
    arrays.append(pa.Array.from_buffers(pa.int64(), n, [None, pa.py_buffer(in_order)]))
    cuts = part_ends(arrays, keys) if cols else None
    names = [f"c{i}" for i in range(len(cols))] + [TS]
    return ipc_stream(arrays, names, cuts, keys if cuts else None), keys[:1] + keys[-1:]


def part_ends(arrays: list[pa.Array], keys: list) -> list[int]:
    """Where the parts of a stream of ``arrays`` (sorted by ``keys``) end: after at most
    :data:`CHUNK_ROWS` rows and about :data:`CHUNK_BYTES` of values, moved on past the rest of
    a key's rows; the last is the row count."""
    n = len(keys)
    sizes = np.zeros(n, dtype=np.int64)
    for a in arrays:
        if pa.types.is_string(a.type) or pa.types.is_binary(a.type):
            offsets = np.frombuffer(a.buffers()[1], np.int32, count=n + 1, offset=4 * a.offset)
            sizes += np.diff(offsets) + 4
        elif not pa.types.is_null(a.type):
            sizes += 1 if pa.types.is_boolean(a.type) else 8
    ends = np.cumsum(sizes)
    cuts: list[int] = []
    i = 0
    while i < n:
        base = int(ends[i - 1]) if i else 0
        j = min(n, i + CHUNK_ROWS, int(np.searchsorted(ends, base + CHUNK_BYTES, "right")))
        j = max(j, i + 1)
        while j < n and keys[j] == keys[j - 1]:
            j += 1
        cuts.append(j)
        i = j
    return cuts


def ipc_stream(
    arrays: list[pa.Array], names: list[str], cuts: list[int] | None = None, keys: Any = None
) -> Stream:
    """An IPC stream of ``arrays``: one record batch, or one per part ending at ``cuts``, each
    part with the first of its ``keys`` (None without them)."""
    batch = pa.record_batch(arrays, names=names)
    sink = pa.BufferOutputStream()
    pieces = [(0, batch.num_rows)] if not cuts else list(zip([0, *cuts[:-1]], cuts))
    ends = []
    with pa.ipc.new_stream(sink, batch.schema, options=_OPTIONS) as w:
        for lo, hi in pieces:
            w.write_batch(batch.slice(lo, hi - lo))
            ends.append(sink.tell())
    data = sink.getvalue()  # not copied: the object's one copy is its frame's
    schema_len = len(batch.schema.serialize())
    parts, at = [], schema_len
    for (lo, hi), end in zip(pieces, ends):
        first = None if keys is None or hi == lo else _first(keys[lo])
        parts.append([end - at, zlib.crc32(memoryview(data)[at:end]), hi - lo, first])
        at = end
    return Stream(data, schema_len, parts)


#: A part's first key is named in the meta only up to this many packed bytes (a longer one is
#: None: the meta stays small, and a reader reads every part of that stream).
FIRST_KEY_MAX_BYTES = 256


def _first(key: Any) -> Any:
    """A part's first key as the meta names it: a composite key as a list; None when long."""
    key = list(key) if isinstance(key, tuple) else key
    return key if len(codec.pack(key)) <= FIRST_KEY_MAX_BYTES else None


class ArrowTable:
    """One table of a version-4 range object (see the module docstring)."""

    __slots__ = ("_rows", "_dels", "_key", "_rows_t", "_dels_t", "_dict", "composite", "memo")

    def __init__(self, rows: Any, dels: Any, key: str) -> None:
        """A table of streams ``rows`` and ``dels`` (bytes or Arrow buffers; ``dels`` empty
        or None: no deletes); ValueError when their schemas do not follow the grammar."""
        self._rows, self._key = pa.py_buffer(rows), key
        self._dels = pa.py_buffer(dels) if dels else None
        check_schema(_schema(self._rows), True)
        self.composite = False
        if self._dels is not None:
            self.composite = check_schema(_schema(self._dels), False)
        self._rows_t: pa.Table | None = None
        self._dels_t: pa.Table | None = None
        self._dict: dict | None = None
        self.memo: dict = {}  # what readers derive once per decoded table (its rows' slots)

    def rows(self) -> pa.Table:
        """The row versions: c0 .. c<n-1>, ts; sorted by (pk, ts). Decompressed once."""
        if self._rows_t is None:
            self._rows_t = self._read(self._rows)
        return self._rows_t

    @classmethod
    def from_v4(cls, t: Any, key: str) -> ArrowTable:
        """A version-4 ``table``, ``{"rows": bin, "dels": bin}`` (``dels`` empty: none)."""
        if not isinstance(t, dict) or set(t) != {"rows", "dels"}:
            raise ValueError("a table is not {rows, dels}")
        if not isinstance(t["rows"], bytes) or not isinstance(t["dels"], bytes):
            raise TypeError("a table's rows or dels are not bytes")
        return cls(t["rows"], t["dels"], key)

    def dels(self) -> pa.Table | None:
        """The deletes (k or k0 .., ts; sorted by (pk, ts)), or None when there are none."""
        if self._dels is None:
            return None
        if self._dels_t is None:
            self._dels_t = self._read(self._dels)
        return self._dels_t

    def read_once(self, rows: bool) -> pa.Table | None:
        """:meth:`rows` (``rows``) or :meth:`dels`, not kept when not decoded yet: for a
        reader that keeps what it derives instead (a filtered view, which would otherwise
        hold the object decoded twice)."""
        if rows:
            return self._rows_t if self._rows_t is not None else self._read(self._rows)
        if self._dels is None:
            return None
        return self._dels_t if self._dels_t is not None else self._read(self._dels)

    def row_parts(self, start: Any = None, end: Any = None) -> Iterator[pa.Table]:
        """The row versions part by part (one record batch each, decompressed as it is
        reached), without keeping them: for a reader that streams the object. ``start`` and
        ``end`` (the keys a reader wants) are hints a parted table uses to skip parts; every
        part is given here."""
        return self._parts(self._rows)

    def del_parts(self, start: Any = None, end: Any = None) -> Iterator[pa.Table]:
        """The deletes part by part (none when there are none), as :meth:`row_parts`."""
        return self._parts(self._dels) if self._dels is not None else iter(())

    def _parts(self, data: pa.Buffer) -> Iterator[pa.Table]:
        try:
            reader = pa.ipc.open_stream(data, options=READ_ONE_THREAD, memory_pool=scan_pool())
        except Exception as exc:  # Arrow raises several unrelated types
            raise self._corrupt(exc) from exc
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except Exception as exc:
                raise self._corrupt(exc) from exc
            part = checked(pa.Table.from_batches([batch]), self._key)
            del batch  # not held while the next part is read
            yield part
            del part

    def to_dict(self) -> dict:
        """The version-3 ``table`` dict of the same rows (made once)."""
        if self._dict is None:
            self._dict = table_dict(self.rows(), self.dels(), self.composite)
        return self._dict

    def _read(self, data: pa.Buffer) -> pa.Table:
        try:
            table = pa.ipc.open_stream(data).read_all()
        except Exception as exc:  # Arrow raises several unrelated types
            raise self._corrupt(exc) from exc
        return checked(table, self._key)

    def _corrupt(self, exc: Exception) -> Corruption:
        return corrupt(self._key, exc)


def table_dict(rows: pa.Table, dels: pa.Table | None, composite: bool) -> dict:
    """Stored row versions and deletes as version 3's ``table`` dict (Python values)."""
    ts = rows.column(TS).to_pylist()
    cols = [c.to_pylist() for c in rows.columns[:-1]]
    del_pks: list = []
    del_ts: list = []
    if dels is not None:
        del_ts = dels.column(TS).to_pylist()
        keys = [c.to_pylist() for c in dels.columns[:-1]]
        del_pks = [list(k) for k in zip(*keys)] if composite else keys[0]
    return {"ts": ts, "cols": cols, "del_pks": del_pks, "del_ts": del_ts}


def check_schema(schema: pa.Schema, rows: bool) -> bool:
    """Check the column names of a ``rows`` stream (``rows``) or a ``dels`` one against the
    grammar; ValueError if they do not follow it. Returns whether deletes have a composite key."""
    names = schema.names
    if rows:
        if names[-1:] != [TS] or names[:-1] != [f"c{i}" for i in range(len(names) - 1)]:
            raise ValueError(f"rows with columns {names}")
        return False
    width = len(names) - 1
    composite = names[:1] != ["k"]
    want = [f"k{i}" for i in range(width)] if composite else ["k"]
    if names[-1:] != [TS] or names[:-1] != want or width < 1:
        raise ValueError(f"deletes with columns {names}")
    return composite


def checked(table: pa.Table, key: str) -> pa.Table:
    """``table`` (read from object ``key``) if its columns are of stored types and its
    timestamps int64 values; Corruption otherwise."""
    try:
        table.validate(full=False)
        if any(f.type not in STORED_TYPES for f in table.schema):
            raise ValueError(f"a column of a type not stored: {table.schema}")
        if table.schema.field(TS).type != pa.int64() or table.column(TS).null_count:
            raise ValueError("timestamps that are not int64 values")
    except Exception as exc:
        raise corrupt(key, exc) from exc
    return table


def corrupt(key: str, exc: Exception) -> Corruption:
    return Corruption(f"object {key} holds a table that does not decode: {exc}", key=key)


def _schema(data: pa.Buffer) -> pa.Schema:
    try:
        return pa.ipc.open_stream(data).schema
    except pa.ArrowException as exc:
        raise ValueError(f"not an Arrow IPC stream: {exc}") from exc
