"""The layout of a range object of format version 5, read whole or one part at a time.

Stored body (inside the framing of :mod:`dn.objects.codec`; integers big-endian)::

    body    := meta_len:u64 meta_crc:u32 meta data
    meta    := msgpack {"shard": int, "from": int, "to": int, "commits": int,
                        "commands": [...], "tokens": bin,          as in version 3
                        "tables": {table_id: {"rows": stream, "dels": stream | nil}, ...}}
    stream  := [offset, schema_len, schema_crc, [[part_len, part_crc, part_rows, first], ...]]
    data    := every stream's bytes, one after another in the order of ``tables`` (rows, then
               dels), the first at offset 0: nothing before, between or after them

``meta_crc`` is ``zlib.crc32(meta)``. A stream's bytes are an Arrow IPC stream
(:mod:`dn.objects.rangecols`): its schema message (``schema_len`` bytes, ``zlib.crc32``
``schema_crc``), then its parts in order, each one record batch message of ``part_len`` > 0
bytes (``zlib.crc32`` ``part_crc``) holding ``part_rows`` rows, then the 8-byte end-of-stream
marker; ``offset`` is where it starts in ``data``. ``first`` is the part's first key (a
composite one as an array), or nil for a stream written as one part without keys, or a key over
:data:`dn.objects.rangecols.FIRST_KEY_MAX_BYTES` packed (a reader then reads every part); a
reader skips the parts before the one holding a key it starts at, and stops before a part that
starts at or after the key it ends at. Early version-5 objects have parts of three items (no
``first``) and, the earliest, streams of three (no ``schema_crc``): still read. Table ids
ascend.

Why this layout: the streams are outside the msgpack, so a whole object decodes with no copy of
them (:func:`unpack`: the tables are views of the fetched bytes), and the meta says where each
part lies, so a reader can fetch the meta and then one part at a time with ranged reads
(:func:`open_table`), each part checked by its own checksum (a ranged read cannot check the
frame's, which covers the whole body): the header's, the meta's, then each schema's and each
part's checksum as it is read, and each part's columns against the grammar. The frame's
checksum still covers everything when the object is read whole; an object that fits in the
first read (:data:`HEAD`) is read whole from it, and a store that cannot read part of an object
(:func:`dn.store.base.reads_ranges`) has its objects read whole. A streaming scan then holds
one part of an object, whatever its size (compaction makes objects of up to
``compaction_max_bytes``).

Pure functions but for :func:`open_table`'s reads; any thread.
"""

from __future__ import annotations

import struct
import zlib
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from dn.errors import Corruption, ObjectNotFound
from dn.objects import codec
from dn.objects.rangecols import (
    READ_ONE_THREAD,
    ArrowTable,
    Stream,
    check_schema,
    checked,
    corrupt,
    scan_pool,
)
from dn.store.base import ObjectStore, read_range, reads_ranges

VERSION = 5
_LEN = struct.Struct(">QI")
_EOS = 8
_END = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # an IPC stream's end-of-stream marker

#: The first read of a partial open: the header, the meta's length and (usually) the meta.
HEAD = 64 * 1024


def pack_parts(meta: dict[str, Any], tables: dict[int, dict[str, Stream | None]]) -> list:
    """The body above, as the parts it is joined from: ``meta`` (every key but ``tables``, in
    its order) and the tables' streams, not copied (``codec.frame_parts`` copies them once)."""
    entries: dict[int, dict[str, list | None]] = {}
    data: list[Any] = []
    at = 0
    for tid in sorted(tables):
        entry: dict[str, list | None] = {}
        for name in ("rows", "dels"):
            s = tables[tid][name]
            if s is not None:
                schema_crc = zlib.crc32(memoryview(s.data)[: s.schema_len])
                entry[name] = [at, s.schema_len, schema_crc, s.parts]
            else:
                entry[name] = None
            if s is not None:
                data.append(s.data)
                at += memoryview(s.data).nbytes
        entries[tid] = entry
    raw = codec.pack({**meta, "tables": entries})
    return [_LEN.pack(len(raw), zlib.crc32(raw)), raw, *data]


def unpack(body: memoryview, key: str) -> dict[str, Any]:
    """The meta of a whole body, its ``tables`` as :class:`ArrowTable` over views of ``body``
    (no copy). Raises Corruption naming ``key``; ValueError, TypeError or KeyError for a
    meta that does not follow the grammar."""
    meta, start = _meta(body, key)
    data = body[start:]
    tables = {}
    for tid, entry in _entries(meta, len(data)):
        rows, dels = (_slice(data, entry[name]) for name in ("rows", "dels"))
        tables[tid] = ArrowTable(rows, dels, key)
    meta["tables"] = tables
    return meta


def open_table(
    store: ObjectStore, key: str, table_id: int
) -> PartedTable | ArrowTable | None | bool:
    """Table ``table_id`` of the object at ``key``, to read one part at a time
    (``row_parts``, ``del_parts``): its header and meta are read now (one ranged read, two for a
    meta that does not fit in :data:`HEAD`), each part when reached — or, for an object that
    fits in that first read, the table of the object decoded from it. None: the object holds no
    such table; False: the object is not of version 5, or the store cannot read part of an
    object (read it whole)."""
    if not reads_ranges(store):
        return False
    head = _fetch(store, key, 0, HEAD)
    version, body_len, _ = codec.check_header(codec.KIND_RANGE, head, key, (1, 2, 3, 4, 5))
    if version != VERSION:
        return False
    if len(head) >= codec.HEADER_SIZE + body_len:  # the whole object: checked by the frame
        tables = unpack(codec.unframe(codec.KIND_RANGE, head, key, (VERSION,)), key)["tables"]
        return tables.get(table_id)
    need = codec.HEADER_SIZE + _LEN.size
    if len(head) >= need:
        need += _LEN.unpack_from(head, codec.HEADER_SIZE)[0]
    if need > codec.HEADER_SIZE + body_len:
        raise Corruption(f"object {key} has a malformed body: its meta runs past it", key=key)
    if len(head) < need:
        head += _fetch(store, key, len(head), need - len(head))
        if len(head) < need:
            raise Corruption(f"object {key} is truncated (meta)", key=key, truncated=True)
    meta, start = _meta(memoryview(head)[codec.HEADER_SIZE : need], key)
    try:
        entries = dict(_entries(meta, body_len - start))
    except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
        raise Corruption(f"object {key} has a malformed body: {exc}", key=key) from exc
    entry = entries.get(table_id)
    if entry is None:
        return None
    return PartedTable(store, key, codec.HEADER_SIZE + start, entry)


class PartedTable:
    """One table of a version-5 object in the store, read part by part (see
    :func:`open_table`)."""

    __slots__ = ("_store", "_key", "_base", "_entry")

    def __init__(self, store: ObjectStore, key: str, base: int, entry: dict) -> None:
        self._store, self._key, self._base, self._entry = store, key, base, entry

    def row_parts(self, start: Any = None, end: Any = None) -> Iterator[pa.Table]:
        """The row versions part by part, from the part that holds ``start`` (every part when
        None) to the last that starts below ``end`` (see the module docstring)."""
        return self._parts(self._entry["rows"], True, start, end)

    def del_parts(self, start: Any = None, end: Any = None) -> Iterator[pa.Table]:
        stream = self._entry["dels"]
        return self._parts(stream, False, start, end) if stream is not None else iter(())

    def _parts(self, stream: list, rows: bool, start: Any, end: Any) -> Iterator[pa.Table]:
        offset, schema_len, schema_crc, parts = stream
        lo, hi = _span(parts, start, end)
        if lo >= hi:
            return
        at = self._base + offset
        skip = sum(p[0] for p in parts[:lo])
        if lo < hi and not skip:  # the schema with the first part read, in one request
            data = self._read(at, schema_len + parts[0][0])
        else:
            data = self._read(at, schema_len)
        head, first = data[:schema_len], data[schema_len:]
        del data
        if schema_crc is not None and zlib.crc32(head) != schema_crc:
            raise Corruption(f"object {self._key} fails a schema's checksum", key=self._key)
        try:
            check_schema(pa.ipc.read_schema(pa.py_buffer(head)), rows)
        except Exception as exc:  # Arrow raises several unrelated types
            raise corrupt(self._key, exc) from exc
        at += schema_len + skip
        pool = scan_pool()
        for i, (length, crc, nrows, *_) in enumerate(parts[lo:hi], lo):
            data, first = (first if i == 0 else self._read(at, length)), b""
            at += length
            if zlib.crc32(data) != crc:
                raise Corruption(f"object {self._key} fails a part's checksum", key=self._key)
            try:  # the part as a stream of its own, decoded on this thread
                one = _Joined(head, data, _END)
                reader = pa.ipc.open_stream(one, options=READ_ONE_THREAD, memory_pool=pool)
                batch = reader.read_next_batch()
            except Exception as exc:  # Arrow raises several unrelated types
                raise corrupt(self._key, exc) from exc
            if batch.num_rows != nrows:
                msg = f"a part of {batch.num_rows} rows, not {nrows}"
                raise corrupt(self._key, ValueError(msg))
            part = checked(pa.Table.from_batches([batch]), self._key)
            del data, one, reader, batch  # its stored bytes not held while it is read
            yield part
            del part

    def _read(self, at: int, length: int) -> bytes:
        data = _fetch(self._store, self._key, at, length)
        if len(data) != length:
            raise Corruption(
                f"object {self._key} is truncated (a part)", key=self._key, truncated=True
            )
        return data


class _Joined:
    """Byte strings read as one file, with no copy of them: Arrow reads a message at a time,
    and a read within one string is a view of it (a part's stored bytes are not copied to put
    its stream's schema before them)."""

    closed = False

    def __init__(self, *pieces: bytes) -> None:
        self._pieces = [memoryview(p) for p in pieces]
        self._i = self._at = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def read(self, n: int = -1) -> bytes | memoryview:
        got: list[memoryview] = []
        while n and self._i < len(self._pieces):
            piece = self._pieces[self._i]
            take = piece[self._at :] if n < 0 else piece[self._at : self._at + n]
            got.append(take)
            self._at += len(take)
            n = n if n < 0 else n - len(take)
            if self._at == len(piece):
                self._i, self._at = self._i + 1, 0
        return got[0] if len(got) == 1 else b"".join(got)

    def close(self) -> None:
        self.closed = True


def _fetch(store: ObjectStore, key: str, at: int, length: int) -> bytes:
    """A ranged read of a range object a scan planned; an object gone is named as such."""
    try:
        return read_range(store, key, at, length)
    except ObjectNotFound:
        raise ObjectNotFound(
            f"object {key}, which the scan's plan names, is not in the store: an object is "
            "collected once compaction has replaced it and gc_grace_s has passed, so a scan "
            "that reaches it later than that must read again, at a newer snapshot",
            key=key,
        ) from None


def _span(parts: list, start: Any, end: Any) -> tuple[int, int]:
    """The parts ``[lo, hi)`` that may hold keys in [start, end): from the last part starting
    at or below ``start``, up to the first starting at or after ``end``; all of them when a
    part has no first key (or the keys do not compare with the bounds)."""
    firsts = [p[3] if len(p) > 3 else None for p in parts]
    if not parts or any(f is None for f in firsts):
        return 0, len(parts)
    firsts = [tuple(f) if isinstance(f, list) else f for f in firsts]
    try:
        lo = 0 if start is None else max(0, bisect_right(firsts, start) - 1)
        hi = len(parts) if end is None else bisect_left(firsts, end)
    except TypeError:
        return 0, len(parts)
    return lo, max(lo, hi)


def _meta(body: memoryview, key: str) -> tuple[dict[str, Any], int]:
    """The meta at the start of ``body`` (checked by its checksum), and where data starts."""
    if len(body) < _LEN.size:
        raise Corruption(f"object {key} has no meta", key=key)
    n, crc = _LEN.unpack_from(body)
    raw = body[_LEN.size : _LEN.size + n]
    if len(raw) != n or zlib.crc32(raw) != crc:
        raise Corruption(f"object {key} fails its meta checksum", key=key)
    try:
        meta = codec.unpack(raw)
    except Exception as exc:  # msgpack raises several unrelated types
        raise Corruption(f"object {key} does not decode: {exc}", key=key) from exc
    if not isinstance(meta, dict):
        raise Corruption(f"object {key} has a malformed body: its meta is not a map", key=key)
    return meta, _LEN.size + n


def _entries(meta: dict, data_len: int) -> Iterator[tuple[int, dict]]:
    """The tables' entries, checked to lay the streams one after another over exactly
    ``data_len`` bytes; ValueError or TypeError otherwise."""
    tables = meta["tables"]
    if not isinstance(tables, dict):
        raise ValueError("tables that are not a map")
    if list(tables) != sorted(tables) or any(type(t) is not int for t in tables):
        raise ValueError("table ids that are not ascending ints")
    at = 0
    out = []
    for tid, entry in tables.items():
        if not isinstance(entry, dict) or set(entry) != {"rows", "dels"} or entry["rows"] is None:
            raise ValueError("a table is not {rows, dels}")
        for name in ("rows", "dels"):
            stream = entry[name]
            if stream is None:
                continue
            if not isinstance(stream, list) or len(stream) not in (3, 4):
                raise ValueError(f"a stream {stream!r}")
            if len(stream) == 3:  # an early version-5 stream: no schema checksum
                stream = entry[name] = [stream[0], stream[1], None, stream[2]]
            offset, schema_len, schema_crc, parts = stream
            if any(type(x) is not int for x in (offset, schema_len)) or not (
                schema_crc is None or type(schema_crc) is int
            ):
                raise ValueError(f"a stream {stream!r}")
            if offset != at or schema_len <= 0 or not isinstance(parts, list):
                raise ValueError("streams that do not follow one another")
            for part in parts:  # an early version-5 part has no first key: 3 items
                if not isinstance(part, list) or len(part) not in (3, 4):
                    raise ValueError(f"a part {part!r}")
                if any(type(x) is not int or x < 0 for x in part[:3]) or part[0] == 0:
                    raise ValueError(f"a part {part!r}")
                if len(part) > 3 and not isinstance(
                    part[3], int | float | str | bytes | list | None
                ):
                    raise ValueError(f"a part's first key {part[3]!r}")
            at += schema_len + sum(p[0] for p in parts) + _EOS
        out.append((tid, entry))
    if at != data_len:
        raise ValueError(f"streams of {at} bytes in data of {data_len}")
    return iter(out)


def _slice(data: memoryview, stream: list | None) -> memoryview | None:
    if stream is None:
        return None
    offset, schema_len, *_, parts = stream
    return data[offset : offset + schema_len + sum(p[0] for p in parts) + _EOS]
