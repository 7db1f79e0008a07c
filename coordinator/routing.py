"""Routing: which shard owns a primary key, and splitting a write batch per shard.

The hash is frozen (its name, ``crc32-msgpack-v1``, is stored in the cluster record): the
shard of a key is ``zlib.crc32(msgpack(key)) % shards``, where ``key`` is the primary key as
the engine normalizes it (:meth:`dn.schema.TableDef.check_key`: an int for an int64 column, a
float for a float64 column even if the caller gave an int, a tuple for a composite key). Never
Python's ``hash()``, which is salted per process.

A batch is validated whole before anything is sent (the same checks, and so the same typed
errors, as :meth:`dn.Engine.write`), so bad input never commits part of a batch on some shards.
Then it is split per shard: each part commits atomically on its shard; the parts commit
independently (see :mod:`coordinator.client` for what that means to a caller).

Pure functions; no Ray, no I/O. Any thread.
"""

from __future__ import annotations

import zlib
from bisect import bisect_left
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgpack

from dn.codec import pack
from dn.errors import InvalidArgument
from dn.schema import TableDef

HASH_NAME = "crc32-msgpack-v1"


def shard_of(key: Any, shards: int) -> int:
    """The shard owning a normalized primary key."""
    return zlib.crc32(pack(key)) % shards


def pk_signature(table: TableDef) -> tuple[tuple[str, str], ...]:
    """The primary-key columns with their types: what routing depends on. A shard refuses a
    write routed with a different signature (the table was dropped and created again)."""
    types = dict(table.columns)
    return tuple((c, types[c]) for c in table.primary_key)


#: The largest chunk of packed rows sent as one argument of a shard call. Ray passes an
#: argument up to 100 KiB inline with the call; a larger one goes through the object store,
#: which costs about four times as much per call on one machine. A part is sent as several
#: chunks under this size instead (the shard joins them without unpacking them again).
CHUNK_BYTES = 90 * 1024


@dataclass(frozen=True, slots=True)
class ShardPart:
    """The share of one batch that goes to one shard: validated rows (tuples in column order)
    and normalized primary keys to delete."""

    rows: list[tuple]
    deletes: list

    def packed(self) -> tuple[list[bytes], bytes]:
        """The part as the shard takes it (:meth:`dn.Engine.write_packed`): the rows as
        msgpack arrays of at most about ``CHUNK_BYTES`` each, and the msgpack array of the
        deletes; packed once here and logged as they are by the shard."""
        return pack_chunks(self.rows), pack(self.deletes)


def pack_chunks(rows: list, limit: int = CHUNK_BYTES) -> list[bytes]:
    """``rows`` packed as msgpack arrays of consecutive rows, each at most ``limit`` bytes
    unless a single row is larger. The rows per chunk are estimated from a sample; a chunk
    that comes out too large (uneven rows) is split again."""
    n = len(rows)
    sample = pack(rows[:: max(1, n // 32)])
    per_row = len(sample) / max(1, len(rows[:: max(1, n // 32)]))
    nchunks = max(1, -int(-n * per_row // (limit * 0.85)))
    per = -(-n // nchunks)  # rows per chunk, the chunks of about equal size
    if per >= n:
        whole = pack(rows)
        if len(whole) <= limit or n <= 1:
            return [whole]
        per = max(1, n // 2)
    out: list[bytes] = []
    for i in range(0, n, per):
        chunk = rows[i:i + per]
        blob = pack(chunk)
        if len(blob) > limit and len(chunk) > 1:
            out.extend(pack_chunks(chunk, limit))
        else:
            out.append(blob)
    return out


def validate_batch(
    table: TableDef, upserts: Any, deletes: Any, max_value_bytes: int, max_batch_rows: int
) -> tuple[list[tuple], list, list]:
    """A whole batch checked like the engine checks it: (row tuples in column order,
    normalized delete keys, the primary keys of the rows then of the deletes)."""
    if isinstance(upserts, dict) or isinstance(upserts, str | bytes):
        raise InvalidArgument("upserts must be a list of row dicts")
    if not isinstance(upserts, list | tuple):
        upserts = list(upserts) if isinstance(upserts, Iterable) else upserts
    rows = table.normalize_rows(upserts, max_value_bytes)
    dels = table.normalize_deletes(deletes)
    keys = table.check_batch(rows, dels, max_batch_rows)
    return rows, dels, keys


def owners(keys: list, shards: int) -> list[int]:
    """The shard of each normalized key (:func:`shard_of`, for a whole list)."""
    if shards == 1:
        return [0] * len(keys)
    crc = zlib.crc32
    pk = msgpack.Packer(use_bin_type=True).pack  # same bytes as dn.codec.pack, reused
    return [crc(pk(k)) % shards for k in keys]


def split_batch(
    table: TableDef,
    upserts: Any,
    deletes: Any,
    shards: int,
    max_value_bytes: int,
    max_batch_rows: int,
) -> dict[int, ShardPart]:
    """Validate a whole batch like the engine does, then split it by shard.

    Upserts travel as validated row tuples and deletes as normalized keys; the client packs
    each part once (:meth:`ShardPart.packed`) and the shard checks the packed part again,
    column by column, before logging those very bytes.
    """
    rows, dels, keys = validate_batch(table, upserts, deletes, max_value_bytes, max_batch_rows)
    if shards == 1:
        return {0: ShardPart(list(rows), dels)}
    buckets: list[list[int]] = [[] for _ in range(shards)]
    add = [b.append for b in buckets]
    for i, o in enumerate(owners(keys, shards)):
        add[o](i)
    parts: dict[int, ShardPart] = {}
    nrows = len(rows)
    for s, idx in enumerate(buckets):
        if not idx:
            continue
        cut = bisect_left(idx, nrows)  # indexes below len(rows) are upserts, then deletes
        parts[s] = ShardPart(
            list(map(rows.__getitem__, idx[:cut])), list(map(keys.__getitem__, idx[cut:]))
        )
    return parts
