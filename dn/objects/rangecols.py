"""A range object's table as Arrow IPC: the ``table`` of range-object format version 4.

Grammar (inside the range object's msgpack body, :mod:`dn.objects.rangeobj`)::

    table := {"rows": bin, "dels": bin}
    rows  := Arrow IPC stream: one record batch, columns c0 .. c<n-1> (the table's columns in
             schema order) then ts (int64), one row per row version, sorted by (pk, ts)
    dels  := empty (no deletes) | Arrow IPC stream: one record batch, columns k (a one-column
             primary key) or k0 .. k<m-1> (a composite one) then ts (int64), one row per
             delete, sorted by (pk, ts)

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

:class:`ArrowTable` is one table of a decoded object: its schema checked when the object is
decoded, its batches decompressed on first use (:meth:`ArrowTable.rows`), its Python form (the
version-3 ``table`` dict, for runs) made only when asked for. Any thread; a race makes the same
value twice.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from dn.errors import Corruption

_OPTIONS = pa.ipc.IpcWriteOptions(
    compression=pa.Codec("zstd", compression_level=1), use_threads=False
)
#: The Arrow types a stored column may have.
STORED_TYPES = (pa.int64(), pa.float64(), pa.string(), pa.binary(), pa.bool_(), pa.null())
TS = "ts"


class Unencodable(Exception):
    """A column whose values have no single stored Arrow type (not normal form)."""


def encode_table(t: dict) -> dict:
    """A version-3 ``table`` dict (``ts``, ``cols``, ``del_pks``, ``del_ts``) as the
    version-4 ``table`` above."""
    cols = t["cols"]
    rows = _ipc(
        [_array(c) for c in cols] + [_stamps(t["ts"])],
        [f"c{i}" for i in range(len(cols))] + [TS],
    )
    dels = b""
    if t["del_ts"]:
        pks = t["del_pks"]
        if isinstance(pks[0], list | tuple):
            width = len(pks[0])
            if any(len(k) != width for k in pks):
                raise Unencodable("composite keys of different widths")
            arrays = [_array([k[i] for k in pks]) for i in range(width)]
            names = [f"k{i}" for i in range(width)]
        else:
            arrays, names = [_array(pks)], ["k"]
        dels = _ipc(arrays + [_stamps(t["del_ts"])], names + [TS])
    return {"rows": rows, "dels": dels}


def _array(values: list) -> pa.Array:
    """``values`` (one Python type and None) as an Arrow array, built from numpy buffers
    rather than ``pyarrow.array``: that one imports pandas on first use and leaves the
    allocator holding several times the array's bytes (measured: 44 MiB resident for a 9 MiB
    string column), which a writer under memory pressure cannot afford."""
    n = len(values)
    kinds = set(map(type, values))
    nulls = type(None) in kinds
    kinds.discard(type(None))
    if not kinds:
        return pa.nulls(n)
    if len(kinds) > 1:
        raise Unencodable(f"values of types {sorted(k.__name__ for k in kinds)}")
    (kind,) = kinds
    validity, null_count = None, 0
    if nulls:
        present = np.fromiter((v is not None for v in values), dtype=bool, count=n)
        null_count = n - int(present.sum())
        validity = pa.py_buffer(np.packbits(present, bitorder="little"))
        values = [_FILL[kind] if v is None else v for v in values]
    try:
        if kind is int or kind is float:
            typ = pa.int64() if kind is int else pa.float64()
            data = np.array(values, dtype=np.int64 if kind is int else np.float64)
            return pa.Array.from_buffers(typ, n, [validity, pa.py_buffer(data)], null_count)
        if kind is bool:
            bits = np.packbits(np.array(values, dtype=bool), bitorder="little")
            return pa.Array.from_buffers(pa.bool_(), n, [validity, pa.py_buffer(bits)], null_count)
        if kind is str or kind is bytes:
            return _binary(values, kind is str, validity, null_count)
    except (OverflowError, TypeError, ValueError, UnicodeError) as exc:
        raise Unencodable(str(exc)) from exc
    raise Unencodable(f"values of type {kind.__name__}")


_FILL: dict[type, Any] = {int: 0, float: 0.0, bool: False, str: "", bytes: b""}


def _binary(values: list, text: bool, validity: pa.Buffer | None, null_count: int) -> pa.Array:
    """A string or binary array: offsets from the values' lengths, the data joined once (an
    ASCII column is joined as text and its lengths are its byte lengths)."""
    joined = "".join(values) if text else b"".join(values)
    if text and joined.isascii():
        data = joined.encode("ascii")
    else:
        parts = [v.encode() for v in values] if text else values
        data = b"".join(parts) if text else joined
        values = parts
    if len(data) >= 2**31:
        raise Unencodable("a column of 2 GiB or more")
    offsets = np.zeros(len(values) + 1, dtype=np.int32)
    np.cumsum(np.fromiter(map(len, values), dtype=np.int64, count=len(values)), out=offsets[1:])
    typ = pa.string() if text else pa.binary()
    buffers = [validity, pa.py_buffer(offsets), pa.py_buffer(data)]
    return pa.Array.from_buffers(typ, len(values), buffers, null_count)


def _stamps(ts: list[int]) -> pa.Array:
    return pa.Array.from_buffers(pa.int64(), len(ts), [None, pa.py_buffer(np.array(ts, np.int64))])


def _ipc(arrays: list[pa.Array], names: list[str]) -> bytes:
    batch = pa.record_batch(arrays, names=names)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, batch.schema, options=_OPTIONS) as w:
        w.write_batch(batch)
    return sink.getvalue().to_pybytes()


class ArrowTable:
    """One table of a version-4 range object (see the module docstring)."""

    __slots__ = ("_rows", "_dels", "_key", "_rows_t", "_dels_t", "_dict", "composite")

    def __init__(self, t: Any, key: str) -> None:
        """Check the grammar of ``t`` (a decoded ``table``) and the streams' schemas;
        ValueError or TypeError when they do not follow it."""
        if not isinstance(t, dict) or set(t) != {"rows", "dels"}:
            raise ValueError("a table is not {rows, dels}")
        self._rows, self._dels, self._key = t["rows"], t["dels"], key
        if not isinstance(self._rows, bytes) or not isinstance(self._dels, bytes):
            raise TypeError("a table's rows or dels are not bytes")
        names = _schema(self._rows).names
        if names[-1:] != [TS] or names[:-1] != [f"c{i}" for i in range(len(names) - 1)]:
            raise ValueError(f"rows with columns {names}")
        self.composite = False
        if self._dels:
            names = _schema(self._dels).names
            width = len(names) - 1
            self.composite = names[:1] != ["k"]
            want = [f"k{i}" for i in range(width)] if self.composite else ["k"]
            if names[-1:] != [TS] or names[:-1] != want or width < 1:
                raise ValueError(f"deletes with columns {names}")
        self._rows_t: pa.Table | None = None
        self._dels_t: pa.Table | None = None
        self._dict: dict | None = None

    def rows(self) -> pa.Table:
        """The row versions: c0 .. c<n-1>, ts; sorted by (pk, ts). Decompressed once."""
        if self._rows_t is None:
            self._rows_t = self._read(self._rows)
        return self._rows_t

    def dels(self) -> pa.Table | None:
        """The deletes (k or k0 .., ts; sorted by (pk, ts)), or None when there are none."""
        if not self._dels:
            return None
        if self._dels_t is None:
            self._dels_t = self._read(self._dels)
        return self._dels_t

    def to_dict(self) -> dict:
        """The version-3 ``table`` dict of the same rows (made once)."""
        if self._dict is None:
            rows = self.rows()
            ts = rows.column(TS).to_pylist()
            cols = [c.to_pylist() for c in rows.columns[:-1]]
            dels = self.dels()
            del_pks: list = []
            del_ts: list = []
            if dels is not None:
                del_ts = dels.column(TS).to_pylist()
                keys = [c.to_pylist() for c in dels.columns[:-1]]
                del_pks = [list(k) for k in zip(*keys)] if self.composite else keys[0]
            self._dict = {"ts": ts, "cols": cols, "del_pks": del_pks, "del_ts": del_ts}
        return self._dict

    def _read(self, data: bytes) -> pa.Table:
        try:
            table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
            table.validate(full=False)
            if any(f.type not in STORED_TYPES for f in table.schema):
                raise ValueError(f"a column of a type not stored: {table.schema}")
            if table.schema.field(TS).type != pa.int64() or table.column(TS).null_count:
                raise ValueError("timestamps that are not int64 values")
        except Exception as exc:  # Arrow raises several unrelated types
            raise Corruption(
                f"object {self._key} holds a table that does not decode: {exc}", key=self._key
            ) from exc
        return table


def _schema(data: bytes) -> pa.Schema:
    try:
        return pa.ipc.open_stream(pa.py_buffer(data)).schema
    except pa.ArrowException as exc:
        raise ValueError(f"not an Arrow IPC stream: {exc}") from exc
