"""Python values as Arrow arrays, built from numpy buffers (the range objects' encoders,
:mod:`dn.objects.rangecols`): one stored Arrow type per column, or :class:`Unencodable`."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa


class Unencodable(Exception):
    """A column whose values have no single stored Arrow type (not normal form)."""


#: Values converted at a time. Each conversion is one call that holds the GIL throughout (a
#: join, a numpy array of Python objects), so a large column is converted in pieces, and
#: between them the process's other threads run: a shard's read calls while it writes a
#: buffer out (measured, 500,000 values of 100 bytes: whole, the longest hold 56-87 ms; in
#: pieces of 65,536, 12 ms, and the conversion no slower). ``pyarrow.concat_arrays`` joins
#: the pieces without holding it.
PIECE = 65_536


def to_array(values: list) -> pa.Array:
    """``values`` (one Python type and None) as an Arrow array, built from numpy buffers
    rather than ``pyarrow.array``: that one imports pandas on first use and leaves the
    allocator holding several times the array's bytes (measured: 44 MiB resident for a 9 MiB
    string column), which a writer under memory pressure cannot afford. In pieces of
    :data:`PIECE` values."""
    n = len(values)
    kinds: set[type] = set()
    for i in range(0, n, PIECE):
        kinds.update(map(type, values[i : i + PIECE]))
    nulls = type(None) in kinds
    kinds.discard(type(None))
    if not kinds:
        return pa.nulls(n)
    if len(kinds) > 1:
        raise Unencodable(f"values of types {sorted(k.__name__ for k in kinds)}")
    (kind,) = kinds
    if n <= PIECE:
        return _piece(values, kind, nulls)
    pieces = [values[i : i + PIECE] for i in range(0, n, PIECE)]
    arrays = [_piece(p, kind, nulls and None in p) for p in pieces]
    try:
        return pa.concat_arrays(arrays)
    except pa.ArrowInvalid as exc:  # offsets past 2 GiB
        raise Unencodable(f"a column of 2 GiB or more: {exc}") from exc


def _piece(values: list, kind: type, nulls: bool) -> pa.Array:
    """:func:`to_array` of values of one ``kind`` (and None when ``nulls``)."""
    n = len(values)
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


def int64s(values: list[int]) -> np.ndarray:
    """Python ints as an int64 numpy array, in pieces of :data:`PIECE` (see there)."""
    if len(values) <= PIECE:
        return np.array(values, np.int64)
    pieces = [np.array(values[i : i + PIECE], np.int64) for i in range(0, len(values), PIECE)]
    return np.concatenate(pieces)


def stamps(ts: list[int]) -> pa.Array:
    return pa.Array.from_buffers(pa.int64(), len(ts), [None, pa.py_buffer(int64s(ts))])
